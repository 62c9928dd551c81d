//! Draining a server (`ServerHandle::drain`, `AppHandle::drain`): no more
//! accepts, every connection closed with 1012 and the redirect, the closes
//! spread over the drain's span; and, over Redis, every event client moving
//! to the node the redirect names without losing a request.

mod common;
#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use emitws::runtime::{AcceptMode, DrainError, Server, DRAIN_CLOSE_CODE, MAX_REDIRECT_LEN};

/// Connections drained at once.
const CONNECTIONS: usize = 12;
/// The drain's span: long enough that closes spread visibly, short for a test.
const SPAN: Duration = Duration::from_millis(900);
const REDIRECT: &str = "ws://127.0.0.1:9/next-node";

#[test]
fn a_drain_closes_every_connection_with_1012_and_the_redirect_spread_over_its_span() {
    let echo = Echo::default();
    let server = Server::new().workers(2).keepalive(None).start("127.0.0.1:0", echo.clone()).unwrap();
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..CONNECTIONS).map(|_| Client::connect(addr)).collect();
    for client in &mut clients {
        client.echo("before the drain");
    }

    let start = Instant::now();
    let drain = server.handle().drain(SPAN, Some(REDIRECT)).expect("the drain starts");
    assert_eq!(server.handle().drain(SPAN, None).unwrap_err(), DrainError::Stopping);

    // Each client reads its close on a thread of its own, so the close times are the arrival times.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                let reason = client.expect_close(DRAIN_CLOSE_CODE.0);
                let at = start.elapsed();
                client.send_close(DRAIN_CLOSE_CODE.0, "");
                client.expect_eof();
                (reason, at)
            })
        })
        .collect();

    // New connections are refused once the workers have taken the drain in.
    eventually_refused(addr);

    let mut times = Vec::new();
    for reader in readers {
        let (reason, at) = reader.join().expect("a client thread");
        assert_eq!(reason, REDIRECT);
        times.push(at);
    }
    assert!(drain.wait(WAIT), "{} connections left after the drain", drain.remaining());
    assert_eq!(drain.closes_sent(), CONNECTIONS);
    times.sort();
    let (first, last) = (times[0], times[CONNECTIONS - 1]);
    // Loosely: the closes did not all go out at once at the start.
    assert!(last - first >= SPAN / 4, "all {CONNECTIONS} closes within {:?} of a {SPAN:?} drain", last - first);
    assert!(times.iter().filter(|at| **at < SPAN / 10).count() < CONNECTIONS, "all closes in the first tenth");
    server.shutdown();
}

#[test]
fn a_drain_refuses_a_bad_redirect_and_changes_nothing() {
    let server = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    let handle = server.handle();
    let long = format!("ws://127.0.0.1/{}", "x".repeat(MAX_REDIRECT_LEN));
    assert_eq!(handle.drain(SPAN, Some(&long)).unwrap_err(), DrainError::RedirectTooLong(long.len()));
    assert!(matches!(handle.drain(SPAN, Some("http://127.0.0.1/")), Err(DrainError::BadRedirect(_))));
    // Still serving.
    Client::connect(server.local_addr()).echo("still accepting");
    // A drain with no redirect: an empty reason, at once.
    let mut client = Client::connect(server.local_addr());
    let drain = handle.drain(Duration::ZERO, None).expect("the drain starts");
    assert_eq!(client.expect_close(DRAIN_CLOSE_CODE.0), "");
    client.send_close(DRAIN_CLOSE_CODE.0, "");
    assert!(drain.wait(WAIT));
    server.shutdown();
}

#[test]
fn a_drain_in_acceptor_mode_stops_the_acceptor_too() {
    let server =
        quick_server().workers(2).accept_mode(AcceptMode::Acceptor).start("127.0.0.1:0", Echo::default()).unwrap();
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    let drain = server.handle().drain(ms(200), Some(REDIRECT)).expect("the drain starts");
    eventually_refused(addr);
    for client in &mut clients {
        assert_eq!(client.expect_close(DRAIN_CLOSE_CODE.0), REDIRECT);
        client.send_close(DRAIN_CLOSE_CODE.0, "");
    }
    assert!(drain.wait(WAIT));
    server.shutdown();
}

/// Waits until connecting to `addr` is refused, failing after [`WAIT`].
fn eventually_refused(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect_timeout(&addr, WAIT) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {
                assert!(Instant::now() < deadline, "{addr} still accepts connections after the drain began");
                std::thread::sleep(ms(5));
            }
        }
    }
}

/// The event layer's side: a client that jumps, and clients that follow a
/// drain's redirect, keeping their listeners and procedures.
#[cfg(feature = "app")]
mod app {
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::common::{ms, quick_server, WAIT};
    use emitws::app::{App, Running};
    use emitws::client::app::{AppClient, AppError, AppOptions, Status};
    use serde_json::{json, Value};

    /// A node that answers `/where` with its name.
    pub fn node(name: &'static str, configure: impl FnOnce(&mut App)) -> Running {
        let mut app = App::new();
        configure(&mut app);
        app.on("/where", move |req| req.reply(&name));
        app.listen_with(quick_server().workers(2), "127.0.0.1:0").expect("start the node")
    }

    pub fn url(node: &Running) -> String {
        format!("ws://{}/", node.local_addr())
    }

    /// The node's name, as the client's current server answers `/where`.
    pub fn whereabouts(client: &AppClient) -> Value {
        client.request("/where", Value::Null, WAIT).expect("/where is answered")
    }

    /// Collects a client's `@jump` events.
    pub fn jumps(client: &AppClient) -> Arc<Mutex<Vec<Value>>> {
        let jumps = Arc::new(Mutex::new(Vec::new()));
        let seen = jumps.clone();
        client.on("@jump", move |_, data| seen.lock().unwrap().push(data.clone()));
        jumps
    }

    #[test]
    fn a_client_jumps_to_another_server_keeping_its_listeners_and_procedures() {
        let (a, b) = (node("a", |_| {}), node("b", |_| {}));
        let client = AppClient::new(&url(&a), AppOptions::default()).unwrap();
        client.register("/client/name", |_| Ok(json!("mine")));
        let jumps = jumps(&client);
        client.open().unwrap();
        assert_eq!(whereabouts(&client), "a");

        assert!(matches!(client.jump("http://example.com/"), Err(AppError::BadUrl(_))));
        client.jump(&url(&b)).unwrap();
        // Sent at once, whatever the state: queued until READY on b.
        assert_eq!(whereabouts(&client), "b");
        assert_eq!(client.status(), Status::Ready);
        assert_eq!(*jumps.lock().unwrap(), [json!({"url": url(&b), "by": "jump"})]);
        assert_eq!(a.socket_count(), 0);
        // The procedure registered before the jump answers b's call.
        let socket: emitws::app::SocketId = client.welcome().unwrap()["socket"].as_str().unwrap().parse().unwrap();
        let reply = b.socket(socket.conn).call("/client/name", &(), WAIT).unwrap().wait().unwrap();
        assert_eq!(reply.raw(), r#""mine""#);
        client.close();
        assert_eq!(client.jump(&url(&a)), Err(AppError::Closed));
    }

    #[test]
    fn a_client_waiting_to_reconnect_jumps_at_once() {
        let (a, b) = (node("a", |_| {}), node("b", |_| {}));
        // A backoff far longer than the test waits.
        let options =
            AppOptions::default().reconnect_delay(Duration::from_secs(60)).max_reconnect_delay(Duration::from_secs(60));
        let client = AppClient::connect(&url(&a), options).unwrap();
        let jumps = jumps(&client);
        let (tell, told) = mpsc::channel();
        client.on("@reconnecting", move |_, data| drop(tell.send(data.clone())));
        a.close();
        told.recv_timeout(WAIT).expect("reconnecting after the server closed");
        client.jump(&url(&b)).unwrap();
        assert_eq!(whereabouts(&client), "b");
        assert_eq!(jumps.lock().unwrap().len(), 1);
        assert_eq!(b.socket_count(), 1, "one connection, not one per attempt");
        client.close();
    }

    #[test]
    fn clients_follow_a_drains_redirect_and_reconnect_without_one() {
        let (a, b) = (node("a", |_| {}), node("b", |_| {}));
        let options = AppOptions::default().reconnect_delay(ms(50));
        let follower = AppClient::connect(&url(&a), options.clone()).unwrap();
        let jumps = jumps(&follower);
        let drain = a.drain(Duration::ZERO, Some(&url(&b))).unwrap();
        assert!(drain.wait(WAIT));
        assert_eq!(whereabouts(&follower), "b");
        assert_eq!(*jumps.lock().unwrap(), [json!({"url": url(&b), "by": "drain"})]);

        // Without a redirect: the usual reconnect, to the client's own URL (b's, since the jump).
        let (tell, told) = mpsc::channel();
        follower.on("@reconnecting", move |_, data| drop(tell.send(data.clone())));
        let start = Instant::now();
        b.drain(Duration::ZERO, None).unwrap();
        let reconnecting = told.recv_timeout(WAIT).expect("a reconnect after a drain without a redirect");
        assert_eq!(reconnecting["attempt"], 1);
        assert!(start.elapsed() < WAIT);
        assert_eq!(jumps.lock().unwrap().len(), 1, "no jump without a redirect");
        follower.close();
    }
}

/// A drain across two nodes sharing Redis: every client moves to the node the
/// redirect names, and a request sent the moment it is told to move is answered there.
#[cfg(feature = "redis")]
mod cluster {
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::app::{node, url, whereabouts};
    use super::common::{ms, WAIT};
    use emitws::app::SocketId;
    use emitws::client::app::{AppClient, AppOptions, PendingRequest};
    use emitws::cluster::{RedisAdapter, RedisOptions};
    use serde_json::Value;

    use super::redis_server::{wait_for, Redis};

    const CLIENTS: usize = 8;
    const SPAN: Duration = Duration::from_millis(1200);

    #[test]
    fn a_drained_node_moves_every_client_to_the_other_node_losing_no_request() {
        let Some(redis) = Redis::start() else { return };
        let options = RedisOptions::default().heartbeat_ttl(Duration::from_secs(1)).max_backoff(ms(200));
        let adapters = [
            RedisAdapter::new(&redis.url(), options.clone()).unwrap(),
            RedisAdapter::new(&redis.url(), options).unwrap(),
        ];
        let a = node("a", |app| {
            app.adapter(adapters[0].clone());
        });
        let b = node("b", |app| {
            app.adapter(adapters[1].clone());
        });
        for adapter in &adapters {
            assert!(adapter.link().ready(Duration::from_secs(5)));
        }

        let start = Arc::new(Mutex::new(None::<Instant>));
        let (told, moved) = mpsc::channel::<(Duration, PendingRequest)>();
        let clients: Vec<AppClient> = (0..CLIENTS)
            .map(|_| {
                let client = AppClient::connect(&url(&a), AppOptions::default()).unwrap();
                let (me, start, told) = (client.clone(), start.clone(), told.clone());
                // The moment it is told to move: a request, which must be answered by b.
                client.on("@jump", move |_, _| {
                    let at = start.lock().unwrap().expect("the drain started").elapsed();
                    let _ = told.send((at, me.request_nowait("/where", Value::Null, WAIT)));
                });
                client
            })
            .collect();
        drop(told);
        wait_for(WAIT, || b.cluster().socket_count().is_ok_and(|n| n == CLIENTS));
        let socket_id =
            |client: &AppClient| -> SocketId { client.welcome().unwrap()["socket"].as_str().unwrap().parse().unwrap() };
        let before: Vec<SocketId> = clients.iter().map(socket_id).collect();
        assert!(before.iter().all(|socket| socket.node == a.node()));

        *start.lock().unwrap() = Some(Instant::now());
        let drain = a.drain(SPAN, Some(&url(&b))).unwrap();
        let mut times = Vec::new();
        for _ in 0..CLIENTS {
            let (at, request) = moved.recv_timeout(SPAN + WAIT).expect("every client is told to move");
            assert_eq!(request.wait().expect("the request sent on the move is answered"), "b");
            times.push(at);
        }
        assert!(drain.wait(WAIT), "{} sockets left on a", drain.remaining());
        assert_eq!(a.socket_count(), 0);
        wait_for(WAIT, || b.socket_count() == CLIENTS);
        for (client, before) in clients.iter().zip(before) {
            assert_eq!(whereabouts(client), "b");
            // A drain keeps the sessions: each resumed on b as the socket it was on a.
            assert_eq!(client.welcome().unwrap()["resumed"], true);
            assert_eq!(socket_id(client), before, "the client's socket kept its id");
        }
        // Loosely: the moves were spread over the drain, not all at its start.
        times.sort();
        assert!(times[CLIENTS - 1] - times[0] >= SPAN / 4, "every move within {:?}", times[CLIENTS - 1] - times[0]);
        assert!(times.iter().filter(|at| **at < SPAN / 10).count() < CLIENTS, "all moves in the first tenth");
        for client in clients {
            client.close();
        }
        b.close();
        a.close();
    }
}
