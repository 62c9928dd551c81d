//! Fan-out load for benches/cluster.sh: one sender broadcasts to a room whose
//! members are spread over the nodes of a cluster (`emitws-cluster-node`
//! processes), and every delivery is counted.
//!
//! `cluster_fanout --sender HOST:PORT --node HOST:PORT [--node ...]
//! [--per-node N] [--payload BYTES] [--window W] [--warmup S] [--duration S]
//! [--pid PID ...]`
//!
//! N receivers per node join `#bench` as they connect (`?room=%23bench`) and
//! are read by one mio loop that counts the frames. The sender keeps at most
//! W broadcasts undelivered (W × receivers deliveries outstanding), so the
//! rate is what the cluster sustains. After the warm-up it measures for the
//! duration and prints one JSON object: broadcasts and deliveries per second,
//! and the CPU seconds each `--pid` (the nodes, redis-server) used meanwhile.

#[path = "support/logs.rs"]
mod logs;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use emitws::client::ClientBuilder;
use emitws::proto::Message;
use mio::{Events, Interest, Poll, Token};

struct Args {
    sender: SocketAddr,
    nodes: Vec<SocketAddr>,
    per_node: usize,
    payload: usize,
    window: u64,
    warmup: f64,
    duration: f64,
    pids: Vec<u32>,
}

fn parse() -> Args {
    let mut a = Args {
        sender: ([127, 0, 0, 1], 0).into(),
        nodes: Vec::new(),
        per_node: 100,
        payload: 64,
        window: 16,
        warmup: 2.0,
        duration: 10.0,
        pids: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        let bad = |_| usage();
        match arg.as_str() {
            "--sender" => a.sender = value.parse().unwrap_or_else(bad),
            "--node" => a.nodes.push(value.parse().unwrap_or_else(bad)),
            "--per-node" => a.per_node = value.parse().unwrap_or_else(|_| usage()),
            "--payload" => a.payload = value.parse().unwrap_or_else(|_| usage()),
            "--window" => a.window = value.parse().unwrap_or_else(|_| usage()),
            "--warmup" => a.warmup = value.parse().unwrap_or_else(|_| usage()),
            "--duration" => a.duration = value.parse().unwrap_or_else(|_| usage()),
            "--pid" => a.pids.push(value.parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if a.nodes.is_empty() || a.sender.port() == 0 {
        usage();
    }
    a
}

fn usage() -> ! {
    eprintln!(
        "usage: cluster_fanout --sender HOST:PORT --node HOST:PORT [--node ...] [--per-node N] \
         [--payload BYTES] [--window W] [--warmup S] [--duration S] [--pid PID ...]"
    );
    std::process::exit(2);
}

/// Opens a WebSocket to `addr` by hand (the receivers only read, so a raw
/// socket under mio is all they need): the upgrade request and its 101.
fn receiver(addr: SocketAddr, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect a receiver");
    let request = format!(
        "GET /?user={user}&room=%23bench HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: emitws.v1\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send the upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read the upgrade reply");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// Counts the complete server frames at the start of `buf` and drains them.
fn count_frames(buf: &mut Vec<u8>) -> u64 {
    let (mut at, mut frames) = (0, 0);
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            break;
        }
        let (len, header) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => (u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes")) as usize, 10),
            126 | 127 => break,
            len => (len as usize, 2),
        };
        if rest.len() < header + len {
            break;
        }
        if rest[0] & 0x0f == 1 {
            frames += 1;
        }
        at += header + len;
    }
    buf.drain(..at);
    frames
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    ticks / 100.0
}

fn main() {
    logs::init();
    let args = parse();
    let mut poll = Poll::new().expect("poll");
    let mut sockets = Vec::new();
    for (n, node) in args.nodes.iter().enumerate() {
        for i in 0..args.per_node {
            let stream = receiver(*node, &format!("r{n}-{i}"));
            stream.set_nonblocking(true).expect("non-blocking");
            let mut stream = mio::net::TcpStream::from_std(stream);
            poll.registry().register(&mut stream, Token(sockets.len()), Interest::READABLE).expect("register");
            sockets.push((stream, Vec::new()));
        }
    }
    let receivers = sockets.len() as u64;
    let mut sender = ClientBuilder::new()
        .protocol("emitws.v1")
        .connect(&format!("ws://{}/?user=sender", args.sender))
        .expect("connect the sender");
    // Wait until every node has every receiver in the room.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        sender.send_text(r##"[1,1,"/query",{"what":"group_size","arg":"#bench"}]"##).expect("query");
        let answer = match sender.recv().expect("the query's answer") {
            Message::Text(text) => text.to_string(),
            _ => String::new(),
        };
        if answer == format!("[2,1,{receivers}]") {
            break;
        }
        assert!(Instant::now() < deadline, "the room never filled: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let delivered = Arc::new(AtomicU64::new(0));
    let progress = Arc::new((Mutex::new(()), Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (delivered, progress, stop) = (delivered.clone(), progress.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut events = Events::with_capacity(1024);
            let mut chunk = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let _ = poll.poll(&mut events, Some(Duration::from_millis(100)));
                let mut frames = 0;
                for event in events.iter() {
                    let (stream, buf) = &mut sockets[event.token().0];
                    loop {
                        match stream.read(&mut chunk) {
                            Ok(0) => panic!("a receiver was disconnected"),
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) => panic!("a receiver failed: {e}"),
                        }
                    }
                    frames += count_frames(buf);
                }
                if frames > 0 {
                    delivered.fetch_add(frames, Ordering::Relaxed);
                    progress.1.notify_all();
                }
            }
        })
    };

    let text = "x".repeat(args.payload);
    let envelope = format!(r##"[0,"/say",{{"to":"#bench","text":"{text}"}}]"##);
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let mut sent: u64 = 0;
    let mut start: Option<(Instant, u64, u64, Vec<f64>)> = None;
    loop {
        let now = Instant::now();
        if start.is_none() && now >= measure_from {
            let cpu = args.pids.iter().map(|pid| cpu_seconds(*pid)).collect();
            start = Some((now, sent, delivered.load(Ordering::Relaxed), cpu));
        }
        if now >= end {
            break;
        }
        let mut guard = progress.0.lock().expect("progress");
        while (sent * receivers).saturating_sub(delivered.load(Ordering::Relaxed)) >= args.window * receivers {
            guard = progress.1.wait_timeout(guard, Duration::from_millis(10)).expect("progress").0;
            if Instant::now() >= end {
                break;
            }
        }
        drop(guard);
        sender.send_text(&envelope).expect("broadcast");
        sent += 1;
    }
    let (t0, sent0, delivered0, cpu0) = start.expect("measured");
    let seconds = t0.elapsed().as_secs_f64();
    let (broadcasts, deliveries) = (sent - sent0, delivered.load(Ordering::Relaxed) - delivered0);
    let cpu: Vec<String> = args
        .pids
        .iter()
        .zip(cpu0)
        .map(|(pid, before)| format!("\"{pid}\":{:.3}", cpu_seconds(*pid) - before))
        .collect();
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    println!(
        "{{\"receivers\":{receivers},\"seconds\":{seconds:.3},\"broadcasts\":{broadcasts},\"deliveries\":{deliveries},\
         \"broadcasts_per_sec\":{:.0},\"deliveries_per_sec\":{:.0},\"cpu_seconds\":{{{}}}}}",
        broadcasts as f64 / seconds,
        deliveries as f64 / seconds,
        cpu.join(",")
    );
}
