//! Command-line parsing (by hand) into a [`Config`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Fanout messages carry a publisher, a sequence number and a send time: 30 hex digits.
pub const FANOUT_MIN_PAYLOAD: usize = 30;
/// A fanout message's --payload unless given.
const FANOUT_PAYLOAD: usize = 32;

pub const HELP: &str = "\
emitws-load: WebSocket load generator (ws:// and wss://)

USAGE:
    emitws-load echo [OPTIONS]     ping-pong echo load; reports msgs/s and latency
    emitws-load fanout [OPTIONS]   room fan-out: every connection is a member, a few
                                   publish; reports deliveries/s, latency, completeness
    emitws-load idle [OPTIONS]     open connections and hold them (server memory per connection)

OPTIONS:
    -u, --url URL             server URL, ws:// or wss://HOST:PORT/PATH  [default: ws://127.0.0.1:9001/]
        --ca FILE             wss://: trust this PEM certificate (default: the webpki roots)
    -c, --connections N       connections                          [default: 100]
    -t, --threads T           client threads, each with its own event loop  [default: 1]
        --max-connecting N    connects + handshakes in flight, all threads  [default: 128]
        --connect-timeout S   time allowed for connect + handshake  [default: 10]
        --json                print a single JSON object on stdout (the human summary goes to stderr)
        --deflate             offer permessage-deflate (and fail if the server declines): messages
                              are compressed, compressed answers inflated
        --pattern P           payload bytes: `random` printable characters, or `json` event
                              objects (compressible, as real traffic is)  [default: random]
    -s, --payload BYTES       message payload size; k/m suffixes are KiB/MiB  [default: 20]
        --text                send text messages (default: binary)
        --protocol P          `raw` WebSocket messages, or `emitws` (the emitws.v1 event
                              protocol, offered as the subprotocol; see below)  [default: raw]
    -h, --help                this text

ECHO AND FANOUT OPTIONS:
    -k, --in-flight K         echo: messages in flight per connection  [default: 1]
    -p, --publishers P        fanout: connections that publish     [default: 10]
    -d, --duration S          measured time                        [default: 10]
    -w, --warmup S            warm-up before measuring (not counted) [default: 2]

IDLE OPTIONS:
        --hold S              hold the connections this long; without it, until
                              Ctrl-C / SIGTERM or EOF on stdin (stdin is ignored
                              when it is /dev/null, e.g. a background job)
                              With --deflate each connection first echoes one
                              --payload message, so that compression state a
                              server creates on first use is counted.

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
the connection counts as open. examples/app_echo is such a server.

Idle prints `open N/M` and then `ready` on stdout once every connection has
been tried, so a script can then read the server's memory use.

EXAMPLES:
    emitws-load echo --url ws://127.0.0.1:9001/ -c 100 -s 20 -k 1 -d 10 -w 2
    emitws-load echo -c 200 -s 16k -t 2 --json
    emitws-load echo --protocol emitws -c 100 -s 20
    emitws-load fanout --protocol emitws -c 1000 -p 10 -s 32
    emitws-load idle --url ws://127.0.0.1:9001/ -c 10000 --hold 30
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo,
    Fanout,
    Idle,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Fanout => "fanout",
            Mode::Idle => "idle",
        }
    }
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
    /// Fanout: how many connections publish.
    pub publishers: usize,
    pub hold: Option<Duration>,
    /// For wss://: the TLS roots and the server name to check.
    #[cfg(feature = "tls")]
    pub tls: Option<(emitws::tls::TlsConnector, String)>,
    /// The soft open-files limit, read at start (reading it needs a free descriptor).
    pub open_files_limit: Option<u64>,
}

/// What the command line asks for.
pub enum Parsed {
    Run(Box<Config>),
    Help,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut mode = None;
    let mut url = "ws://127.0.0.1:9001/".to_string();
    let mut connections = 100;
    let mut threads = 1;
    let mut max_connecting = 128;
    let mut connect_timeout = Duration::from_secs(10);
    let mut json = false;
    let mut payload = 20;
    let mut in_flight = 1;
    let mut duration = Duration::from_secs(10);
    let mut warmup = Duration::from_secs(2);
    let mut text = false;
    let mut deflate = false;
    let mut json_pattern = false;
    let mut app = false;
    let mut publishers = 10;
    let mut payload_given = false;
    let mut hold = None;
    let mut ca = None;
    let mut echo_only = Vec::new();
    let mut fanout_only = Vec::new();

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // `--flag=value` is accepted as well as `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "echo" if mode.is_none() => mode = Some(Mode::Echo),
            "fanout" if mode.is_none() => mode = Some(Mode::Fanout),
            "idle" if mode.is_none() => mode = Some(Mode::Idle),
            "-u" | "--url" => url = value(&flag)?,
            "-c" | "--connections" => connections = parse_count(&flag, &value(&flag)?)?,
            "-t" | "--threads" => threads = parse_count(&flag, &value(&flag)?)?,
            "--max-connecting" => max_connecting = parse_count(&flag, &value(&flag)?)?,
            "--connect-timeout" => connect_timeout = parse_duration(&flag, &value(&flag)?)?,
            "--json" => json = true,
            "-s" | "--payload" => {
                payload = parse_size(&flag, &value(&flag)?)?;
                payload_given = true;
            }
            "--deflate" => deflate = true,
            "--pattern" => {
                json_pattern = match value(&flag)?.as_str() {
                    "random" => false,
                    "json" => true,
                    other => return Err(format!("--pattern: `random` or `json`, not {other:?}")),
                }
            }
            "--protocol" => {
                app = match value(&flag)?.as_str() {
                    "raw" => false,
                    "emitws" => true,
                    other => return Err(format!("--protocol: `raw` or `emitws`, not {other:?}")),
                }
            }
            "-p" | "--publishers" => {
                publishers = parse_count(&flag, &value(&flag)?)?;
                fanout_only.push(flag.clone());
            }
            "-k" | "--in-flight" => {
                in_flight = parse_count(&flag, &value(&flag)?)?;
                echo_only.push(flag.clone());
            }
            "-d" | "--duration" => {
                duration = parse_duration(&flag, &value(&flag)?)?;
                echo_only.push(flag.clone());
            }
            "-w" | "--warmup" => {
                warmup = parse_duration(&flag, &value(&flag)?)?;
                echo_only.push(flag.clone());
            }
            "--text" => text = true,
            "--hold" => hold = Some(parse_duration(&flag, &value(&flag)?)?),
            "--ca" => ca = Some(value(&flag)?),
            _ if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ => return Err(format!("unexpected argument {arg:?} (the mode is `echo`, `fanout` or `idle`)")),
        }
        if inline.is_some() && matches!(flag.as_str(), "--json" | "--text" | "--deflate" | "--help") {
            return Err(format!("{flag} takes no value"));
        }
    }
    let mode = mode.ok_or("no mode given: `echo`, `fanout` or `idle` (see --help)")?;
    if mode == Mode::Idle {
        if let Some(flag) = echo_only.first() {
            return Err(format!("{flag} applies to echo mode only"));
        }
        if (payload_given || text) && !deflate {
            return Err("--payload and --text apply to echo mode, or to idle mode with --deflate".into());
        }
        if app && deflate {
            return Err("idle mode takes --protocol emitws or --deflate, not both".into());
        }
    } else if hold.is_some() {
        return Err("--hold applies to idle mode only (echo and fanout run for --warmup + --duration)".into());
    }
    if let Some(flag) = fanout_only.first().filter(|_| mode != Mode::Fanout) {
        return Err(format!("{flag} applies to fanout mode only"));
    }
    if publishers > u16::MAX as usize {
        return Err("--publishers: at most 65535".into());
    }
    if mode == Mode::Fanout {
        if in_flight != 1 {
            return Err("--in-flight applies to echo mode (a publisher waits for its own copy)".into());
        }
        if !payload_given {
            payload = FANOUT_PAYLOAD;
        }
        if payload < FANOUT_MIN_PAYLOAD {
            return Err(format!("fanout: --payload must be at least {FANOUT_MIN_PAYLOAD} bytes"));
        }
        if publishers > connections {
            return Err("--publishers: more than --connections".into());
        }
        if deflate {
            return Err("fanout does not compress (--deflate)".into());
        }
        text = true;
    }
    if app {
        text = true;
    }
    if payload > 64 << 20 {
        return Err("--payload: at most 64 MiB".into());
    }
    if in_flight > 65_536 {
        return Err("--in-flight: at most 65536".into());
    }
    if mode != Mode::Idle && duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    let (tls, host, port, path) = parse_url(&url)?;
    if ca.is_some() && !tls {
        return Err("--ca applies to wss:// URLs".into());
    }
    #[cfg(feature = "tls")]
    let tls = match (tls, ca) {
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
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let default_port = if url.to_ascii_lowercase().starts_with("wss://") { 443 } else { 80 };
    let host = if port == default_port { host } else { format!("{host}:{port}") };
    Ok(Parsed::Run(Box::new(Config {
        mode,
        url,
        host,
        path,
        addr,
        connections,
        threads: threads.min(connections),
        max_connecting,
        connect_timeout,
        json,
        payload,
        in_flight,
        duration,
        warmup,
        text,
        deflate,
        json_pattern,
        app,
        publishers,
        hold,
        #[cfg(feature = "tls")]
        tls,
        open_files_limit: None,
    })))
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

fn parse_count(flag: &str, value: &str) -> Result<usize, String> {
    match value.replace('_', "").parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: expected a positive whole number, got {value:?}")),
    }
}

/// Bytes, with an optional k/K/KiB/m/M/MiB suffix (powers of 1024).
fn parse_size(flag: &str, value: &str) -> Result<usize, String> {
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
        .ok_or_else(|| format!("{flag}: expected a size like 20, 16k or 1m, got {value:?}"))
}

/// Seconds (fractions allowed), or with an ms/s/m suffix.
fn parse_duration(flag: &str, value: &str) -> Result<Duration, String> {
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
        _ => Err(format!("{flag}: expected a time like 10, 2.5, 500ms or 1m, got {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_sizes_and_durations() {
        assert_eq!(parse_url("ws://127.0.0.1:9001/").unwrap(), (false, "127.0.0.1".into(), 9001, "/".into()));
        assert_eq!(parse_url("ws://localhost").unwrap(), (false, "localhost".into(), 80, "/".into()));
        assert_eq!(parse_url("ws://[::1]:80/a?b").unwrap(), (false, "[::1]".into(), 80, "/a?b".into()));
        assert_eq!(parse_url("127.0.0.1:1?x").unwrap(), (false, "127.0.0.1".into(), 1, "/?x".into()));
        assert_eq!(parse_url("wss://x/").unwrap(), (true, "x".into(), 443, "/".into()));
        assert!(parse_url("http://x/").is_err());
        assert_eq!(parse_size("-s", "16k").unwrap(), 16384);
        assert_eq!(parse_size("-s", "1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("-s", "20").unwrap(), 20);
        assert_eq!(parse_duration("-d", "500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("-d", "2.5").unwrap(), Duration::from_millis(2500));
        assert!(parse_duration("-d", "-1").is_err());
    }

    #[test]
    fn echo_only_flags_are_refused_in_idle_mode() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(parse(args("idle --payload 20")).is_err());
        assert!(parse(args("echo --hold 5")).is_err());
        assert!(parse(args("echo --publishers 5")).is_err());
        assert!(parse(args("fanout --in-flight 2")).is_err());
        assert!(parse(args("fanout --payload 29")).is_err());
        assert!(parse(args("idle --protocol emitws --deflate")).is_err());
        match parse(args("fanout -c 20 -p 3")) {
            Ok(Parsed::Run(config)) => {
                assert_eq!((config.publishers, config.payload, config.text), (3, 32, true));
            }
            _ => panic!("should parse"),
        }
        match parse(args("echo --protocol emitws")) {
            Ok(Parsed::Run(config)) => assert!(config.app && config.text, "emitws.v1 is text"),
            _ => panic!("should parse"),
        }
        match parse(args("echo --url=ws://127.0.0.1:1/ -c 5 -t 9 --text")) {
            Ok(Parsed::Run(config)) => assert_eq!((config.connections, config.threads, config.text), (5, 5, true)),
            _ => panic!("should parse"),
        }
    }
}
