//! Server-to-client calls (callback and blocking forms, timeouts, client
//! errors, disconnects) and replies deferred to other threads.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use app_client::{start, AppClient};
use emitws::app::{App, CallError, EventLimits, ReplyHandle};
use emitws::runtime::ConnId;
use serde_json::{json, Value};

/// An app whose `@connection` tells each client its socket id, and whose
/// `/confirm` asks the client before replying.
fn rpc_app(limits: EventLimits) -> App {
    let mut app = App::new();
    app.limits(limits);
    app.on("@connection", |req| {
        let _ = req.emit("/id", &req.conn_id().0);
    });
    app.on("/confirm", |req| {
        let question: String = req.data().expect("a question");
        let reply = req.defer();
        let called = req.call("confirm", &question, Duration::from_secs(2), move |answer| match answer {
            Ok(answer) => reply.reply(&json!({ "confirmed": answer.data::<bool>().ok() })),
            Err(e) => reply.reply_err("failed", &e.to_string()),
        });
        called.expect("a string serializes");
    });
    app
}

/// Plays a client that answers the server's calls: `add` sums, `boom` fails,
/// `slow` never answers, anything else is not registered.
/// Plays the client: answers `add`, `boom` and unknown calls, leaves `slow`
/// unanswered, and reports the name of every call it sees on `seen`.
fn answer_calls(mut client: AppClient, until: mpsc::Receiver<()>, seen: mpsc::Sender<String>) -> AppClient {
    client.ws.stream.set_read_timeout(Some(common::ms(20))).expect("timeout");
    while until.try_recv().is_err() {
        let frame = match client.ws.try_recv() {
            Ok(common::Frame::Text(text)) => text,
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(common::RecvError::Timeout) => continue,
            Err(e) => panic!("connection failed: {e:?}"),
        };
        let call: Value = serde_json::from_str(&frame).expect("JSON");
        assert_eq!(call[0], 1, "only calls expected, got {call}");
        let id = &call[1];
        let _ = seen.send(call[2].as_str().unwrap_or_default().to_string());
        let answer = match call[2].as_str() {
            Some("add") => json!([2, id, call[3][0].as_i64().unwrap_or(0) + call[3][1].as_i64().unwrap_or(0)]),
            Some("boom") => json!([3, id, { "code": "execution_failed", "message": "it broke" }]),
            Some("slow") => continue,
            _ => json!([3, id, { "code": "not_registered", "message": "no such procedure" }]),
        };
        client.send_raw(&answer.to_string());
    }
    client.ws.stream.set_read_timeout(Some(common::WAIT)).expect("timeout");
    client
}

#[test]
fn a_handler_calls_its_client_and_replies_with_the_answer() {
    let running = start(rpc_app(EventLimits::default()), 1);
    let mut client = AppClient::connect(running.local_addr());
    client.expect_event("/id");
    let id = client.send_request("/confirm", json!("Delete?"));
    let call = client.next();
    assert_eq!((call[0].clone(), call[2].clone(), call[3].clone()), (json!(1), json!("confirm"), json!("Delete?")));
    client.send_raw(&json!([2, call[1], true]).to_string());
    assert_eq!(client.reply_to(id), Ok(json!({ "confirmed": true })));

    let id = client.send_request("/confirm", json!("Again?"));
    let call = client.next();
    client.send_raw(&json!([3, call[1], { "code": "execution_failed", "message": "no UI" }]).to_string());
    let (code, message) = client.reply_to(id).unwrap_err();
    assert_eq!(code, "failed");
    assert!(message.contains("no UI"), "{message}");
    client.close();
    running.close();
}

#[test]
fn calls_from_another_thread_resolve_or_fail_with_a_typed_error() {
    let running = start(rpc_app(EventLimits::default()), 1);
    let mut client = AppClient::connect(running.local_addr());
    let id = ConnId(client.expect_event("/id").as_u64().expect("id"));
    let (stop, until) = mpsc::channel();
    let (saw, seen) = mpsc::channel();
    let player = std::thread::spawn(move || answer_calls(client, until, saw));
    let socket = running.socket(id);
    // Waits until the player has read a call of this name (and skips others).
    let wait_for_call =
        |name: &str| while seen.recv_timeout(common::WAIT).expect("the player reports calls") != name {};
    let second = Duration::from_secs(1);
    let sum = socket.call("add", &[2, 3], second).expect("serializes").wait().expect("answered");
    assert_eq!(sum.data::<i64>().expect("a number"), 5);
    assert_eq!(
        socket.call("boom", &(), second).expect("ok").wait(),
        Err(CallError::ExecutionFailed("it broke".into()))
    );
    let missing = socket.call("missing", &(), second).expect("ok").wait();
    assert_eq!(missing, Err(CallError::NotRegistered("no such procedure".into())));
    let started = Instant::now();
    assert_eq!(socket.call("slow", &(), common::ms(100)).expect("ok").wait(), Err(CallError::Timeout));
    assert!(started.elapsed() >= common::ms(100));
    wait_for_call("slow");
    // The callback form, from this thread: it runs on the worker.
    let (done, result) = mpsc::channel();
    socket.call_then("add", &[40, 2], second, move |r| done.send(r).expect("test waits")).expect("ok");
    assert_eq!(result.recv_timeout(common::WAIT).expect("called back").expect("answer").raw(), "42");
    // A call waiting when the socket closes fails with Disconnected.
    let pending = socket.call("slow", &(), Duration::from_secs(30)).expect("ok");
    wait_for_call("slow"); // so that the player, not close(), reads it
    stop.send(()).expect("player runs");
    let client = player.join().expect("player");
    client.close();
    assert_eq!(pending.wait(), Err(CallError::Disconnected));
    assert_eq!(socket.call("add", &[1, 1], second).expect("ok").wait(), Err(CallError::Disconnected));
    running.close();
}

#[test]
fn calls_waiting_per_socket_are_capped() {
    let running = start(rpc_app(EventLimits::default().max_pending(1)), 1);
    let mut client = AppClient::connect(running.local_addr());
    let id = ConnId(client.expect_event("/id").as_u64().expect("id"));
    let socket = running.socket(id);
    let first = socket.call("slow", &(), common::ms(300)).expect("ok");
    let second = socket.call("slow", &(), common::ms(300)).expect("ok").wait();
    assert_eq!(second, Err(CallError::TooMany));
    assert_eq!(client.next()[2], "slow", "only the first call went out");
    assert_eq!(first.wait(), Err(CallError::Timeout));
    client.close();
    running.close();
}

#[test]
fn replies_deferred_to_a_thread_pool_arrive_later_without_blocking_the_loop() {
    let (jobs, queue) = mpsc::channel::<(ReplyHandle, u64)>();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    let pool: Vec<_> = (0..2)
        .map(|_| {
            let queue = queue.clone();
            std::thread::spawn(move || loop {
                let job = queue.lock().unwrap().recv();
                let Ok((reply, n)) = job else { return };
                std::thread::sleep(common::ms(50)); // a database call
                match n {
                    0 => drop(reply),
                    _ => reply.reply(&(n * 10)),
                }
            })
        })
        .collect();
    let mut app = App::new();
    app.limits(EventLimits::default().max_pending(2));
    let jobs = std::sync::Mutex::new(jobs);
    app.on("/slow", move |req| {
        let n: u64 = req.data().expect("a number");
        let reply = req.defer();
        jobs.lock().unwrap().send((reply, n)).expect("the pool runs");
    });
    app.on("/fast", |req| req.reply(&"fast"));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    let a = client.send_request("/slow", json!(1));
    let b = client.send_request("/slow", json!(2));
    // Over the pending cap, refused at once; the loop still answers other requests.
    assert_eq!(client.request("/slow", json!(3)).unwrap_err().0, "rate_limited");
    assert_eq!(client.request("/fast", Value::Null), Ok(json!("fast")));
    assert_eq!(client.reply_to(b), Ok(json!(20)));
    assert_eq!(client.reply_to(a), Ok(json!(10)));
    let (code, message) = client.request("/slow", json!(0)).unwrap_err();
    assert_eq!((code.as_str(), message.as_str()), ("internal", "the handler dropped its reply"));
    client.close();
    running.close();
    drop(queue);
    drop(pool);
}
