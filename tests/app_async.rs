//! Async handlers (feature `tokio`) over real sockets: futures awaiting
//! timers and channels while the worker goes on, errors, the per-socket cap,
//! futures dropped with their socket, middleware and namespaces, and the two
//! runtimes (the application's, and the one the app starts and stops).
#![cfg(feature = "tokio")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use app_client::{eventually, start, AppClient};
use common::WAIT;
use emitws::app::{App, Middleware, ReplyError};
use serde_json::{json, Value};

/// The tests count the threads of the runtimes they start: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This process's threads named like those of the runtime an app starts.
fn app_runtime_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").expect("Linux's /proc");
    let names = tasks.filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok());
    names.filter(|name| name.starts_with(emitws::app::ASYNC_THREAD_NAME)).count()
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or_default().to_string()
}

#[test]
fn handlers_await_timers_and_channels_while_the_worker_goes_on() {
    let _serial = serial();
    let mut app = App::new();
    app.on_async("/sleep", |req| async move {
        let millis: u64 = req.data()?;
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(json!({ "slept": millis, "event": req.event(), "thread": thread_name() }))
    });
    // Another task feeds the channel the handler awaits.
    app.on_async("/sum", |req| async move {
        let numbers: Vec<u64> = req.data()?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for n in numbers {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if tx.send(n).await.is_err() {
                    return;
                }
            }
        });
        let mut sum = 0;
        while let Some(n) = rx.recv().await {
            sum += n;
        }
        Ok(sum)
    });
    app.on("/ping", |req| req.reply(&"pong"));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    let sleeping = client.send_request("/sleep", json!(500));
    let ping = client.send_request("/ping", Value::Null);
    // The worker answered the sync request while the future slept.
    assert_eq!(client.next(), json!([2, ping, "pong"]));
    let slept = client.reply_to(sleeping).expect("the sleep's reply");
    assert_eq!((slept["slept"].clone(), slept["event"].clone()), (json!(500), json!("/sleep")));
    let thread = slept["thread"].as_str().unwrap_or_default();
    assert!(thread.starts_with("emitws-async-"), "ran on {thread:?}");
    assert_eq!(client.request("/sum", json!([1, 2, 3, 4, 5])), Ok(json!(15)));
    assert_eq!(client.request("/sum", json!([])), Ok(json!(0)));
    client.close();
    running.close();
}

#[test]
fn errors_become_error_replies_and_error_events() {
    let _serial = serial();
    let mut app = App::new();
    app.on_async("/fail", |req| async move {
        let how: String = req.data()?;
        match how.as_str() {
            "forbidden" => Err(ReplyError::new("forbidden", "not yours")),
            "io" => {
                std::fs::read("/nonexistent/emitws-async-test")?;
                Ok(how)
            }
            "panic" => panic!("an async handler panics on purpose"),
            _ => Ok(how),
        }
    });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    let error = |code: &str, message: &str| Err((code.to_string(), message.to_string()));
    assert_eq!(client.request("/fail", json!("forbidden")), error("forbidden", "not yours"));
    let (code, message) = client.request("/fail", json!(7)).unwrap_err();
    assert_eq!(code, "bad_request");
    assert!(message.starts_with("unexpected data: invalid type: integer `7`"), "{message}");
    let (code, message) = client.request("/fail", json!("io")).unwrap_err();
    assert_eq!(code, "internal");
    assert!(message.contains("No such file"), "{message}");
    assert_eq!(client.request("/fail", json!("panic")), error("internal", "the handler panicked"));
    // An event's error goes back as `@error`.
    client.emit("/fail", json!("forbidden"));
    assert_eq!(client.expect_error_event("forbidden"), "not yours");
    client.emit("/fail", json!("fine"));
    client.expect_silence(common::ms(100));
    assert_eq!(client.request("/fail", json!("fine")), Ok(json!("fine")), "the socket is still served");
    client.close();
    running.close();
}

#[test]
fn a_socket_over_its_cap_gets_rate_limited_until_its_handlers_end() {
    let _serial = serial();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut app = App::new();
    app.max_async_per_socket(2);
    let waiting = gate.clone();
    app.on_async("/wait", move |req| {
        let gate = waiting.clone();
        async move {
            gate.acquire().await?.forget();
            Ok(req.request_id())
        }
    });
    let running = start(app, 1);
    let (mut a, mut b) = (AppClient::connect(running.local_addr()), AppClient::connect(running.local_addr()));
    let first = a.send_request("/wait", Value::Null);
    let second = a.send_request("/wait", Value::Null);
    let refused = Err(("rate_limited".to_string(), "too many async handlers running".to_string()));
    assert_eq!(a.request("/wait", Value::Null), refused);
    a.emit("/wait", Value::Null);
    assert_eq!(a.expect_error_event("rate_limited"), "too many async handlers running");
    // The cap is per socket.
    let other = b.send_request("/wait", Value::Null);
    gate.add_permits(3);
    assert_eq!(a.reply_to(first), Ok(json!(first)));
    assert_eq!(a.reply_to(second), Ok(json!(second)));
    assert_eq!(b.reply_to(other), Ok(json!(other)));
    // Ended handlers no longer count.
    let (third, fourth) = (a.send_request("/wait", Value::Null), a.send_request("/wait", Value::Null));
    gate.add_permits(2);
    assert_eq!((a.reply_to(third), a.reply_to(fourth)), (Ok(json!(third)), Ok(json!(fourth))));
    a.close();
    b.close();
    running.close();
}

/// Sets its flag when dropped: the future that holds it was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_socket_that_closes_drops_its_futures_but_not_its_disconnect_handlers() {
    let _serial = serial();
    let flags = [Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))];
    let (started, running_futures) = mpsc::channel::<bool>();
    let mut app = App::new();
    let handler_flags = flags.clone();
    app.on_async("/forever", move |req| {
        let (flag, started) = (handler_flags[usize::from(req.is_request())].clone(), started.clone());
        async move {
            let _flag = DropFlag(flag);
            let _ = started.send(req.is_request());
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    // An async `@disconnect` handler's future outlives the socket: it runs to its end.
    let (said_goodbye, goodbyes) = mpsc::channel::<Value>();
    app.on_async("@disconnect", move |req| {
        let said_goodbye = said_goodbye.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = said_goodbye.send(req.data::<Value>()?);
            Ok(())
        }
    });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    client.send_request("/forever", Value::Null);
    client.emit("/forever", Value::Null);
    let mut kinds =
        [running_futures.recv_timeout(WAIT), running_futures.recv_timeout(WAIT)].map(|k| k.expect("started"));
    kinds.sort();
    assert_eq!(kinds, [false, true], "an event's future and a request's");
    std::thread::sleep(common::ms(50));
    assert!(flags.iter().all(|flag| !flag.load(Ordering::SeqCst)), "dropped while the socket is open");
    client.ws.close(1000);
    eventually("the socket's futures dropped", || flags.iter().all(|flag| flag.load(Ordering::SeqCst)));
    let goodbye = goodbyes.recv_timeout(WAIT).expect("the async @disconnect handler ran to its end");
    assert_eq!(goodbye["code"], 1000, "{goodbye}");
    running.close();
}

#[test]
fn middleware_namespaces_and_any_as_for_sync_handlers() {
    let _serial = serial();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let ran = Arc::new(AtomicUsize::new(0));
    let mut app = App::new();
    let seen = log.clone();
    app.middleware(move |req, next| {
        seen.lock().unwrap().push(format!("global {}", req.event()));
        match req.data::<String>().as_deref() {
            Ok("deny") => req.reply_err("forbidden", "denied by middleware"),
            _ => next.run(req),
        }
    });
    let seen = log.clone();
    let route = Middleware::new(move |req, next| {
        seen.lock().unwrap().push(format!("route {}", req.event()));
        next.run(req);
    });
    let (counted, seen) = (ran.clone(), log.clone());
    app.on_async_with("/guarded", [route], move |req| {
        counted.fetch_add(1, Ordering::SeqCst);
        seen.lock().unwrap().push(format!("handler {}", req.event()));
        async move { req.data::<String>().map_err(ReplyError::from) }
    });
    app.ns("/game").on_async("/move", |req| async move { Ok(format!("{} moved", req.data::<String>()?)) });
    app.on_async("@any", |req| async move { Ok(format!("nothing handles {}", req.event())) });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/guarded", json!("deny")), Err(("forbidden".into(), "denied by middleware".into())));
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the middleware stopped the chain before the handler");
    assert_eq!(client.request("/guarded", json!("let me in")), Ok(json!("let me in")));
    assert_eq!(client.request("/game/move", json!("e4")), Ok(json!("e4 moved")));
    assert_eq!(client.request("/nowhere", Value::Null), Ok(json!("nothing handles /nowhere")));
    let expected = [
        "global /guarded",
        "global /guarded",
        "route /guarded",
        "handler /guarded",
        "global /game/move",
        "global /nowhere",
    ];
    assert_eq!(*log.lock().unwrap(), expected);
    client.close();
    running.close();
}

#[test]
fn futures_run_on_the_runtime_given_or_on_one_the_app_starts_and_stops() {
    let _serial = serial();
    eventually("no runtime of an earlier test left", || app_runtime_threads() == 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("test-runtime")
        .enable_all()
        .build()
        .expect("a runtime");
    let mut app = App::new();
    app.tokio_runtime(runtime.handle().clone());
    app.on_async("/where", |_req| async move { Ok(thread_name()) });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/where", Value::Null), Ok(json!("test-runtime")));
    assert_eq!(app_runtime_threads(), 0, "the app started no runtime of its own");
    client.close();
    running.close();
    // The application's runtime is its own: still usable after the app is gone.
    assert_eq!(runtime.block_on(async { 41 + 1 }), 42);

    let mut app = App::new();
    app.async_threads(3);
    app.on_async("/where", |_req| async move { Ok(thread_name()) });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(app_runtime_threads(), 0, "started when the first async handler runs");
    let thread = client.request("/where", Value::Null).expect("a reply");
    assert!(thread.as_str().is_some_and(|name| name.starts_with("emitws-async-")), "ran on {thread}");
    // Each thread names itself as it starts.
    eventually("the app's runtime's 3 threads", || app_runtime_threads() == 3);
    client.close();
    running.close();
    eventually("the app's runtime stopped with the app", || app_runtime_threads() == 0);
}
