//! emitws-cat, the terminal client, driven the way a user drives it: lines on
//! stdin, output read from stdout, against servers started here.
#![cfg(feature = "app")]

use std::io::Write;
use std::process::{Command, Output, Stdio};

#[path = "../examples/support/echo_handler.rs"]
mod echo_handler;

use echo_handler::Echo;
use emitws::app::App;
use emitws::proto::CloseCode;
use emitws::runtime::Server;

fn cat(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_emitws-cat"))
        .args(["--wait", "0.5"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start emitws-cat");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("emitws-cat ends")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn raw_lines_binary_and_ping_round_trip() {
    let server = Server::new().workers(1).start("127.0.0.1:0", Echo).expect("start");
    let url = format!("ws://{}/", server.local_addr());
    let output = cat(&[&url], "hello\nwörld\n:binary 00ff10\n:ping abc\n");
    server.shutdown();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "< hello\n< wörld\n< binary 3 bytes: 00ff10\n< pong abc\n");
}

#[test]
fn events_requests_and_errors_in_events_mode() {
    let mut app = App::new();
    app.on("/echo", |req| {
        let data: serde_json::Value = req.data().unwrap_or_default();
        if req.is_request() {
            req.reply(&data);
        } else {
            let _ = req.emit("/echoed", &data);
        }
    });
    let running = app.listen("127.0.0.1:0").expect("listen");
    let url = format!("ws://{}/", running.local_addr());
    let output = cat(&["--events", &url], "?/echo {\"a\":1}\n/echo plain words\n?/missing\n");
    running.close();
    assert!(output.status.success(), "{output:?}");
    let printed = stdout(&output);
    let (ready, rest) = printed.split_once('\n').expect("lines");
    assert!(ready.starts_with(r#"< @ready {"socket":"0-"#) && ready.ends_with(r#","user":null}"#), "{printed}");
    assert_eq!(rest, "< #1 {\"a\":1}\n< /echoed \"plain words\"\n< #2 error no_handler: no handler for /missing\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("subprotocol emitws.v1"));
}

#[test]
fn close_command_and_server_close_codes_set_the_exit_status() {
    let server = Server::new().workers(1).start("127.0.0.1:0", Echo).expect("start");
    let url = format!("ws://{}/", server.local_addr());
    let output = cat(&[&url], ":close 4000 done\nnever sent\n");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "");
    server.shutdown();

    let mut app = App::new();
    app.on("/kick", |req| req.close(CloseCode(4001), "kicked"));
    let running = app.listen("127.0.0.1:0").expect("listen");
    let output = cat(&["-e", &format!("ws://{}/", running.local_addr())], "/kick\n");
    running.close();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stdout(&output).contains("closed by the server: 4001 kicked"), "{output:?}");
}

#[test]
fn bad_usage_and_unreachable_servers_are_reported() {
    let output = cat(&["--bogus"], "");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown option --bogus"));

    let output = cat(&["ws://127.0.0.1:1/"], "");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect to ws://127.0.0.1:1/"));

    let output = cat(&["--help"], "");
    assert!(output.status.success() && stdout(&output).contains("USAGE"));
}
