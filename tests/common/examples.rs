//! The example programs (examples/) run as their users run them: the built
//! binary, as a child process, on a 127.0.0.1 port, killed when dropped.
//!
//! A plain `cargo test` builds the example binaries next to the test
//! binaries (target/PROFILE/examples/); `cargo test --all-targets` builds
//! examples only as test harnesses and `cargo test --test NAME` not at all
//! (scripts/test-all.sh runs `cargo build --examples` first). So a binary
//! that is missing, or older than one of the sources cargo built it from (its
//! `.d` file), fails the test with the command to run.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// How long an example may take to print its address.
const STARTUP: Duration = Duration::from_secs(10);

/// The built binary of example `name`, checked to be there and up to date.
pub fn binary(name: &str) -> PathBuf {
    // The test runs as target/PROFILE/deps/TEST-HASH; examples are in target/PROFILE/examples.
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/PROFILE").join("examples");
    let binary = dir.join(name);
    let build = format!("build it first: cargo build --example {name} (or cargo build --examples)");
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("example binary {}: {e}; {build}", binary.display()));
    let deps = std::fs::read_to_string(dir.join(format!("{name}.d"))).unwrap_or_default();
    let sources = deps.split_once(':').map_or("", |(_, sources)| sources.lines().next().unwrap_or(""));
    for source in sources.split_whitespace() {
        let changed = std::fs::metadata(source).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        assert!(changed <= built, "example binary {} is older than {source}; {build}", binary.display());
    }
    binary
}

/// A free 127.0.0.1 port, for a program that must be given its address
/// before it starts.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

/// A running example. Its stdout is read (and so never fills up) by a thread.
pub struct Example {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Example {
    /// Starts example `name` with `args`; returns at once.
    pub fn spawn(name: &str, args: &[&str]) -> Example {
        let mut child = Command::new(binary(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start example {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tell, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tell.send(line);
            }
        });
        Example { name: name.to_string(), child, lines }
    }

    /// Starts example `name` with `args` and waits for the address it prints
    /// (`ws://HOST:PORT` or `http://HOST:PORT`).
    pub fn start(name: &str, args: &[&str]) -> (Example, SocketAddr) {
        let mut example = Example::spawn(name, args);
        let addr = example.printed_addr();
        (example, addr)
    }

    /// The address the example printed once it listened.
    pub fn printed_addr(&mut self) -> SocketAddr {
        loop {
            let line = match self.lines.recv_timeout(STARTUP) {
                Ok(line) => line,
                Err(_) => {
                    panic!("example {} printed no address within {STARTUP:?}: {:?}", self.name, self.child.try_wait())
                }
            };
            let found = line.split("://").nth(1).and_then(|rest| rest.split('/').next()?.parse().ok());
            if let Some(addr) = found {
                return addr;
            }
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
