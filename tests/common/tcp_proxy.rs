//! A TCP proxy in front of one address whose connections a test cuts (no
//! close either way, as a network drop), and which refuses new ones while
//! offline: a client cut off from a server, or a node from Redis.

#![allow(dead_code)]

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The proxy; stopped, its connections cut, when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    offline: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy { addr, streams: Arc::default(), offline: Arc::default(), stopped: Arc::default() };
        let (streams, offline, stopped) = (proxy.streams.clone(), proxy.offline.clone(), proxy.stopped.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                if offline.load(Ordering::SeqCst) {
                    continue; // Dropped: the attempt fails.
                }
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                streams.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    thread::spawn(move || {
                        let _ = io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    /// Cuts every connection (no close either way) and refuses new ones.
    pub fn cut(&self) {
        self.offline.store(true, Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets new connections through again.
    pub fn online(&self) {
        self.offline.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr); // Wakes the accept loop to see `stopped`.
    }
}
