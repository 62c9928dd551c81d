//! A redis-server that a test starts on a port of its own and kills when
//! dropped. Without redis-server on the PATH the test fails, naming what is
//! missing, unless the Redis tests were left out on purpose
//! (`EMITWS_SKIP=redis`): then `start` returns None and the test returns.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server child process, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        // A port free when asked may be taken by another test's server
        // before ours binds it: ours then exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            match Redis::try_start(port, &["--port", &port.to_string()]) {
                Ok(redis) => return redis,
                Err(()) => continue,
            }
        }
        panic!("redis-server could not bind a free port in 5 tries")
    }

    pub fn start_on(port: u16) -> Option<Redis> {
        Redis::start_with(port, &["--port", &port.to_string()])
    }

    /// A redis-server started with `args` (its port, or a config file
    /// first, among them) then the tests' defaults, reached on `port`
    /// (plain or TLS, as `args` say).
    pub fn start_with(port: u16, args: &[&str]) -> Option<Redis> {
        Redis::try_start(port, args).unwrap_or_else(|()| panic!("redis-server exited: is port {port} taken?"))
    }

    /// [`start_with`](Self::start_with), or `Err` if the server exited
    /// before it answered (its port taken, most often).
    fn try_start(port: u16, args: &[&str]) -> Result<Option<Redis>, ()> {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(_) if left_out("redis") => {
                eprintln!("\n*** EMITWS_SKIP=redis: not running this Redis test ***\n");
                return Ok(None);
            }
            Err(e) => panic!(
                "cannot start redis-server ({e}): install it (apt-get install redis-server, or \
                 scripts/install-deps.sh), or leave the Redis tests out with EMITWS_SKIP=redis"
            ),
        };
        let mut redis = Redis { child, port };
        // Up once the port answers, unless the server exited first: a port
        // another test's server took answers too, but is not ours.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if !matches!(redis.child.try_wait(), Ok(None)) {
                return Err(());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Still ours a moment later (an exit on a taken port is at once).
                std::thread::sleep(Duration::from_millis(20));
                if matches!(redis.child.try_wait(), Ok(None)) {
                    return Ok(Some(redis));
                }
                return Err(());
            }
            assert!(Instant::now() < deadline, "redis-server did not listen on {port} within 5 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

include!("left_out.rs");

/// A TCP port free on 127.0.0.1 when asked.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Waits until `done` holds, failing the test after `within`.
pub fn wait_for(within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "condition not met within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
