//! The server as a whole over real loopback sockets: the ServerHandle from
//! other threads, many connections on several workers, graceful shutdown,
//! connection caps and the acceptor thread.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::mpsc;
use std::thread;

use common::*;
use emitws::proto::{CloseCode, CloseReason};
use emitws::runtime::{AcceptMode, SharedFrame};

#[test]
fn handle_send_text_from_another_thread_reaches_the_right_connection() {
    let echo = Echo::default();
    let server = quick_server().workers(2).start("127.0.0.1:0", echo.clone()).unwrap();
    let mut a = Client::connect_path(server.local_addr(), "/a");
    let mut b = Client::connect_path(server.local_addr(), "/b");
    let id_b = echo.events.wait_opened("/b");
    let handle = server.handle();
    thread::spawn(move || {
        assert!(handle.send_text(id_b, "for b"));
        assert!(handle.send_binary(id_b, b"bytes for b"));
    })
    .join()
    .unwrap();
    assert_eq!(b.recv(), Frame::text("for b"));
    assert_eq!(b.recv(), Frame::Binary(b"bytes for b".to_vec()));
    // `a` got nothing: the first thing it reads is its own echo.
    a.echo("mine");
    b.echo("mine too");
    a.close(1000);
    b.close(1000);
    server.shutdown();
}

#[test]
fn broadcast_reaches_connections_on_every_worker() {
    let echo = Echo::default();
    let server = quick_server().workers(2).start("127.0.0.1:0", echo.clone()).unwrap();
    let mut clients: Vec<Client> =
        (0..64).map(|i| Client::connect_path(server.local_addr(), &format!("/{i}"))).collect();
    let record = echo.events.wait("64 opens", |r| (r.opened.len() == 64).then(|| r.clone()));
    let workers: HashSet<&str> = record.threads.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(workers.len(), 2, "connections did not spread over both workers: {workers:?}");
    let even: Vec<_> = (0..64).step_by(2).map(|i| record.id_of(&format!("/{i}")).unwrap()).collect();
    let even_workers: HashSet<&str> =
        record.threads.iter().filter(|(id, _)| even.contains(id)).map(|(_, name)| name.as_str()).collect();
    assert_eq!(even_workers.len(), 2, "the recipients are on both workers");

    let handle = server.handle();
    thread::spawn(move || {
        let frame = SharedFrame::text("news");
        handle.broadcast(even.iter().copied(), &frame);
        handle.broadcast(even, &SharedFrame::binary(&[1, 2, 3]));
    })
    .join()
    .unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        if i % 2 == 0 {
            assert_eq!(client.recv(), Frame::text("news"), "client {i}");
            assert_eq!(client.recv(), Frame::Binary(vec![1, 2, 3]), "client {i}");
        }
        client.echo(&format!("after {i}"));
    }
    drop(clients);
    wait_connection_count(&server.handle(), 0);
    server.shutdown();
}

#[test]
fn handle_commands_for_a_closed_connection_are_ignored() {
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let old = Client::connect_path(addr, "/old");
    let old_id = echo.events.wait_opened("/old");
    old.close(1000);
    echo.events.wait_closed(old_id);
    wait_connection_count(&handle, 0);
    // On one worker the new connection takes the old one's slot; its id differs.
    let mut new = Client::connect_path(addr, "/new");
    let new_id = echo.events.wait_opened("/new");
    assert_ne!(new_id, old_id);
    assert!(handle.send_text(old_id, "stale"));
    handle.broadcast([old_id], &SharedFrame::text("stale broadcast"));
    assert!(handle.close(old_id, CloseCode::NORMAL, "stale close"));
    new.echo("fresh");
    new.expect_silence(ms(100));
    assert!(echo.events.snapshot().close_codes(new_id).is_empty());
    new.close(1000);
    server.shutdown();
    // Once the server has stopped, the handle says so.
    assert!(!handle.send_text(new_id, "too late"));
    assert!(!handle.close(new_id, CloseCode::NORMAL, ""));
}

#[test]
fn thousand_concurrent_connections_echo_across_two_workers() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 250;
    let echo = Echo::default();
    let server = quick_server().workers(2).start("127.0.0.1:0", echo.clone()).unwrap();
    let addr = server.local_addr();
    let (ready_tx, ready) = mpsc::channel();
    let mut go = Vec::new();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let ready = ready_tx.clone();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            go.push(go_tx);
            thread::spawn(move || {
                let mut clients: Vec<Client> =
                    (0..PER_THREAD).map(|i| Client::connect_path(addr, &format!("/{t}-{i}"))).collect();
                ready.send(()).unwrap();
                go_rx.recv_timeout(WAIT * 2).expect("no go");
                for round in 0..2 {
                    for (i, client) in clients.iter_mut().enumerate() {
                        client.send_text(&format!("{t}-{i}-{round}"));
                    }
                    for (i, client) in clients.iter_mut().enumerate() {
                        assert_eq!(client.recv(), Frame::Text(format!("{t}-{i}-{round}")));
                    }
                }
                for client in &mut clients {
                    client.send_binary(&[t as u8; 2000]);
                }
                for client in &mut clients {
                    assert_eq!(client.recv(), Frame::Binary(vec![t as u8; 2000]));
                }
            })
        })
        .collect();
    for _ in 0..THREADS {
        ready.recv_timeout(WAIT * 2).expect("a client thread failed to open its connections");
    }
    // All 1,000 are open at once.
    let handle = server.handle();
    assert_eq!(handle.connection_count(), THREADS * PER_THREAD);
    let record = echo.events.snapshot();
    assert_eq!(record.opened.len(), THREADS * PER_THREAD);
    let workers: HashSet<&str> = record.threads.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for go in go {
        go.send(()).unwrap();
    }
    for thread in threads {
        thread.join().expect("a client thread failed");
    }
    wait_connection_count(&handle, 0);
    let closes = echo.events.wait_closes(THREADS * PER_THREAD);
    assert!(closes.iter().all(|(_, reason)| reason.code() == CloseCode::ABNORMAL), "{closes:?}");
    server.shutdown();
}

#[test]
fn graceful_shutdown_sends_1001_to_every_connection_and_returns() {
    let echo = Echo::default();
    let server = quick_server()
        .workers(2)
        .close_timeout(ms(3000))
        .shutdown_timeout(ms(3000))
        .start("127.0.0.1:0", echo.clone())
        .unwrap();
    let mut clients: Vec<Client> =
        (0..20).map(|i| Client::connect_path(server.local_addr(), &format!("/{i}"))).collect();
    for client in &mut clients {
        client.echo("before");
    }
    let (done, stopped) = mpsc::channel();
    let shutdown = thread::spawn(move || {
        server.shutdown();
        done.send(()).unwrap();
    });
    for client in &mut clients {
        assert_eq!(client.expect_close(1001), "server shutting down");
        client.send_close(1001, "");
        client.expect_eof();
    }
    drop(clients);
    stopped.recv_timeout(WAIT).expect("shutdown did not return");
    shutdown.join().unwrap();
    let record = echo.events.snapshot();
    assert_eq!(record.closed.len(), 20);
    let answered = |r: &CloseReason| matches!(r, CloseReason::Peer { code: Some(CloseCode::GOING_AWAY), .. });
    assert!(record.closed.iter().all(|(_, reason)| answered(reason)), "{:?}", record.closed);
}

#[test]
fn shutdown_returns_even_when_clients_never_answer() {
    let echo = Echo::default();
    let server =
        quick_server().close_timeout(ms(10_000)).shutdown_timeout(ms(500)).start("127.0.0.1:0", echo.clone()).unwrap();
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..5).map(|i| Client::connect_path(addr, &format!("/{i}"))).collect();
    // A handshake in progress is dropped at once.
    let mut half = connect(addr);
    half.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    wait_connection_count(&server.handle(), 6);
    let (done, stopped) = mpsc::channel();
    thread::spawn(move || {
        server.shutdown();
        done.send(()).unwrap();
    });
    for client in &mut clients {
        client.expect_close(1001);
    }
    expect_closed_raw(&mut half, WAIT);
    stopped.recv_timeout(WAIT).expect("shutdown did not return");
    for client in &mut clients {
        // Dropped when the shutdown timeout ran out.
        assert!(matches!(client.try_recv(), Err(RecvError::Eof | RecvError::Io(_))));
    }
    let record = echo.events.snapshot();
    assert_eq!(record.closed.len(), 5);
    assert!(record.closed.iter().all(|(_, reason)| matches!(reason, CloseReason::Shutdown)), "{:?}", record.closed);
    // The port no longer accepts.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn max_connections_refuses_the_extra_connection_with_503() {
    let server = quick_server().workers(2).max_connections(2).start("127.0.0.1:0", Echo::default()).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    for _ in 0..3 {
        let (mut stream, reply, _) = http(addr, &upgrade_request("/", &[]));
        assert_eq!(reply.status, 503, "{reply:?}");
        expect_closed_raw(&mut stream, WAIT);
    }
    assert_eq!(handle.connection_count(), 2);
    a.echo("a works");
    b.echo("b works");
    a.close(1000);
    wait_connection_count(&handle, 1);
    let mut c = Client::connect(addr);
    c.echo("c got a's place");
    b.echo("b still works");
    drop((b, c));
    wait_connection_count(&handle, 0);
    server.shutdown();
}

#[test]
fn max_connections_per_ip_refuses_the_extra_connection_with_503() {
    let server = quick_server().workers(2).max_connections_per_ip(3).start("127.0.0.1:0", Echo::default()).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
    let (mut stream, reply, _) = http(addr, &upgrade_request("/", &[]));
    assert_eq!(reply.status, 503, "{reply:?}");
    expect_closed_raw(&mut stream, WAIT);
    for client in &mut clients {
        client.echo("still fine");
    }
    // Leaving frees a place for the same address.
    clients.pop();
    wait_connection_count(&handle, 2);
    clients.push(Client::connect(addr));
    clients[2].echo("back in");
    drop(clients);
    wait_connection_count(&handle, 0);
    server.shutdown();
}

#[test]
fn connection_count_goes_back_down_after_clients_leave() {
    let server = quick_server().workers(2).start("127.0.0.1:0", Echo::default()).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    assert_eq!(handle.connection_count(), 0);
    let mut clients: Vec<Client> = (0..6).map(|_| Client::connect(addr)).collect();
    let mut raw = connect(addr); // counted while its handshake is pending
    wait_connection_count(&handle, 7);
    clients.pop().unwrap().close(1000);
    clients.pop().unwrap().close(4000);
    wait_connection_count(&handle, 5);
    drop(clients);
    wait_connection_count(&handle, 1);
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (reply, _) = read_reply(&mut raw);
    assert_eq!(reply.status, 426);
    drop(raw);
    wait_connection_count(&handle, 0);
    server.shutdown();
}

#[test]
fn acceptor_mode_echoes() {
    let echo = Echo::default();
    let server =
        quick_server().workers(2).accept_mode(AcceptMode::Acceptor).start("127.0.0.1:0", echo.clone()).unwrap();
    let mut clients: Vec<Client> =
        (0..16).map(|i| Client::connect_path(server.local_addr(), &format!("/{i}"))).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.echo(&format!("hello {i}"));
        client.send_binary(&vec![i as u8; 70_000]);
        assert_eq!(client.recv(), Frame::Binary(vec![i as u8; 70_000]));
    }
    let record = echo.events.snapshot();
    let workers: HashSet<&str> = record.threads.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(workers.len(), 2, "the acceptor deals connections to both workers: {workers:?}");
    let (done, stopped) = mpsc::channel();
    thread::spawn(move || {
        server.shutdown();
        done.send(()).unwrap();
    });
    for client in &mut clients {
        client.expect_close(1001);
        client.send_close(1001, "");
        client.expect_eof();
    }
    stopped.recv_timeout(WAIT).expect("shutdown did not return");
}
