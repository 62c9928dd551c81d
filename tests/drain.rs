//! Draining a server (`ServerHandle::drain`, `AppHandle::drain`): no more
//! accepts, every connection closed with 1012 and the redirect, the closes
//! spread over the drain's span; and, over Redis, every event client moving
//! to the node the redirect names without losing a request.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use emitws::runtime::{DrainError, Server, DRAIN_CLOSE_CODE, MAX_REDIRECT_LEN};

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
