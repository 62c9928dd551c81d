//! Resume-storm mode (PROTOCOL.md §13): what a connection keeps across the
//! cut, the checks of what its resume brings back, and the main thread's
//! part of the run: the publisher, the phases, and what the server and
//! Redis spent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use emitws::client::app::{AppClient, AppOptions};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::{Storm, Target};
use crate::client::Shared;

/// The phases of a run, in order, as [`Shared::phase`] holds them. Each
/// client thread acts on a phase once, then counts itself in
/// [`Shared::acked`].
pub mod phase {
    /// Connecting, joining, and receiving the broadcasts made before the cut.
    pub const JOINED: u8 = 0;
    /// The cut: every socket is dropped (with --kill: lost as the node dies).
    pub const CUT: u8 = 1;
    /// The node has been killed (--kill): sockets not yet seen lost are dropped.
    pub const AWAY: u8 = 2;
    /// Every session reconnects and resumes; a thread acks once all of its
    /// resumes are answered or have failed.
    pub const RESUME: u8 = 3;
}

/// The `/say` requests are answered once the broadcast is made.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broadcasts before the cut may take to reach every member.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a killed node may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// The text of the broadcasts made before the cut and while away: `before 3`.
pub const BEFORE: &str = "before";
pub const MISSED: &str = "missed";

/// The history room of connection `number`.
pub fn room(number: usize, rooms: usize) -> String {
    format!("#storm-{}", number % rooms)
}

/// `path` with `params` added to its query.
pub fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    let mut path = path.to_string();
    for (name, value) in params {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(name);
        path.push('=');
        path.push_str(value);
    }
    path
}

/// The user a connection identifies as (emitws-cluster-node takes `?user=`).
pub fn user(number: usize) -> String {
    format!("storm-{number}")
}

/// What a connection keeps across the cut, as a client of PROTOCOL §13 does.
#[derive(Debug)]
pub struct Session {
    /// The connection's number over all threads.
    pub number: usize,
    /// The latest `@ready`'s resume token (empty until it arrives).
    pub token: String,
    pub room: String,
    /// The room's epoch and the highest offset received (none: nothing received yet).
    pub position: Option<(String, u64)>,
    /// Broadcasts received in this phase (before the cut; replayed on resume).
    pub received: u64,
}

impl Session {
    pub fn new(number: usize, rooms: usize) -> Session {
        Session { number, token: String::new(), room: room(number, rooms), position: None, received: 0 }
    }

    /// Takes the token of a `@ready`.
    ///
    /// # Errors
    /// When the `@ready` carries no token (the server keeps no sessions).
    pub fn ready(&mut self, message: &str) -> Result<(), String> {
        let ready: (u8, String, Value) = serde_json::from_str(message).map_err(|e| format!("@ready: {e}"))?;
        let token = ready.2.get("resume").and_then(Value::as_str);
        let token = token.ok_or_else(|| format!("@ready without a resume token (is resume off?): {message}"))?;
        self.token = token.to_string();
        Ok(())
    }

    /// A broadcast to the room: it must be the room's next (same epoch, the
    /// next offset; any, for the first one seen) and carry the next text
    /// (`{phase} {n}`, n counting from 1). Takes its epoch and offset.
    ///
    /// # Errors
    /// What is wrong with it; the session's position is then unchanged.
    pub fn broadcast(&mut self, message: &str, phase: &str) -> Result<(), String> {
        let Ok(Delivery(0, _, said, meta)) = serde_json::from_str(message) else {
            return Err(format!("not a room broadcast with its offset: {message}"));
        };
        let next = self.received + 1;
        if said.text.strip_prefix(phase).and_then(|n| n.strip_prefix(' ')) != Some(&next.to_string()) {
            return Err(format!("{}: expected \"{phase} {next}\", got {message}", self.room));
        }
        if meta.room != self.room {
            return Err(format!("a broadcast to {} reached a member of {}: {message}", meta.room, self.room));
        }
        if let Some((epoch, offset)) = &self.position {
            if meta.epoch != epoch || meta.offset != offset + 1 {
                return Err(format!("{}: expected offset {} of epoch {epoch}, got {message}", self.room, offset + 1));
            }
        }
        self.position = Some((meta.epoch.to_string(), meta.offset));
        self.received = next;
        Ok(())
    }

    /// The `@resume` request (PROTOCOL §13 step 2), id 1.
    pub fn resume_request(&self) -> String {
        let rooms = match &self.position {
            Some((epoch, offset)) => json!({ &self.room: { "epoch": epoch, "offset": offset } }),
            None => json!({}),
        };
        json!([1, 1, "@resume", { "token": self.token, "rooms": rooms }]).to_string()
    }

    /// The reply to `@resume`, after the replay: the session must be
    /// resumed, its room and direct messages recovered at the position the
    /// replay left it, and exactly `missed` broadcasts replayed.
    pub fn resumed(&self, message: &str, missed: usize) -> Outcome {
        let reply = match serde_json::from_str::<(u8, u64, Value)>(message) {
            Ok((2, 1, reply)) => reply,
            _ => return Outcome::NotResumed(format!("the answer to @resume: {message}")),
        };
        if reply["resumed"] != true {
            return Outcome::NotResumed(format!("not resumed: {message}"));
        }
        let room = &reply["rooms"][&self.room];
        let position = self.position.as_ref().map(|(epoch, offset)| (json!(epoch), json!(offset)));
        if room["recovered"] != true || reply["direct"]["recovered"] != true {
            return Outcome::NotRecovered(format!("not recovered: {message}"));
        }
        if position.is_some_and(|(epoch, offset)| room["epoch"] != epoch || room["offset"] != offset) {
            return Outcome::WrongReplay(format!("{}: the replay stopped short of {message}", self.room));
        }
        if self.received != missed as u64 {
            let got = self.received;
            return Outcome::WrongReplay(format!("{}: {got} broadcasts replayed, {missed} were missed", self.room));
        }
        Outcome::Resumed
    }
}

/// How a resume ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Resumed, recovered, and exactly the missed broadcasts were replayed.
    Resumed,
    /// Not resumed (an error reply, or `resumed: false`).
    NotResumed(String),
    /// Resumed, but the room or the direct messages say `recovered: false`.
    NotRecovered(String),
    /// Resumed and recovered, but the replay was not exactly what was missed.
    WrongReplay(String),
}

/// `[0, event, {"text"}, {"room","offset","epoch"}]`.
#[derive(Deserialize)]
struct Delivery<'a>(u8, IgnoredAny, #[serde(borrow)] Said<'a>, #[serde(borrow)] Meta<'a>);

#[derive(Deserialize)]
struct Said<'a> {
    text: &'a str,
}

#[derive(Deserialize)]
struct Meta<'a> {
    room: &'a str,
    offset: u64,
    epoch: &'a str,
}

/// What a thread counted of its resumes.
#[derive(Debug, Default)]
pub struct StormStats {
    /// Resumed with exactly what they missed.
    pub resumed: u64,
    pub not_resumed: u64,
    pub not_recovered: u64,
    pub wrong_replays: u64,
    /// Broadcasts replayed, all resumes.
    pub replayed: u64,
    /// The first reconnect's start and the last resume reply.
    pub first_dial: Option<Instant>,
    pub last_reply: Option<Instant>,
}

impl StormStats {
    pub fn merge(&mut self, other: &StormStats) {
        self.resumed += other.resumed;
        self.not_resumed += other.not_resumed;
        self.not_recovered += other.not_recovered;
        self.wrong_replays += other.wrong_replays;
        self.replayed += other.replayed;
        self.first_dial = self.first_dial.into_iter().chain(other.first_dial).min();
        self.last_reply = self.last_reply.into_iter().chain(other.last_reply).max();
    }
}

/// What the main thread saw of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Sessions cut (connections open at the cut).
    pub sessions: usize,
    /// Deliveries of the broadcasts before the cut that never arrived.
    pub before_missing: u64,
    /// The server's resident memory right before the reconnect, and its peak at the end (KiB).
    pub rss_before_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    /// The server's CPU time (user + system) from the reconnect until every resume was answered.
    pub cpu_during_resume: Option<Duration>,
    /// Redis commands during the resume, by command.
    pub redis_commands: Option<Vec<(String, u64)>>,
}

/// The main thread's part once every connection is open: broadcasts, cut,
/// broadcasts while away, then the reconnect, until every thread has its
/// resumes answered.
///
/// # Errors
/// A step that makes the run meaningless: the publisher cannot connect or
/// publish, the node cannot be killed, Redis cannot be read.
pub fn drive(
    storm: &Storm,
    first: &Target,
    shared: &Shared,
    threads: usize,
    stopped: &dyn Fn() -> bool,
) -> Result<Report, String> {
    let mut report = Report::default();
    let opened = shared.open.load(Ordering::SeqCst);
    let publisher = connect_publisher(first)?;
    publish(&publisher, storm.rooms, storm.before, BEFORE)?;
    let expected = (opened * storm.before) as u64;
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while shared.delivered.load(Ordering::SeqCst) < expected && Instant::now() < deadline && !stopped() {
        std::thread::sleep(Duration::from_millis(1));
    }
    report.before_missing = expected.saturating_sub(shared.delivered.load(Ordering::SeqCst));
    publisher.close();
    enter(shared, phase::CUT, threads, stopped);
    if let Some(pid) = storm.kill {
        kill(pid)?;
    }
    enter(shared, phase::AWAY, threads, stopped);
    report.sessions = shared.sessions.load(Ordering::SeqCst);
    let publisher = connect_publisher(&storm.resume)?;
    publish(&publisher, storm.rooms, storm.missed, MISSED)?;
    publisher.close();
    std::thread::sleep(storm.away);
    let commands_before = storm.redis.map(command_stats).transpose()?;
    report.rss_before_kib = storm.server_pid.and_then(|pid| status_kib(pid, "VmRSS:"));
    let cpu_before = storm.server_pid.and_then(cpu_time);
    if !stopped() {
        enter(shared, phase::RESUME, threads, stopped);
    }
    report.hwm_kib = storm.server_pid.and_then(|pid| status_kib(pid, "VmHWM:"));
    let cpu_after = storm.server_pid.and_then(cpu_time);
    report.cpu_during_resume = cpu_before.zip(cpu_after).map(|(before, after)| after.saturating_sub(before));
    if let (Some(addr), Some(before)) = (storm.redis, commands_before) {
        report.redis_commands = Some(commands_between(&before, &command_stats(addr)?));
    }
    Ok(report)
}

/// Moves the client threads to `phase` and waits until each has acted on it
/// (for the resume, until their resumes are all answered or failed).
fn enter(shared: &Shared, phase: u8, threads: usize, stopped: &dyn Fn() -> bool) {
    shared.phase.store(phase, Ordering::SeqCst);
    let mut next_progress = Instant::now() + Duration::from_secs(1);
    while shared.acked.load(Ordering::SeqCst) < threads * phase as usize && !stopped() {
        std::thread::sleep(Duration::from_millis(1));
        if phase == phase::RESUME && Instant::now() >= next_progress {
            next_progress += Duration::from_secs(1);
            let answered = shared.answered.load(Ordering::Relaxed);
            eprintln!("resuming: {answered} of {} answered", shared.sessions.load(Ordering::Relaxed));
        }
    }
}

fn connect_publisher(target: &Target) -> Result<AppClient, String> {
    let url = format!("ws://{}{}", target.host, with_query(&target.path, &[("user", "storm-publisher")]));
    AppClient::connect(&url, AppOptions::default().reconnect(false))
        .map_err(|e| format!("the publisher cannot connect to {url}: {e}"))
}

/// Broadcasts `count` messages (`{text} 1`, `{text} 2`, …) to each of the
/// rooms, as `/say` requests (answered once broadcast), and waits for every
/// answer.
fn publish(publisher: &AppClient, rooms: usize, count: usize, text: &str) -> Result<(), String> {
    let pending: Vec<_> = (1..=count)
        .flat_map(|n| (0..rooms).map(move |k| (n, k)))
        .map(|(n, k)| {
            let say = json!({ "to": room(k, rooms), "text": format!("{text} {n}") });
            publisher.request_nowait("/say", say, PUBLISH_TIMEOUT)
        })
        .collect();
    for request in pending {
        request.wait().map_err(|e| format!("the publisher's /say failed: {e}"))?;
    }
    Ok(())
}

/// SIGKILLs `pid` and waits until it is gone (or a zombie): its sockets are closed then.
fn kill(pid: u32) -> Result<(), String> {
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    if !status.as_ref().is_ok_and(|status| status.success()) {
        return Err(format!("--kill {pid}: kill failed ({status:?})"));
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the command name, which is in parentheses.
            Ok(stat) if !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return Ok(()),
        }
    }
    Err(format!("--kill {pid}: still running after {KILL_TIMEOUT:?}"))
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
}

/// The CPU time (user + system) process `pid` has used so far, from
/// `/proc/PID/stat` (in clock ticks, 100 per second on Linux).
fn cpu_time(pid: u32) -> Option<Duration> {
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (in parentheses): state is the 3rd field, utime the 14th, stime the 15th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// Redis's calls per command so far (`INFO commandstats`).
fn command_stats(addr: SocketAddr) -> Result<Vec<(String, u64)>, String> {
    let failed = |e: &dyn std::fmt::Display| format!("--redis {addr}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| failed(&e))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| failed(&e))?;
    stream.write_all(b"INFO commandstats\r\n").map_err(|e| failed(&e))?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    // A bulk string: `$LEN\r\n`, LEN bytes, `\r\n`.
    let body = loop {
        let n = stream.read(&mut chunk).map_err(|e| failed(&e))?;
        if n == 0 {
            return Err(failed(&"closed before the whole INFO reply"));
        }
        reply.extend_from_slice(&chunk[..n]);
        let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else { continue };
        let len = std::str::from_utf8(&reply[..end]).ok().and_then(|head| head.strip_prefix('$')?.parse().ok());
        let len: usize =
            len.ok_or_else(|| failed(&format!("not an INFO reply: {:?}", String::from_utf8_lossy(&reply))))?;
        if reply.len() >= end + 2 + len {
            break String::from_utf8_lossy(&reply[end + 2..end + 2 + len]).into_owned();
        }
    };
    Ok(body
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|stat| stat.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_string(), calls))
        })
        .collect())
}

/// The calls per command from `before` to `after`, most first, without
/// INFO itself (the first snapshot's INFO is counted in the second).
fn commands_between(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut delta: Vec<(String, u64)> = after
        .iter()
        .filter(|(name, _)| name != "info")
        .map(|(name, calls)| {
            let was = before.iter().find(|(old, _)| old == name).map_or(0, |(_, calls)| *calls);
            (name.clone(), calls.saturating_sub(was))
        })
        .filter(|(_, calls)| *calls > 0)
        .collect();
    delta.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    delta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let mut session = Session::new(3, 2);
        session.ready(r#"[0,"@ready",{"socket":"0-1","user":"storm-3","resume":"tok"}]"#).unwrap();
        session
    }

    #[test]
    fn broadcasts_must_come_in_order_and_resumes_bring_back_exactly_what_was_missed() {
        let mut s = session();
        assert_eq!((s.room.as_str(), s.token.as_str()), ("#storm-1", "tok"));
        let said = |text: &str, offset: u64| {
            format!(
                r##"[0,"/said",{{"from":"p","text":"{text}"}},{{"room":"#storm-1","offset":{offset},"epoch":"e1"}}]"##
            )
        };
        s.broadcast(&said("before 1", 7), BEFORE).unwrap();
        s.broadcast(&said("before 2", 8), BEFORE).unwrap();
        assert!(s.broadcast(&said("before 3", 10), BEFORE).is_err(), "a gap in the offsets");
        assert!(s.broadcast(&said("before 4", 9), BEFORE).is_err(), "a text out of order");
        assert!(s.broadcast(&said("before 3", 9).replace("#storm-1\"", "#storm-0\""), BEFORE).is_err());
        assert!(s.broadcast(r#"[0,"/said",{"from":"p","text":"before 3"}]"#, BEFORE).is_err(), "no offset");
        assert_eq!(s.position, Some(("e1".to_string(), 8)));
        assert_eq!(
            serde_json::from_str::<Value>(&s.resume_request()).unwrap(),
            json!([1, 1, "@resume", {"token": "tok", "rooms": {"#storm-1": {"epoch": "e1", "offset": 8}}}])
        );

        s.received = 0;
        s.broadcast(&said("missed 1", 9), MISSED).unwrap();
        let reply = |offset: u64, recovered: bool| {
            format!(
                r##"[2,1,{{"resumed":true,"socket":"0-1","rooms":{{"#storm-1":{{"recovered":{recovered},"epoch":"e1","offset":{offset}}}}},"direct":{{"recovered":true}}}}]"##
            )
        };
        assert!(matches!(s.resumed(&reply(9, true), 2), Outcome::WrongReplay(_)), "one of two replayed");
        assert!(matches!(s.resumed(&reply(10, true), 1), Outcome::WrongReplay(_)), "the replay stopped short");
        assert!(matches!(s.resumed(&reply(9, false), 1), Outcome::NotRecovered(_)));
        assert!(matches!(s.resumed(r#"[2,1,{"resumed":false}]"#, 1), Outcome::NotResumed(_)));
        assert!(matches!(s.resumed(r#"[3,1,{"code":"bad_request"}]"#, 1), Outcome::NotResumed(_)));
        assert_eq!(s.resumed(&reply(9, true), 1), Outcome::Resumed);
    }

    #[test]
    fn a_session_without_a_token_is_an_error_and_queries_are_added() {
        let mut s = Session::new(0, 1);
        assert!(s.ready(r#"[0,"@ready",{"socket":"0-1","user":null}]"#).is_err());
        assert_eq!(json!([1, 1, "@resume", {"token": "", "rooms": {}}]).to_string(), s.resume_request());
        assert_eq!(with_query("/", &[("user", "a"), ("emitws_resume", "1")]), "/?user=a&emitws_resume=1");
        assert_eq!(with_query("/x?k=v", &[("user", "a")]), "/x?k=v&user=a");
    }

    #[test]
    fn redis_commands_are_counted_between_two_snapshots() {
        let before = [("xadd".to_string(), 5), ("info".to_string(), 9)];
        let after = [("xadd".to_string(), 7), ("info".to_string(), 10), ("eval".to_string(), 4)];
        assert_eq!(commands_between(&before, &after), [("eval".to_string(), 4), ("xadd".to_string(), 2)]);
    }
}
