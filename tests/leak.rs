//! Memory under keepalive rounds (issue 19): a few thousand idle connections
//! pinged over and over must leave the server's memory where it was. Heap
//! bytes are counted by a counting allocator (this test binary's global
//! allocator), the server's own counts by `ServerHandle::stats`; rounds are
//! counted by pongs received, so nothing here depends on how fast the
//! machine is.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use emitws::client::ClientBuilder;
use emitws::proto::Message;
use emitws::runtime::{Conn, Handler, Keepalive, RunningServer, Server, Stats};

/// Heap bytes in use by the whole test process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; only the
// byte count is kept on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time: the heap count is the process's.
static SERIAL: Mutex<()> = Mutex::new(());

const CONNECTIONS: usize = 2000;
/// Rounds before the baseline (pools and buffers reach their working size),
/// then rounds measured against it.
const WARM_UP: usize = 10;
const MEASURED: usize = 100;
/// Heap growth allowed over the measured rounds (about 2.6 bytes per
/// connection per round), for buffers still reaching their high-water mark
/// (the list of connections due in one turn, say). On 7e715b2 the heap grew
/// about 32 bytes per connection per round here.
const SLACK: isize = 512 << 10;
/// A bound on waits, against a hang: far above what the rounds need.
const PATIENCE: Duration = Duration::from_secs(120);

/// Counts pongs; never sends anything itself.
#[derive(Clone, Default)]
struct Pongs(Arc<AtomicUsize>);

impl Handler for Pongs {
    type Data = ();

    fn on_message(&mut self, _: &mut Conn<'_, ()>, _: Message<'_>) {}

    fn on_pong(&mut self, _: &mut Conn<'_, ()>, _: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Pongs {
    fn wait_for(&self, pongs: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.0.load(Ordering::Relaxed) < pongs {
            assert!(Instant::now() < deadline, "{} pongs of {pongs}", self.0.load(Ordering::Relaxed));
            std::thread::sleep(ms(5));
        }
    }
}

/// Pings every 20 ms of silence; a missing pong would close after 30 s, so
/// a slow machine loses no connection.
fn short_keepalive() -> Option<Keepalive> {
    Some(Keepalive { idle: ms(20), timeout: Duration::from_secs(30), ..Keepalive::default() })
}

/// Keepalive rounds on `pinging`'s connections to `listening` (accepted by
/// the first, dialed by the second, or the other way round); returns the
/// stats of the pinging server after the warm-up and after the measured rounds.
fn rounds(pinging: &RunningServer, pongs: &Pongs) -> (Stats, Stats) {
    pongs.wait_for(CONNECTIONS * WARM_UP);
    let before = pinging.handle().stats().expect("the server runs");
    let live = LIVE.load(Ordering::Relaxed);
    pongs.wait_for(CONNECTIONS * (WARM_UP + MEASURED));
    let after = pinging.handle().stats().expect("the server runs");
    let grown = LIVE.load(Ordering::Relaxed) - live;
    assert!(
        grown < SLACK,
        "the heap grew {grown} bytes over {MEASURED} keepalive rounds of {CONNECTIONS} connections \
         ({:.1} per connection per round); stats before {before:?}, after {after:?}",
        grown as f64 / (CONNECTIONS * MEASURED) as f64
    );
    (before, after)
}

/// A test server whose handshakes may take as long as a busy machine needs.
fn patient_server(keepalive: Option<Keepalive>) -> Server {
    quick_server().handshake_timeout(PATIENCE).keepalive(keepalive)
}

fn connect_all(listening: &RunningServer, dialer: &RunningServer) {
    let url = format!("ws://{}/", listening.local_addr());
    let settings = ClientBuilder::new().timeout(PATIENCE);
    for _ in 0..CONNECTIONS {
        dialer.handle().connect(&url, &settings, ()).expect("dial");
    }
    let deadline = Instant::now() + PATIENCE;
    while listening.handle().connection_count() < CONNECTIONS {
        assert!(Instant::now() < deadline, "{} connections", listening.handle().connection_count());
        std::thread::sleep(ms(5));
    }
}

/// Every open connection of a keepalive server has exactly one timer entry,
/// and the wheel's memory did not grow.
fn assert_steady(before: Stats, after: Stats) {
    assert_eq!(after.connections, CONNECTIONS, "{after:?}");
    assert_eq!(after.timer_entries, CONNECTIONS, "one timer entry per connection: {after:?}");
    assert_eq!(after.timer_capacity, before.timer_capacity, "before {before:?}, after {after:?}");
    assert_eq!(after.connection_slots, before.connection_slots, "before {before:?}, after {after:?}");
    assert!(after.pooled_queues <= 4096 && after.pooled_bytes <= 8 << 20, "{after:?}");
}

/// Once every connection is gone, nothing of them is kept.
fn assert_empty(server: &RunningServer) {
    wait_connection_count(&server.handle(), 0);
    let stats = server.handle().stats().expect("the server runs");
    assert_eq!((stats.connections, stats.connection_slots), (0, 0), "{stats:?}");
    assert_eq!((stats.timer_entries, stats.timer_capacity), (0, 0), "{stats:?}");
}

#[test]
fn keepalive_rounds_on_accepted_connections_leave_memory_where_it_was() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pongs = Pongs::default();
    let server = patient_server(short_keepalive()).start("127.0.0.1:0", pongs.clone()).unwrap();
    // The dialer only answers pings (the engine does that by itself).
    let dialer = patient_server(None).start_dialer(Pongs::default()).unwrap();
    connect_all(&server, &dialer);
    let (before, after) = rounds(&server, &pongs);
    assert_steady(before, after);
    dialer.shutdown();
    assert_empty(&server);
    server.shutdown();
}

#[test]
fn keepalive_rounds_on_dialed_connections_leave_memory_where_it_was() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pongs = Pongs::default();
    let server = patient_server(None).start("127.0.0.1:0", Pongs::default()).unwrap();
    let dialer = patient_server(short_keepalive()).start_dialer(pongs.clone()).unwrap();
    connect_all(&server, &dialer);
    let (before, after) = rounds(&dialer, &pongs);
    assert_steady(before, after);
    server.shutdown();
    assert_empty(&dialer);
    dialer.shutdown();
}
