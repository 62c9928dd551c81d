//! Redis work per broadcast (docs/BENCHMARKS.md, "Redis work per history
//! publish"): a plain cluster broadcast against one to a room with history.
//! Two app nodes on the Redis at ARG1 (flushed stats: CONFIG RESETSTAT); N
//! (ARG2, 10,000 by default) broadcasts from one, to a room without
//! history, then to one with; per kind, the redis-server CPU used (INFO cpu)
//! and the commands run (INFO commandstats, a script's inner calls included)
//! per broadcast. A standalone package (its own workspace):
//! `cargo run --release --manifest-path benches/redis-history/Cargo.toml -- redis://127.0.0.1:6379/`.
use std::time::{Duration, Instant};

use emitws::app::{App, BroadcastOpts, History};
use emitws::cluster::{RedisAdapter, RedisOptions};

fn info(c: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(c).unwrap()
}

fn field(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap().trim().parse().unwrap()
}

fn calls(stats: &str, cmd: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

fn main() {
    let url = std::env::args().nth(1).expect("redis url");
    let n: u64 = std::env::args().nth(2).map_or(10_000, |n| n.parse().unwrap());
    let node = || {
        let adapter = RedisAdapter::new(&url, RedisOptions::default()).unwrap();
        let mut app = App::new();
        app.adapter(adapter.clone());
        app.history("#h", History::new(1000, Duration::from_secs(60)));
        let running = app.listen("127.0.0.1:0").unwrap();
        assert!(adapter.link().ready(Duration::from_secs(5)));
        running
    };
    let (a, _b) = (node(), node());
    let mut c = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    for (label, room, counted) in [("plain", "#p", "publish"), ("history", "#h", "evalsha")] {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
        let cpu = |c: &mut redis::Connection| {
            let i = info(c, "cpu");
            field(&i, "used_cpu_sys") + field(&i, "used_cpu_user")
        };
        let before = cpu(&mut c);
        let start = Instant::now();
        for i in 0..n {
            a.broadcast("/said", &format!("message {i}"), BroadcastOpts::to(room)).unwrap();
        }
        while calls(&info(&mut c, "commandstats"), counted) < n {
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = start.elapsed();
        let used = cpu(&mut c) - before;
        let stats = info(&mut c, "commandstats");
        println!("== {label}: {n} broadcasts in {took:?}; redis-server CPU {:.2} us per broadcast", used * 1e6 / n as f64);
        for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
            let cmd = line.split(':').next().unwrap().trim_start_matches("cmdstat_");
            println!("   {cmd}: {:.3} per broadcast  ({line})", calls(&stats, cmd) as f64 / n as f64);
        }
    }
}
