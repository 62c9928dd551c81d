//! emitws-load: the project's end-to-end WebSocket load tool.
//!
//! `echo` mode drives N connections doing masked ping-pong echo (K messages
//! in flight each) and reports messages/s and round-trip latency percentiles
//! (raw messages, or emitws.v1 requests and replies); `fanout` mode makes all
//! N connections members of one room in which P publish, and reports
//! deliveries/s, delivery latency and completeness; `idle` mode opens N
//! connection; `resume-storm` cuts N connections at once and measures how
//! they all resume (PROTOCOL.md §13). Each client thread runs its own mio event loop
//! over its share of the connections; frames are built with
//! [`emitws::proto::encode_frame`] and read with [`emitws::proto::Decoder`].
//! See `emitws-load --help`.

mod cli;
mod client;
mod storm;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cli::{Args, Config, Mode};
use client::{Shared, Stats};
use serde_json::{json, Value};

fn main() {
    let mut config = match Config::new(Args::parse()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("emitws-load: {message} (see --help)");
            std::process::exit(2);
        }
    };
    config.open_files_limit = open_files_limit();
    if let Some(limit) = config.open_files_limit {
        let needed = (config.connections + config.threads + 8) as u64;
        if needed > limit {
            eprintln!(
                "emitws-load: {} connections need about {needed} open files, over this process's limit of \
                 {limit}; raise `ulimit -n` or use fewer connections",
                config.connections
            );
            std::process::exit(2);
        }
    }
    signals::install();
    let stdin_eof = Arc::new(AtomicBool::new(false));
    if config.mode == Mode::Idle && config.hold.is_none() && !stdin_is_dev_null() {
        let stdin_eof = stdin_eof.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            while let Ok(1..) = std::io::Read::read(&mut std::io::stdin(), &mut sink) {}
            stdin_eof.store(true, Ordering::SeqCst);
        });
    }
    let code = run(&config, &|| stdin_eof.load(Ordering::Relaxed));
    std::process::exit(code);
}

/// What the main thread observed about the run.
struct Timing {
    /// From start until every connection had been tried.
    connect: Duration,
    /// Echo: the measured time (shorter than asked if interrupted). Idle: the hold.
    measured: Duration,
    /// Connections open once all had been tried.
    opened: usize,
    /// Cut short by SIGINT / SIGTERM.
    interrupted: bool,
    /// Fanout: messages published, warm-up included.
    published: u64,
    /// Resume-storm: what the main thread saw.
    storm: Option<storm::Report>,
}

/// Runs the load and prints the results; returns the exit status. `released`
/// says whether stdin has reached EOF (which ends an idle hold).
fn run(config: &Config, released: &dyn Fn() -> bool) -> i32 {
    let shared = Shared::new();
    let mut pattern = client::pattern(config.payload + client::PATTERN_SLACK, config.json_pattern);
    if config.app || config.socketio {
        // The payload goes inside a JSON string: nothing in it may need escaping.
        pattern.iter_mut().filter(|b| matches!(b, b'"' | b'\\')).for_each(|b| *b = b'_');
    }
    let threads = config.threads;
    let max_connecting = config.max_connecting.div_ceil(threads).max(1);
    let (stats, timing) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|id| {
                let share = |id: usize| config.connections / threads + usize::from(id < config.connections % threads);
                let (first, count) = ((0..id).map(share).sum(), share(id));
                let (shared, pattern) = (&shared, &pattern[..]);
                std::thread::Builder::new()
                    .name(format!("load-{id}"))
                    .spawn_scoped(scope, move || client::run(id, first, count, max_connecting, config, pattern, shared))
                    .expect("spawn a client thread")
            })
            .collect();
        let timing = drive(config, &shared, released);
        shared.stop.store(true, Ordering::SeqCst);
        let mut total = Stats::default();
        for handle in handles {
            total.merge(&handle.join().expect("a client thread panicked"));
        }
        (total, timing)
    });
    let fatal = shared.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();
    report(config, &stats, &timing);
    if stats.unclean_closes > 0 {
        eprintln!("note: {} connection(s) got no close frame back within 2 s at the end", stats.unclean_closes);
    }
    if stats.lingering > 0 {
        eprintln!(
            "note: {} connection(s) got the server's close frame but the server did not close TCP within 2 s",
            stats.lingering
        );
    }
    if let Some(fatal) = fatal {
        eprintln!("emitws-load: fatal: {fatal}");
        return 2;
    }
    let missing = (timing.published * timing.opened as u64).saturating_sub(stats.delivered);
    // Every session cut must have come back with exactly what it missed.
    let storm_short = timing.storm.as_ref().is_some_and(|report| {
        report.before_missing > 0 || report.sessions == 0 || stats.storm.resumed != report.sessions as u64
    });
    i32::from(stats.errors() > 0 || missing > 0 || storm_short)
}

/// The main thread's part: wait for the connections, then time the run.
fn drive(config: &Config, shared: &Shared, released: &dyn Fn() -> bool) -> Timing {
    let start = Instant::now();
    let stopped = || signals::interrupted() || shared.stop.load(Ordering::Relaxed);
    let mut next_progress = start + Duration::from_secs(1);
    while shared.threads_ready.load(Ordering::SeqCst) < config.threads && !stopped() {
        std::thread::sleep(Duration::from_millis(5));
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(1);
            eprintln!(
                "connecting: {} open, {} of {} tried",
                shared.open.load(Ordering::Relaxed),
                shared.attempted.load(Ordering::Relaxed),
                config.connections
            );
        }
    }
    let connect = start.elapsed();
    let opened = shared.open.load(Ordering::SeqCst);
    let mut measured = Duration::ZERO;
    if stopped() {
        return Timing { connect, measured, opened, interrupted: signals::interrupted(), published: 0, storm: None };
    }
    let mut storm = None;
    match config.mode {
        Mode::Echo | Mode::Fanout => {
            if opened == 0 {
                return Timing { connect, measured, opened, interrupted: false, published: 0, storm: None };
            }
            let from = Instant::now() + config.warmup;
            let until = from + config.duration;
            shared.window.set((from, until)).expect("the window is set once");
            loop {
                let now = Instant::now();
                if now >= until || stopped() {
                    measured = now.min(until).saturating_duration_since(from);
                    break;
                }
                std::thread::sleep((until - now).min(Duration::from_millis(10)));
            }
            if config.mode == Mode::Fanout {
                drain(config, shared, opened, &stopped);
            }
        }
        Mode::Idle => {
            println!("open {opened}/{}", config.connections);
            println!("ready");
            let _ = std::io::stdout().flush();
            let held_from = Instant::now();
            let until = config.hold.map(|hold| held_from + hold);
            while !stopped() && !released() && until.is_none_or(|until| Instant::now() < until) {
                std::thread::sleep(Duration::from_millis(10));
            }
            measured = held_from.elapsed();
        }
        Mode::ResumeStorm => {
            let settings = config.storm.as_ref().expect("resume-storm mode has its settings");
            let first = cli::Target {
                url: config.url.clone(),
                host: config.host.clone(),
                path: config.path.clone(),
                addr: config.addr,
            };
            let started = Instant::now();
            match storm::drive(settings, &first, shared, config.threads, &stopped) {
                Ok(report) => storm = Some(report),
                Err(fatal) => shared.set_fatal(fatal),
            }
            measured = started.elapsed();
        }
    }
    let published = shared.published.load(Ordering::SeqCst);
    Timing { connect, measured, opened, interrupted: signals::interrupted(), published, storm }
}

/// Fanout: once every thread has stopped publishing, waits (up to
/// [`DRAIN_TIMEOUT`]) for every member to have every message.
fn drain(config: &Config, shared: &Shared, members: usize, stopped: &dyn Fn() -> bool) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline && !stopped() {
        let quiet = shared.quiet.load(Ordering::SeqCst) == config.threads;
        let expected = shared.published.load(Ordering::SeqCst) * members as u64;
        if quiet && shared.delivered.load(Ordering::SeqCst) >= expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Fanout: how long the last deliveries may take after publishing stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

fn report(config: &Config, stats: &Stats, timing: &Timing) {
    let (human, json) = summary(config, stats, timing);
    if config.json {
        eprintln!("{human}");
        println!("{json}");
    } else {
        println!("{human}");
    }
}

/// The run's summary: a line for people, and the JSON object that
/// `--json` prints (read by the scripts in benches/).
fn summary(config: &Config, stats: &Stats, timing: &Timing) -> (String, Value) {
    let errors = stats.errors();
    let breakdown = if errors == 0 {
        String::new()
    } else {
        format!(
            " (connect {}, handshake {}, dropped {}, protocol {}, mismatches {})",
            stats.connect_errors, stats.handshake_errors, stats.dropped, stats.protocol_errors, stats.mismatches
        )
    };
    let cut_short = if timing.interrupted { " (interrupted)" } else { "" };
    match config.mode {
        Mode::Echo | Mode::Fanout => {
            let secs = timing.measured.as_secs_f64();
            let rate = if secs > 0.0 { stats.messages as f64 / secs } else { 0.0 };
            let lat = &stats.latency;
            let (p50, p99, p999, max) = (
                micros(lat.value_at_quantile(0.5)),
                micros(lat.value_at_quantile(0.99)),
                micros(lat.value_at_quantile(0.999)),
                micros(lat.max()),
            );
            let protocol = match (config.v2, config.app, config.socketio) {
                (true, _, _) => "emitws-v2",
                (false, true, _) => "emitws",
                (false, false, true) if config.socketio_binary => "socketio-binary",
                (false, false, true) => "socketio",
                (false, false, false) => "raw",
            };
            let (what, detail, extra) = match config.mode {
                Mode::Echo => {
                    ("msgs", format!("{} in flight", config.in_flight), json!({ "in_flight": config.in_flight }))
                }
                _ => {
                    let expected = timing.published * timing.opened as u64;
                    let missing = expected.saturating_sub(stats.delivered);
                    (
                        "deliveries",
                        format!(
                            "{} publishing; published {}, delivered {} of {expected} (missing {missing})",
                            config.publishers, timing.published, stats.delivered
                        ),
                        json!({
                            "publishers": config.publishers,
                            "published": timing.published,
                            "expected": expected,
                            "delivered": stats.delivered,
                            "missing": missing,
                        }),
                    )
                }
            };
            let human = format!(
                "{} {}: {} conns x {} B {} ({protocol}), {detail}, {} thread(s), {:.2} s: {} {what}, {:.0} {what}/s; \
                 latency us p50 {p50:.1} p99 {p99:.1} p99.9 {p999:.1} max {max:.1}; errors {errors}{breakdown}{cut_short}",
                config.mode.name(),
                config.url,
                timing.opened,
                config.payload,
                if config.text { "text" } else { "binary" },
                config.threads,
                secs,
                stats.messages,
                rate,
            );
            let mut json = json!({
                "mode": config.mode.name(),
                "url": config.url,
                "protocol": protocol,
                "connections": config.connections,
                "open": timing.opened,
                "threads": config.threads,
                "payload": config.payload,
                "text": config.text,
                "duration_s": decimals(secs, 3),
                "messages": stats.messages,
                "msgs_per_sec": decimals(rate, 1),
                "p50_us": decimals(p50, 1),
                "p99_us": decimals(p99, 1),
                "p999_us": decimals(p999, 1),
                "max_us": decimals(max, 1),
                "mean_us": decimals(lat.mean() / 1000.0, 1),
                "errors": errors,
                "mismatches": stats.mismatches,
            });
            // The mode's own keys.
            if let (Value::Object(json), Value::Object(extra)) = (&mut json, extra) {
                json.extend(extra);
            }
            (human, json)
        }
        Mode::ResumeStorm => storm_summary(config, stats, timing, &breakdown, cut_short),
        Mode::Idle => {
            let human = format!(
                "{} {}: {}/{} connections opened in {:.2} s, held {:.1} s, {} open at the end; \
                 errors {errors}{breakdown}{cut_short}",
                config.mode.name(),
                config.url,
                timing.opened,
                config.connections,
                timing.connect.as_secs_f64(),
                timing.measured.as_secs_f64(),
                stats.open_at_end,
            );
            let json = json!({
                "mode": config.mode.name(),
                "url": config.url,
                "connections": config.connections,
                "threads": config.threads,
                "opened": timing.opened,
                "connect_s": decimals(timing.connect.as_secs_f64(), 3),
                "held_s": decimals(timing.measured.as_secs_f64(), 3),
                "open_at_end": stats.open_at_end,
                "errors": errors,
            });
            (human, json)
        }
    }
}

/// Resume-storm's line and JSON object.
fn storm_summary(config: &Config, stats: &Stats, timing: &Timing, breakdown: &str, cut_short: &str) -> (String, Value) {
    let settings = config.storm.as_ref().expect("resume-storm mode has its settings");
    let empty = storm::Report::default();
    let report = timing.storm.as_ref().unwrap_or(&empty);
    let counted = &stats.storm;
    let resume_s = match (counted.first_dial, counted.last_reply) {
        (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let lat = &stats.latency;
    let millis = |nanos: u64| nanos as f64 / 1e6;
    let (p50, p99, max) = (millis(lat.value_at_quantile(0.5)), millis(lat.value_at_quantile(0.99)), millis(lat.max()));
    let expected_replayed = (report.sessions * settings.missed) as u64;
    let mib = |kib: Option<u64>| kib.map_or_else(|| "?".to_string(), |kib| format!("{:.1}", kib as f64 / 1024.0));
    let redis_total = report.redis_commands.as_ref().map(|commands| commands.iter().map(|(_, n)| n).sum::<u64>());
    let per_client = redis_total.map(|total| total as f64 / report.sessions.max(1) as f64);
    let redis = match (&report.redis_commands, redis_total, per_client) {
        (Some(commands), Some(total), Some(per_client)) => {
            let top: Vec<String> = commands.iter().take(6).map(|(name, n)| format!("{name} {n}")).collect();
            format!("; redis {total} commands, {per_client:.2} per client ({})", top.join(", "))
        }
        _ => String::new(),
    };
    let errors = stats.errors();
    let human = format!(
        "resume-storm {} -> {}: {} open (connected and joined in {:.3} s), {} sessions cut ({} rooms, {} broadcasts each before, {} while away{}); \
         {} of {} resumed with exactly what they missed in {resume_s:.3} s (first reconnect to last reply); \
         per client ms p50 {p50:.1} p99 {p99:.1} max {max:.1}; replayed {} of {expected_replayed}; \
         not resumed {}, not recovered {}, wrong replays {}; server RSS MiB before the resume {}, peak {}, CPU during the resume {} ms{redis}; \
         errors {errors}{breakdown}{cut_short}",
        config.url,
        settings.resume.url,
        timing.opened,
        timing.connect.as_secs_f64(),
        report.sessions,
        settings.rooms,
        settings.before,
        settings.missed,
        if report.before_missing > 0 {
            format!(", {} deliveries before the cut missing", report.before_missing)
        } else {
            String::new()
        },
        counted.resumed,
        report.sessions,
        counted.replayed,
        counted.not_resumed,
        counted.not_recovered,
        counted.wrong_replays,
        mib(report.rss_before_kib),
        mib(report.hwm_kib),
        report.cpu_during_resume.map_or_else(|| "?".to_string(), |cpu| cpu.as_millis().to_string()),
    );
    let json = json!({
        "mode": config.mode.name(),
        "url": config.url,
        "resume_url": settings.resume.url,
        "connections": config.connections,
        "open": timing.opened,
        "threads": config.threads,
        "rooms": settings.rooms,
        "before": settings.before,
        "missed": settings.missed,
        "killed": settings.kill.is_some(),
        "connect_s": decimals(timing.connect.as_secs_f64(), 3),
        "sessions": report.sessions,
        "before_missing": report.before_missing,
        "resumed": counted.resumed,
        "not_resumed": counted.not_resumed,
        "not_recovered": counted.not_recovered,
        "wrong_replays": counted.wrong_replays,
        "replayed": counted.replayed,
        "expected_replayed": expected_replayed,
        "resume_s": decimals(resume_s, 3),
        "p50_ms": decimals(p50, 2),
        "p99_ms": decimals(p99, 2),
        "max_ms": decimals(max, 2),
        "server_rss_before_kib": report.rss_before_kib,
        "server_hwm_kib": report.hwm_kib,
        "server_cpu_ms": report.cpu_during_resume.map(|cpu| cpu.as_millis() as u64),
        "redis_commands": redis_total,
        "redis_commands_per_client": per_client.map(|n| decimals(n, 2)),
        "redis_by_command": report.redis_commands.as_ref().map(|commands| {
            commands.iter().map(|(name, n)| (name.clone(), json!(n))).collect::<serde_json::Map<String, Value>>()
        }),
        "errors": errors,
    });
    (human, json)
}

/// `x` to `places` decimals: the value the summary has always printed, so
/// bench tables that show a JSON number as it comes keep their precision.
fn decimals(x: f64, places: usize) -> f64 {
    format!("{x:.places$}").parse().expect("a formatted f64 parses back")
}

/// The soft limit on open files, from /proc (Linux), if known and finite.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Whether stdin is /dev/null (or closed), as for a background job in a script.
fn stdin_is_dev_null() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata("/dev/stdin"), std::fs::metadata("/dev/null")) {
            (Ok(stdin), Ok(null)) => stdin.rdev() == null.rdev() && stdin.ino() == null.ino(),
            _ => true,
        }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// SIGINT / SIGTERM end the run early (results are still printed); a second one exits at once.
mod signals {
    use std::sync::atomic::{AtomicBool, Ordering};

    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    pub fn install() {
        for signal in [SIGINT, SIGTERM] {
            // The exit is registered first, so the first signal only arms it.
            flag::register_conditional_shutdown(signal, 130, &INTERRUPTED).expect("SIGINT and SIGTERM can be handled");
            flag::register(signal, &INTERRUPTED).expect("SIGINT and SIGTERM can be handled");
        }
    }

    pub fn interrupted() -> bool {
        INTERRUPTED.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(line: &str) -> Config {
        Config::new(Args::try_parse_from(["emitws-load"].into_iter().chain(line.split(' '))).unwrap()).unwrap()
    }

    fn keys(json: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// The keys and number formats that benches/*.sh read from `--json`.
    #[test]
    fn the_json_summary_keeps_what_the_bench_scripts_read() {
        let mut stats = Stats { messages: 3000, delivered: 4000, mismatches: 1, ..Stats::default() };
        for nanos in [1500, 1500, 2250] {
            stats.latency.record(nanos).unwrap();
        }
        let timing = Timing {
            connect: Duration::from_micros(4321),
            measured: Duration::from_millis(1500),
            opened: 4,
            interrupted: false,
            published: 1000,
            storm: None,
        };

        let (_, echo) = summary(&config("echo -c 4 -t 2 --url ws://127.0.0.1:1/\"q\\"), &stats, &timing);
        assert_eq!(echo.to_string().lines().count(), 1);
        assert_eq!(echo["url"], "ws://127.0.0.1:1/\"q\\");
        assert_eq!((&echo["mode"], &echo["protocol"], &echo["text"]), (&json!("echo"), &json!("raw"), &json!(false)));
        assert_eq!((&echo["connections"], &echo["open"], &echo["threads"]), (&json!(4), &json!(4), &json!(2)));
        assert_eq!((&echo["payload"], &echo["in_flight"], &echo["messages"]), (&json!(20), &json!(1), &json!(3000)));
        assert_eq!((&echo["duration_s"], &echo["msgs_per_sec"]), (&json!(1.5), &json!(2000.0)));
        assert_eq!((&echo["p50_us"], &echo["p99_us"], &echo["max_us"]), (&json!(1.5), &json!(2.3), &json!(2.3)));
        assert_eq!((&echo["mean_us"], &echo["errors"], &echo["mismatches"]), (&json!(1.8), &json!(1), &json!(1)));
        assert_eq!(
            keys(&echo),
            [
                "connections",
                "duration_s",
                "errors",
                "in_flight",
                "max_us",
                "mean_us",
                "messages",
                "mismatches",
                "mode",
                "msgs_per_sec",
                "open",
                "p50_us",
                "p999_us",
                "p99_us",
                "payload",
                "protocol",
                "text",
                "threads",
                "url"
            ]
        );

        let (_, fanout) = summary(&config("fanout -c 4 -p 2 --protocol emitws"), &stats, &timing);
        assert_eq!(
            (&fanout["mode"], &fanout["protocol"], &fanout["publishers"]),
            (&json!("fanout"), &json!("emitws"), &json!(2))
        );
        assert_eq!((&fanout["published"], &fanout["expected"]), (&json!(1000), &json!(4000)));
        assert_eq!((&fanout["delivered"], &fanout["missing"]), (&json!(4000), &json!(0)));
        let mut fanout_keys = keys(&echo);
        fanout_keys.retain(|key| *key != "in_flight");
        fanout_keys.extend(["delivered", "expected", "missing", "published", "publishers"]);
        fanout_keys.sort_unstable();
        assert_eq!(keys(&fanout), fanout_keys);

        let (_, idle) = summary(&config("idle -c 4"), &stats, &timing);
        assert_eq!((&idle["mode"], &idle["opened"], &idle["open_at_end"]), (&json!("idle"), &json!(4), &json!(0)));
        assert_eq!((&idle["connect_s"], &idle["held_s"], &idle["errors"]), (&json!(0.004), &json!(1.5), &json!(1)));
        assert_eq!(
            keys(&idle),
            ["connect_s", "connections", "errors", "held_s", "mode", "open_at_end", "opened", "threads", "url"]
        );
    }
}
