//! `emitws-load resume-storm` against an `emitws-cluster-node` on its own
//! (no Redis): a small storm, so that the mode and the node's history and
//! resume flags keep working (benches/resume-storm.sh runs the large one).
#![cfg(feature = "redis")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A node on a free port; killed on drop.
struct Node {
    child: Child,
    url: String,
}

impl Node {
    fn start(flags: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_emitws-cluster-node"))
            .args(["--addr", "127.0.0.1:0", "--workers", "1", "--rate", "0"])
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start emitws-cluster-node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("the node's first line");
        let addr = line.split(' ').nth(2).unwrap_or_else(|| panic!("not `listening on ADDR node N`: {line:?}"));
        Node { url: format!("ws://{addr}/"), child }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the storm; returns its exit status and JSON summary.
fn storm(node: &Node, args: &[&str]) -> (i32, Value) {
    let pid = node.child.id().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_emitws-load"))
        .args(["resume-storm", "--url", &node.url, "--json", "--server-pid", &pid, "--connect-timeout", "5"])
        .args(args)
        .output()
        .expect("run emitws-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("{e}: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    });
    (output.status.code().expect("exited"), summary)
}

#[test]
fn every_client_resumes_with_exactly_the_broadcasts_it_missed() {
    let node = Node::start(&["--history", "#storm-*", "--history-size", "100"]);
    let (status, summary) = storm(&node, &["-c", "50", "-t", "2", "--rooms", "5", "--before", "3", "--missed", "4"]);
    assert_eq!(status, 0, "{summary}");
    assert_eq!((&summary["sessions"], &summary["resumed"]), (&50.into(), &50.into()), "{summary}");
    assert_eq!((&summary["replayed"], &summary["expected_replayed"]), (&200.into(), &200.into()), "{summary}");
    let failures = ["not_resumed", "not_recovered", "wrong_replays", "before_missing", "errors"];
    assert!(failures.iter().all(|key| summary[key] == 0), "{summary}");
    assert!(summary["server_hwm_kib"].as_u64().is_some_and(|kib| kib > 0), "{summary}");

    // Rooms the clients received nothing from (no broadcasts before the cut)
    // are replayed from where each client joined them, on the same node.
    let (status, summary) = storm(&node, &["-c", "20", "--rooms", "2", "--before", "0", "--missed", "3"]);
    assert_eq!(status, 0, "{summary}");
    assert_eq!((&summary["resumed"], &summary["replayed"]), (&20.into(), &60.into()), "{summary}");
}

#[test]
fn a_storm_the_server_cannot_recover_fails() {
    // History shorter than what the clients miss: the rooms are not recovered.
    let node = Node::start(&["--history", "#storm-*", "--history-size", "2"]);
    let (status, summary) = storm(&node, &["-c", "10", "--rooms", "2", "--before", "1", "--missed", "3"]);
    assert_eq!(status, 1, "{summary}");
    assert_eq!((&summary["resumed"], &summary["not_recovered"]), (&0.into(), &10.into()), "{summary}");

    // No sessions kept: `@ready` has no token, and the run says so.
    let node = Node::start(&["--history", "#storm-*", "--resume-window", "0"]);
    let (status, summary) = storm(&node, &["-c", "10", "--rooms", "2"]);
    assert_eq!(status, 1, "{summary}");
    assert_eq!(summary["resumed"], 0, "{summary}");
    assert!(summary["errors"].as_u64().is_some_and(|errors| errors > 0), "{summary}");
}
