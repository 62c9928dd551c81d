//! A redis-server that a test starts on a port of its own and kills when
//! dropped. Without redis-server on the PATH, `start` says so loudly and
//! returns None: the test then passes without running (CI installs it).

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
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        Redis::start_on(port)
    }

    pub fn start_on(port: u16) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("\n*** redis-server is not installed: SKIPPING the Redis cluster tests ***\n");
            return None;
        };
        let redis = Redis { child, port };
        wait_for(Duration::from_secs(5), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        Some(redis)
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

/// Waits until `done` holds, failing the test after `within`.
pub fn wait_for(within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "condition not met within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
