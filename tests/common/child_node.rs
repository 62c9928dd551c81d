//! A node a test runs in a child process of its own test binary, to kill
//! it with SIGKILL (no close, no cleanup): the child runs one test that does
//! nothing unless an environment variable names it a node, and is ignored
//! unless run by name with `--include-ignored`; it prints
//! `node at ADDR`, and waits to be killed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A child process, killed (SIGKILL) when dropped if still running.
pub struct KilledOnDrop(pub Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs test `test` of this binary in a child process with `var` set to
/// `value`; returns the child and the address it printed.
pub fn spawn(test: &str, var: &str, value: &str) -> (KilledOnDrop, SocketAddr) {
    let mut child = KilledOnDrop(
        Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--exact", test, "--include-ignored", "--nocapture", "--test-threads=1"])
            .env(var, value)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the child node"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().expect("piped"));
    loop {
        let mut line = String::new();
        assert!(lines.read_line(&mut line).expect("the child's output") > 0, "the child node ended");
        // The test harness may have written its "test NAME ... " first.
        if let Some((_, addr)) = line.trim().split_once("node at ") {
            return (child, addr.parse().expect("an address"));
        }
    }
}
