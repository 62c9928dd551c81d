//! The command line (clap) into a [`Config`]: the options, their defaults,
//! and the rules that tie them to a mode.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Fanout messages carry a publisher, a sequence number and a send time: 30 hex digits.
pub const FANOUT_MIN_PAYLOAD: usize = 30;
/// A fanout message's --payload unless given.
const FANOUT_PAYLOAD: usize = 32;

/// What each mode does and measures, after the options in `--help`.
const DETAILS: &str = "\
Times are in seconds (fractions allowed) or take a suffix: 500ms, 10s, 2m.

Echo sends each message masked with a fresh key, waits for the echo (K at a
time per connection), checks it byte for byte and records the round trip.
Messages/s counts echoes completed during the measured time over all
connections. Errors (failed connects and handshakes, dropped connections,
protocol errors, mismatched echoes) make the exit status 1; a fatal setup
problem (e.g. the open-files limit) makes it 2.

Fanout: the first P connections publish text messages `[0,\"/pub\",DATA]`,
DATA a JSON string of --payload characters (at least 30; the default here is 32)
holding the publisher, a sequence number and the send time. Each publisher
sends its next message as soon as its own copy comes back. The server must
deliver every message, unchanged, to every connection (the sender included).
Every member checks that each publisher's messages arrive in order with none
missing; deliveries/s and latency (publisher's send to member's receive)
count deliveries during the measured time. At the end publishing stops and
the tool waits (up to 2 s) for the last deliveries, then reports how many of
the expected deliveries (members x messages published) never arrived.

--protocol emitws speaks emitws.v1 (text frames): echo sends the request
`[1,ID,\"/echo\",DATA]` (DATA: a JSON string of --payload characters) and expects
exactly `[2,ID,DATA]` back; fanout and idle first send `[1,1,\"/join\"]` on
each connection and wait for its reply `[2,1,...]` (joining a room) before
the connection counts as open. examples/app_echo is such a server. With
--any-order echo takes each reply by its ID, in whatever order it comes (as
replies from async handlers do: examples/async_echo --mode async).

--protocol emitws-v2 (echo only) offers emitws.v2 and sends each request as a
binary envelope (PROTOCOL.md §10): 01, the id in LEB128, 05, \"/echo\", then
--payload bytes; it expects the binary reply 02, the id, the same bytes.

Idle prints `open N/M` and then `ready` on stdout once every connection has
been tried, so a script can then read the server's memory use.

Resume-storm (PROTOCOL.md §13; the server is emitws-cluster-node with
--history '#storm-*' --rate 0): every connection (`?user=storm-N`) keeps its
@ready resume token and joins one of --rooms history rooms (`#storm-K`); a
publisher (`?user=storm-publisher`) broadcasts --before messages to each room
(`/say`, as requests) and every member must get them. Then every connection
is cut at once: dropped with SO_LINGER 0 (the server sees a reset, 1006, and
keeps the session), or with --kill PID the node they are on is SIGKILLed.
The publisher (on --resume-url) broadcasts --missed messages to each room;
after --away all connections reconnect with `emitws_resume=1` and send
`@resume {token, rooms: {room: {epoch, offset}}}` as their first request.
Each must come back `resumed: true`, its room and direct messages
`recovered: true`, having been sent exactly the missed broadcasts, in
order, with contiguous offsets up to the reply's. Reported: the time from
the first reconnect to the last resume reply, per-client resume times, how
many resumed fully, the server's memory (--server-pid: VmRSS before the
resume, VmHWM at the end) and the Redis commands the resume took
(--redis: INFO commandstats before and after, per client). Anything short
of every client resumed with exactly what it missed makes the exit status 1.

EXAMPLES:
    emitws-load echo --url ws://127.0.0.1:9001/ -c 100 -s 20 -k 1 -d 10 -w 2
    emitws-load echo -c 200 -s 16k -t 2 --json
    emitws-load echo --protocol emitws -c 100 -s 20
    emitws-load fanout --protocol emitws -c 1000 -p 10 -s 32
    emitws-load idle --url ws://127.0.0.1:9001/ -c 10000 --hold 30
    emitws-load resume-storm -c 10000 --rooms 10 --before 5 --missed 10 --server-pid 1234
";

/// emitws-load: WebSocket load generator (ws:// and wss://)
#[derive(Parser, Debug)]
#[command(name = "emitws-load", after_help = DETAILS, args_override_self = true)]
pub struct Args {
    /// What to run
    #[arg(value_enum)]
    mode: Mode,
    /// Server URL, ws:// or wss://HOST:PORT/PATH
    #[arg(short, long, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// wss://: trust this PEM certificate (default: the webpki roots)
    #[arg(long, value_name = "FILE")]
    ca: Option<String>,
    /// Connections
    #[arg(short, long, value_name = "N", default_value = "100", value_parser = count)]
    connections: usize,
    /// Client threads, each with its own event loop
    #[arg(short, long, value_name = "T", default_value = "1", value_parser = count)]
    threads: usize,
    /// Connects + handshakes in flight, all threads
    #[arg(long, value_name = "N", default_value = "128", value_parser = count)]
    max_connecting: usize,
    /// Time allowed for connect + handshake
    #[arg(long, value_name = "S", default_value = "10", value_parser = duration)]
    connect_timeout: Duration,
    /// Print a single JSON object on stdout (the human summary goes to stderr)
    #[arg(long)]
    json: bool,
    /// Offer permessage-deflate (and fail if the server declines): messages are compressed, compressed
    /// answers inflated
    #[arg(long)]
    deflate: bool,
    /// Payload bytes: `random` printable characters, or `json` event objects (compressible, as real
    /// traffic is)
    #[arg(long, value_enum, default_value = "random")]
    pattern: Pattern,
    /// Message payload size; k/m suffixes are KiB/MiB [default: 20; fanout: 32]
    #[arg(short = 's', long, value_name = "BYTES", value_parser = size)]
    payload: Option<usize>,
    /// Send text messages (default: binary)
    #[arg(long)]
    text: bool,
    /// `raw` WebSocket messages, or `emitws` (the emitws.v1 event protocol, offered as the subprotocol)
    #[arg(long, value_enum, default_value = "raw")]
    protocol: Protocol,
    /// Echo with --protocol emitws: take replies by their id in any order (async handlers answer
    /// requests in flight in the order they finish)
    #[arg(long)]
    any_order: bool,
    /// Echo: messages in flight per connection [default: 1]
    #[arg(short = 'k', long, value_name = "K", value_parser = count)]
    in_flight: Option<usize>,
    /// Fanout: connections that publish [default: 10]
    #[arg(short, long, value_name = "P", value_parser = count)]
    publishers: Option<usize>,
    /// Echo and fanout: measured time [default: 10]
    #[arg(short, long, value_name = "S", value_parser = duration)]
    duration: Option<Duration>,
    /// Echo and fanout: warm-up before measuring (not counted) [default: 2]
    #[arg(short, long, value_name = "S", value_parser = duration)]
    warmup: Option<Duration>,
    /// Idle: hold the connections this long; without it, until Ctrl-C / SIGTERM or EOF on stdin (stdin is
    /// ignored when it is /dev/null, e.g. a background job). With --deflate each connection first echoes
    /// one --payload message, so that compression state a server creates on first use is counted.
    #[arg(long, value_name = "S", value_parser = duration)]
    hold: Option<Duration>,
    /// Resume-storm: history rooms the connections are spread over [default: 10]
    #[arg(long, value_name = "K", value_parser = count)]
    rooms: Option<usize>,
    /// Resume-storm: broadcasts to each room before the cut [default: 5]
    #[arg(long, value_name = "M")]
    before: Option<usize>,
    /// Resume-storm: broadcasts to each room while the clients are away [default: 10]
    #[arg(long, value_name = "M")]
    missed: Option<usize>,
    /// Resume-storm: where the clients reconnect (another node of the cluster) [default: --url]
    #[arg(long, value_name = "URL")]
    resume_url: Option<String>,
    /// Resume-storm: cut the connections by SIGKILLing this process (the node they are on)
    #[arg(long, value_name = "PID")]
    kill: Option<u32>,
    /// Resume-storm: time between the cut (and the missed broadcasts) and the reconnect [default: 0]
    #[arg(long, value_name = "S", value_parser = duration)]
    away: Option<Duration>,
    /// Resume-storm: the server process whose memory is reported (VmRSS, VmHWM)
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Resume-storm: count this Redis's commands during the resume (redis://HOST:PORT)
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

/// What the tool does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Ping-pong echo load; reports msgs/s and latency
    Echo,
    /// Room fan-out: every connection is a member, a few publish; reports deliveries/s, latency, completeness
    Fanout,
    /// Open connections and hold them (server memory per connection)
    Idle,
    /// Cut every connection at once and resume them all (PROTOCOL.md §13); reports the time to all recovered
    ResumeStorm,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Fanout => "fanout",
            Mode::Idle => "idle",
            Mode::ResumeStorm => "resume-storm",
        }
    }
}

/// What message payloads hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pattern {
    /// Printable characters, pseudo-random.
    Random,
    /// Event objects, compressible.
    Json,
}

/// What travels over the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// Plain WebSocket messages.
    Raw,
    /// emitws.v1 requests, replies and rooms.
    Emitws,
    /// emitws.v2 binary requests and replies (echo mode only).
    EmitwsV2,
    /// Socket.IO v5 over Engine.IO v4's WebSocket transport: `echo` events
    /// with an ack (echo mode), or connected sockets (idle mode); the URL's
    /// path is the Engine.IO one, e.g. `/socket.io/?EIO=4&transport=websocket`.
    /// For measuring Socket.IO servers (benches/peers' echo-socketioxide).
    Socketio,
    /// Socket.IO with the payload as a binary attachment (echo mode):
    /// `451-ID["bin",{"_placeholder":true,"num":0}]` and a binary frame,
    /// acknowledged `461-ID[{"_placeholder":true,"num":0}]` and a binary frame.
    SocketioBinary,
}

#[derive(Debug)]
pub struct Config {
    pub mode: Mode,
    pub url: String,
    /// The Host header value.
    pub host: String,
    /// The request target.
    pub path: String,
    pub addr: SocketAddr,
    pub connections: usize,
    pub threads: usize,
    pub max_connecting: usize,
    pub connect_timeout: Duration,
    pub json: bool,
    pub payload: usize,
    pub in_flight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub text: bool,
    pub deflate: bool,
    pub json_pattern: bool,
    /// Speak emitws.v1 rather than raw messages.
    pub app: bool,
    /// Echo with emitws.v1: replies are taken by their id, in any order.
    pub any_order: bool,
    /// Speak emitws.v2: echo requests and replies are binary envelopes.
    pub v2: bool,
    /// Speak Socket.IO: `42ID["echo","PAYLOAD"]`, acknowledged `43ID["PAYLOAD"]`.
    pub socketio: bool,
    /// Socket.IO with the payload as a binary attachment (see [`Protocol::SocketioBinary`]).
    pub socketio_binary: bool,
    /// Fanout: how many connections publish.
    pub publishers: usize,
    pub hold: Option<Duration>,
    /// For wss://: the TLS roots and the server name to check.
    #[cfg(feature = "tls")]
    pub tls: Option<(emitws::tls::TlsConnector, String)>,
    /// The soft open-files limit, read at start (reading it needs a free descriptor).
    pub open_files_limit: Option<u64>,
    /// Resume-storm's settings.
    pub storm: Option<Storm>,
}

/// What a resume-storm run does besides connecting (see the help's details).
#[derive(Debug)]
pub struct Storm {
    pub rooms: usize,
    /// Broadcasts to each room before the cut, and while the clients are away.
    pub before: usize,
    pub missed: usize,
    /// Where the clients reconnect.
    pub resume: Target,
    /// Cut by SIGKILLing this process rather than dropping the sockets.
    pub kill: Option<u32>,
    pub away: Duration,
    pub server_pid: Option<u32>,
    pub redis: Option<SocketAddr>,
}

/// A ws:// server: its URL, the Host header, the request target and the address.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    pub host: String,
    pub path: String,
    pub addr: SocketAddr,
}

impl Target {
    /// `ws://HOST:PORT/PATH`, resolved.
    ///
    /// # Errors
    /// A message naming the URL that does not parse or resolve, or is wss://.
    fn ws(url: &str) -> Result<Target, String> {
        let (tls, host, port, path) = parse_url(url)?;
        if tls {
            return Err(format!("resume-storm speaks ws:// only, not {url:?}"));
        }
        let addr = resolve(&host, port)?;
        let host = if port == 80 { host } else { format!("{host}:{port}") };
        Ok(Target { url: url.to_string(), host, path, addr })
    }
}

/// The first address of `host` (IPv6 in brackets) and `port`.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

impl Config {
    /// Checks the options against each other and the mode, fills in the
    /// mode's defaults and resolves the URL.
    ///
    /// # Errors
    /// A message naming the option that does not fit, or the URL that does not resolve.
    pub fn new(args: Args) -> Result<Config, String> {
        let mode = args.mode;
        let storm = storm_settings(&args)?;
        let v2 = args.protocol == Protocol::EmitwsV2;
        if v2 && mode != Mode::Echo {
            return Err("--protocol emitws-v2 applies to echo mode only".into());
        }
        if v2 && (args.text || args.deflate) {
            return Err("--protocol emitws-v2 sends binary envelopes, without --text or --deflate".into());
        }
        let socketio_binary = args.protocol == Protocol::SocketioBinary;
        if socketio_binary && (mode != Mode::Echo || args.text) {
            return Err("--protocol socketio-binary applies to echo mode, without --text".into());
        }
        let socketio = args.protocol == Protocol::Socketio || socketio_binary;
        if socketio && !matches!(mode, Mode::Echo | Mode::Idle) {
            return Err("--protocol socketio applies to echo and idle modes only".into());
        }
        if socketio && args.deflate {
            return Err("--protocol socketio does not compress (--deflate)".into());
        }
        let app = args.protocol == Protocol::Emitws || v2 || storm.is_some();
        let deflate = args.deflate;
        let mut text = args.text;
        if mode == Mode::Idle {
            let echo_only = [
                (args.in_flight.is_some(), "--in-flight"),
                (args.duration.is_some(), "--duration"),
                (args.warmup.is_some(), "--warmup"),
            ];
            if let Some((_, flag)) = echo_only.iter().find(|(given, _)| *given) {
                return Err(format!("{flag} applies to echo mode only"));
            }
            if (args.payload.is_some() || text) && !deflate {
                return Err("--payload and --text apply to echo mode, or to idle mode with --deflate".into());
            }
            if app && deflate {
                return Err("idle mode takes --protocol emitws or --deflate, not both".into());
            }
        } else if args.hold.is_some() {
            return Err("--hold applies to idle mode only (echo and fanout run for --warmup + --duration)".into());
        }
        if args.publishers.is_some() && mode != Mode::Fanout {
            return Err("--publishers applies to fanout mode only".into());
        }
        let publishers = args.publishers.unwrap_or(10);
        if publishers > u16::MAX as usize {
            return Err("--publishers: at most 65535".into());
        }
        let in_flight = args.in_flight.unwrap_or(1);
        if args.any_order && (mode != Mode::Echo || !(app || socketio) || v2) {
            return Err(
                "--any-order applies to echo mode with --protocol emitws, socketio or socketio-binary only".into()
            );
        }
        if args.any_order && in_flight > crate::client::PATTERN_SLACK {
            return Err(format!("--any-order: at most {} in flight", crate::client::PATTERN_SLACK));
        }
        let mut payload = args.payload.unwrap_or(20);
        if mode == Mode::Fanout {
            if in_flight != 1 {
                return Err("--in-flight applies to echo mode (a publisher waits for its own copy)".into());
            }
            payload = args.payload.unwrap_or(FANOUT_PAYLOAD);
            if payload < FANOUT_MIN_PAYLOAD {
                return Err(format!("fanout: --payload must be at least {FANOUT_MIN_PAYLOAD} bytes"));
            }
            if publishers > args.connections {
                return Err("--publishers: more than --connections".into());
            }
            if deflate {
                return Err("fanout does not compress (--deflate)".into());
            }
            text = true;
        }
        text |= (app && !v2) || (socketio && !socketio_binary);
        if payload > 64 << 20 {
            return Err("--payload: at most 64 MiB".into());
        }
        if in_flight > 65_536 {
            return Err("--in-flight: at most 65536".into());
        }
        let duration = args.duration.unwrap_or(Duration::from_secs(10));
        if mode != Mode::Idle && duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        let url = args.url;
        let (tls, host, port, path) = parse_url(&url)?;
        if args.ca.is_some() && !tls {
            return Err("--ca applies to wss:// URLs".into());
        }
        #[cfg(feature = "tls")]
        let tls = match (tls, args.ca) {
            (false, _) => None,
            (true, None) => Some(emitws::tls::TlsConnector::webpki_roots()),
            (true, Some(file)) => {
                let pem = std::fs::read(&file).map_err(|e| format!("--ca {file}: {e}"))?;
                Some(emitws::tls::TlsConnector::with_root_pem(&pem).map_err(|e| format!("--ca {file}: {e}"))?)
            }
        }
        .map(|connector| (connector, host.trim_start_matches('[').trim_end_matches(']').to_string()));
        #[cfg(not(feature = "tls"))]
        if tls {
            return Err("wss:// needs the `tls` feature (on by default)".into());
        }
        let addr = resolve(&host, port)?;
        let default_port = if url.to_ascii_lowercase().starts_with("wss://") { 443 } else { 80 };
        let host = if port == default_port { host } else { format!("{host}:{port}") };
        Ok(Config {
            mode,
            url,
            host,
            path,
            addr,
            connections: args.connections,
            threads: args.threads.min(args.connections),
            max_connecting: args.max_connecting,
            connect_timeout: args.connect_timeout,
            json: args.json,
            payload,
            in_flight,
            duration,
            warmup: args.warmup.unwrap_or(Duration::from_secs(2)),
            text,
            deflate,
            json_pattern: args.pattern == Pattern::Json,
            app,
            any_order: args.any_order,
            v2,
            socketio,
            socketio_binary,
            publishers,
            hold: args.hold,
            #[cfg(feature = "tls")]
            tls,
            open_files_limit: None,
            storm,
        })
    }
}

/// Resume-storm's settings in that mode, checked; in the others, an error
/// if one of its options was given.
fn storm_settings(args: &Args) -> Result<Option<Storm>, String> {
    if args.mode != Mode::ResumeStorm {
        let storm_only = [
            (args.rooms.is_some(), "--rooms"),
            (args.before.is_some(), "--before"),
            (args.missed.is_some(), "--missed"),
            (args.resume_url.is_some(), "--resume-url"),
            (args.kill.is_some(), "--kill"),
            (args.away.is_some(), "--away"),
            (args.server_pid.is_some(), "--server-pid"),
            (args.redis.is_some(), "--redis"),
        ];
        return match storm_only.iter().find(|(given, _)| *given) {
            Some((_, flag)) => Err(format!("{flag} applies to resume-storm mode only")),
            None => Ok(None),
        };
    }
    let others = [
        (args.in_flight.is_some(), "--in-flight"),
        (args.duration.is_some(), "--duration"),
        (args.warmup.is_some(), "--warmup"),
        (args.hold.is_some(), "--hold"),
        (args.payload.is_some(), "--payload"),
        (args.deflate, "--deflate"),
        (args.ca.is_some(), "--ca"),
    ];
    if let Some((_, flag)) = others.iter().find(|(given, _)| *given) {
        return Err(format!("{flag} does not apply to resume-storm mode"));
    }
    Target::ws(&args.url)?;
    let redis = match &args.redis {
        Some(url) => {
            let rest = url.strip_prefix("redis://").ok_or_else(|| format!("--redis {url:?}: redis://HOST:PORT"))?;
            let authority = rest.split('/').next().unwrap_or_default();
            let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "6379"));
            let port = port.parse().map_err(|_| format!("--redis {url:?}: bad port"))?;
            Some(resolve(host, port)?)
        }
        None => None,
    };
    Ok(Some(Storm {
        rooms: args.rooms.unwrap_or(10),
        before: args.before.unwrap_or(5),
        missed: args.missed.unwrap_or(10),
        resume: Target::ws(args.resume_url.as_deref().unwrap_or(&args.url))?,
        kill: args.kill,
        away: args.away.unwrap_or(Duration::ZERO),
        server_pid: args.server_pid,
        redis,
    }))
}

/// Splits `ws[s]://host[:port][/path]` into TLS or not, host (IPv6 keeps
/// its brackets), port and path.
fn parse_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let (tls, rest) = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ws") => (false, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("wss") => (true, rest),
        Some((scheme, _)) => return Err(format!("unsupported scheme {scheme:?} in {url:?}; use ws:// or wss://")),
        None => (false, url),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or_else(|| format!("bad IPv6 host in {url:?}"))?;
        (format!("[{inside}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("no host in {url:?}"));
    }
    let port = match port {
        Some(port) => port.parse().map_err(|_| format!("bad port {port:?} in {url:?}"))?,
        None if tls => 443,
        None => 80,
    };
    Ok((tls, host, port, path))
}

/// A positive whole number (`_` separators allowed).
fn count(value: &str) -> Result<usize, String> {
    match value.replace('_', "").parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a positive whole number".into()),
    }
}

/// Bytes, with an optional k/K/KiB/m/M/MiB suffix (powers of 1024).
fn size(value: &str) -> Result<usize, String> {
    let lower = value.to_ascii_lowercase();
    let (digits, scale) = if let Some(n) = lower.strip_suffix("kib").or(lower.strip_suffix('k')) {
        (n, 1 << 10)
    } else if let Some(n) = lower.strip_suffix("mib").or(lower.strip_suffix('m')) {
        (n, 1 << 20)
    } else {
        (lower.strip_suffix('b').unwrap_or(&lower), 1)
    };
    digits
        .replace('_', "")
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| "expected a size like 20, 16k or 1m".into())
}

/// Seconds (fractions allowed), or with an ms/s/m suffix.
fn duration(value: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60.0)
    } else {
        (value, 1.0)
    };
    match number.parse::<f64>() {
        Ok(n) if n >= 0.0 && (n * scale) < 1e9 => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err("expected a time like 10, 2.5, 500ms or 1m".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Config, String> {
        let args =
            Args::try_parse_from(["emitws-load"].into_iter().chain(line.split(' '))).map_err(|e| e.to_string())?;
        Config::new(args)
    }

    #[test]
    fn urls_sizes_and_durations() {
        assert_eq!(parse_url("ws://127.0.0.1:9001/").unwrap(), (false, "127.0.0.1".into(), 9001, "/".into()));
        assert_eq!(parse_url("ws://localhost").unwrap(), (false, "localhost".into(), 80, "/".into()));
        assert_eq!(parse_url("ws://[::1]:80/a?b").unwrap(), (false, "[::1]".into(), 80, "/a?b".into()));
        assert_eq!(parse_url("127.0.0.1:1?x").unwrap(), (false, "127.0.0.1".into(), 1, "/?x".into()));
        assert_eq!(parse_url("wss://x/").unwrap(), (true, "x".into(), 443, "/".into()));
        assert!(parse_url("http://x/").is_err());
        assert_eq!(size("16k").unwrap(), 16384);
        assert_eq!(size("1MiB").unwrap(), 1 << 20);
        assert_eq!(size("20").unwrap(), 20);
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("2.5").unwrap(), Duration::from_millis(2500));
        assert!(duration("-1").is_err());
        assert_eq!(count("10_000").unwrap(), 10_000);
        assert!(count("0").is_err());
    }

    #[test]
    fn options_that_do_not_fit_the_mode_are_refused() {
        assert!(parse("idle --payload 20").is_err());
        assert!(parse("idle --duration 5").is_err());
        assert!(parse("echo --hold 5").is_err());
        assert!(parse("echo --publishers 5").is_err());
        assert!(parse("fanout --in-flight 2").is_err());
        assert!(parse("fanout --payload 29").is_err());
        assert!(parse("idle --protocol emitws --deflate").is_err());
        assert!(parse("echo --protocol json").is_err());
        assert!(parse("--connections 5").is_err(), "no mode");
        let config = parse("fanout -c 20 -p 3").unwrap();
        assert_eq!((config.publishers, config.payload, config.text), (3, 32, true));
        assert!(parse("echo --any-order").is_err());
        assert!(parse("fanout --protocol emitws --any-order").is_err());
        assert!(parse("echo --protocol emitws --any-order").unwrap().any_order);
        let config = parse("echo --protocol emitws").unwrap();
        assert!(config.app && config.text, "emitws.v1 is text");
        let config = parse("echo --protocol emitws-v2 -s 16k").unwrap();
        assert!(config.app && config.v2 && !config.text, "emitws.v2 echoes binary envelopes");
        assert!(parse("fanout --protocol emitws-v2").is_err(), "echo only");
        assert!(parse("echo --protocol emitws-v2 --text").is_err());
        assert!(parse("echo --protocol emitws-v2 --any-order").is_err(), "binary replies are taken in order");
        let config = parse("echo --protocol socketio --any-order").unwrap();
        assert!(config.socketio && config.text && !config.app && config.any_order, "Socket.IO packets are text");
        let config = parse("idle --protocol socketio").unwrap();
        assert!(config.socketio && !config.socketio_binary);
        let config = parse("echo --protocol socketio-binary -s 16k").unwrap();
        assert!(config.socketio && config.socketio_binary && !config.text, "attachments are binary frames");
        assert!(parse("echo --protocol socketio-binary --text").is_err());
        assert!(parse("idle --protocol socketio-binary").is_err(), "echo only");
        assert!(parse("fanout --protocol socketio").is_err());
        assert!(parse("echo --protocol socketio --deflate").is_err());
        let config = parse("echo --url=ws://127.0.0.1:1/ -c 5 -t 9 --text").unwrap();
        assert_eq!((config.connections, config.threads, config.text), (5, 5, true));
        // The mode may come after options, and a repeated option keeps its last value (as scripts expect).
        let config = parse("-c 7 echo --duration 1 -d 500ms -s 16k").unwrap();
        assert_eq!((config.mode, config.duration, config.payload), (Mode::Echo, Duration::from_millis(500), 16384));
        assert_eq!((config.in_flight, config.warmup, config.publishers), (1, Duration::from_secs(2), 10));
    }

    #[test]
    fn resume_storm_options_fit_that_mode_only() {
        assert!(parse("echo --rooms 3").is_err());
        assert!(parse("idle --kill 12").is_err());
        assert!(parse("resume-storm --duration 5").is_err());
        assert!(parse("resume-storm --deflate").is_err());
        assert!(parse("resume-storm --url wss://127.0.0.1:1/").is_err(), "ws:// only");
        assert!(parse("resume-storm --resume-url wss://127.0.0.1:1/").is_err());
        assert!(parse("resume-storm --redis http://127.0.0.1:1/").is_err());
        let config = parse("resume-storm -c 20 --url ws://127.0.0.1:1/x").unwrap();
        let storm = config.storm.as_ref().unwrap();
        assert!(config.app && config.text, "emitws.v1 is text");
        assert_eq!((storm.rooms, storm.before, storm.missed, storm.away), (10, 5, 10, Duration::ZERO));
        assert_eq!((storm.resume.addr, storm.resume.path.as_str()), (config.addr, "/x"), "resumes where it connected");
        let config =
            parse("resume-storm --resume-url ws://127.0.0.1:2/ --redis redis://127.0.0.1:3/0 --kill 7").unwrap();
        let storm = config.storm.unwrap();
        assert_eq!((storm.resume.addr.port(), storm.redis.map(|addr| addr.port()), storm.kill), (2, Some(3), Some(7)));
    }
}
