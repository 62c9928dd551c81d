//! Where every connection of a link to Redis is opened ([`Connector`]): one
//! Redis by URL (`redis://`, `rediss://`), or the master of a Sentinel group
//! (`redis+sentinel://`, `rediss+sentinel://`), found again at every opening
//! so that a failover is followed by the link's threads as they reconnect;
//! or the masters of a Redis Cluster (`redis+cluster://`,
//! `rediss+cluster://`), reached one by one ([`Connector::open_node`]) where
//! the cluster's slot map ([`Connector::slot_map`]) says a key is served.
//!
//! Sentinel discovery is done here with two plain commands rather than the
//! redis crate's `sentinel` feature: each sentinel in turn is asked
//! `SENTINEL GET-MASTER-ADDR-BY-NAME`, and the address it gives is only
//! taken once the server there says `ROLE` master (a sentinel may still name
//! a master that was demoted, or not yet name the promoted one).
//!
//! A master demoted alive (`SENTINEL FAILOVER`, or a partition that heals)
//! may go on taking writes for seconds, until the sentinels reconfigure it.
//! So the writer also asks the sentinels at every heartbeat
//! ([`Connector::check_master`]); when the master moved, the connector's
//! [`generation`](Connector::generation) changes, and every thread drops the
//! connection it opened under an older one and reconnects.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{Client, Connection, ErrorKind, RedisError, RedisResult, ServerErrorKind, TlsCertificates, Value};

use super::error::ClusterError;
use super::options::RedisOptions;
use super::routed::RedisConn;
use super::router::Router;
use super::slotmap::{NodeAddr, SlotMap};

/// The port of a sentinel whose address in the URL names none.
const SENTINEL_PORT: u16 = 26379;

/// Opens the link's connections: every thread of a link and its queries
/// connect through the one connector.
pub(super) struct Connector {
    target: Target,
    /// The CA certificates (PEM) that TLS connections trust instead of
    /// Mozilla's roots, when [`RedisOptions::ca_file`] is set.
    ca: Option<Vec<u8>>,
    /// The master's address (Sentinel only) as last found.
    master: Mutex<Option<(String, u16)>>,
    /// The masters of the slot map last read (Redis Cluster only): asked
    /// before the URL's seeds, which may have left the cluster since.
    cluster_masters: Mutex<Vec<NodeAddr>>,
    /// Changes whenever the master is found at another address: connections
    /// opened under an older generation are to a master no longer.
    generation: AtomicU64,
}

enum Target {
    /// One Redis, as its URL says.
    Direct(Client),
    /// The master of a Sentinel group.
    Sentinel(Sentinel),
    /// The masters of a Redis Cluster.
    Cluster(ClusterSeeds),
}

/// How the servers of a Redis Cluster are reached.
struct ClusterSeeds {
    /// The nodes of the URL, asked for the slot map in turn.
    seeds: Vec<NodeAddr>,
    /// `redis` or `rediss`.
    scheme: &'static str,
    /// `user:password@` (still percent-encoded, as in the URL), or empty.
    credentials: String,
}

struct Sentinel {
    /// One client per sentinel, asked in the URL's order.
    sentinels: Vec<Client>,
    /// The master's name, as the sentinels monitor it.
    master: String,
    /// `redis` or `rediss`: how the master (and the sentinels) are reached.
    scheme: &'static str,
    /// `user:password@` (still percent-encoded, as in the URL), or empty.
    credentials: String,
    /// The database number on the master.
    db: i64,
}

impl Connector {
    /// A connector for `url` (see [`RedisLink::start`](super::RedisLink::start)
    /// for the accepted forms), trusting the CA file of `options` if set.
    ///
    /// # Errors
    ///
    /// [`ClusterError::BadUrl`] if `url` does not parse, or a CA file is
    /// given for a URL without TLS; [`ClusterError::CaFile`] if the CA file
    /// cannot be read or holds no certificate.
    pub(super) fn new(url: &str, options: &RedisOptions) -> Result<Connector, ClusterError> {
        let ca = options.ca_file.as_deref().map(read_ca).transpose()?;
        let tls = url.starts_with("rediss:") || url.starts_with("rediss+");
        if ca.is_some() && !tls {
            return Err(ClusterError::BadUrl(invalid("a CA file is only used with TLS", "use rediss://".into())));
        }
        if tls {
            // The redis crate builds its rustls configuration with the process's
            // default provider: ring, the one this crate is built with. Another
            // already installed (by the application) is kept.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let target = match parse_sentinel_url(url).map_err(ClusterError::BadUrl)? {
            None if url.starts_with("redis+cluster:") || url.starts_with("rediss+cluster:") => {
                Target::Cluster(parse_cluster_url(url).map_err(ClusterError::BadUrl)?)
            }
            None => Target::Direct(client(ca.as_deref(), url).map_err(ClusterError::BadUrl)?),
            Some((mut sentinel, hosts)) => {
                sentinel.sentinels = hosts
                    .iter()
                    .map(|host| client(ca.as_deref(), &format!("{}://{host}/", sentinel.scheme)))
                    .collect::<RedisResult<_>>()
                    .map_err(ClusterError::BadUrl)?;
                Target::Sentinel(sentinel)
            }
        };
        let (master, cluster_masters) = (Mutex::new(None), Mutex::new(Vec::new()));
        Ok(Connector { target, ca, master, cluster_masters, generation: AtomicU64::new(0) })
    }

    /// Whether the URL names a Redis Cluster: its connections are per
    /// master ([`open_node`](Self::open_node)), not [`open`](Self::open)ed.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// Opens a connection (to the master, for a Sentinel group) whose
    /// connecting, reads and writes each take at most `timeout`; with the
    /// [`generation`](Self::generation) it belongs to.
    ///
    /// For a Redis Cluster, the connection routes each command to its
    /// slot's master (see `super::routed`); the slot map is read first, so
    /// that a cluster that cannot be reached fails here as a server would.
    pub(super) fn open(self: &Arc<Self>, timeout: Duration) -> RedisResult<(RedisConn, u64)> {
        let (conn, generation) = match &self.target {
            Target::Direct(client) => (client.get_connection_with_timeout(timeout)?, 0),
            Target::Sentinel(sentinel) => self.open_master(sentinel, timeout)?,
            Target::Cluster(_) => {
                let mut router = Router::new(self.clone(), timeout);
                router.refresh()?;
                return Ok((RedisConn::Cluster(router), 0));
            }
        };
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        Ok((RedisConn::One(conn), generation))
    }

    /// The master's generation now: a connection [`open`](Self::open) gave
    /// another is to a former master, to drop.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Asks the sentinels where the master is now (Sentinel only; one
    /// answer is enough), changing the generation if it moved. During a
    /// failover the sentinels learn of it one by one, so an address other
    /// than the known one counts only once it answers as a master: one
    /// still naming the old master does not move the threads back.
    pub(super) fn check_master(&self, timeout: Duration) {
        if let Target::Sentinel(group) = &self.target {
            let Some(address) = group.sentinels.iter().find_map(|s| ask(s, &group.master, timeout).ok()) else {
                return;
            };
            let known = self.master.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
            if known.as_ref() == Some(&address) || self.connect_master(group, &address, timeout).is_ok() {
                self.found(address);
            }
        }
    }

    /// Notes where the master is; a new generation if it moved. The
    /// generation of a connection to that address.
    fn found(&self, address: (String, u16)) -> u64 {
        let mut master = self.master.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if master.as_ref().is_some_and(|known| *known != address) {
            self.generation.fetch_add(1, Ordering::SeqCst);
            tracing::info!(host = %address.0, port = address.1, "Redis master moved (Sentinel)");
        }
        *master = Some(address);
        self.generation.load(Ordering::SeqCst)
    }

    /// Asks the sentinels in turn where the master is, and connects to the
    /// first address that answers as a master. The last error if none does.
    fn open_master(&self, group: &Sentinel, timeout: Duration) -> RedisResult<(Connection, u64)> {
        let mut last = None;
        for sentinel in &group.sentinels {
            let found = ask(sentinel, &group.master, timeout).and_then(|address| {
                let conn = self.connect_master(group, &address, timeout)?;
                Ok((conn, self.found(address)))
            });
            match found {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| invalid("no sentinel", String::new())))
    }

    /// A connection to the server at `address`, if it answers as a master.
    fn connect_master(&self, group: &Sentinel, address: &NodeAddr, timeout: Duration) -> RedisResult<Connection> {
        let (scheme, credentials) = (group.scheme, &group.credentials[..]);
        let mut conn = self.connect_to(scheme, credentials, address, &group.db.to_string(), timeout)?;
        let role: Vec<Value> = redis::cmd("ROLE").query(&mut conn)?;
        match role.first() {
            Some(Value::BulkString(role)) if role == b"master" => Ok(conn),
            _ => Err(invalid("the server a sentinel named is not a master", format!("{}:{}", address.0, address.1))),
        }
    }

    /// A connection to the server at `address` (as `scheme`, with
    /// `credentials`; `path`: the URL's database and parameters) whose
    /// connecting, reads and writes each take at most `timeout`.
    fn connect_to(
        &self,
        scheme: &str,
        credentials: &str,
        (host, port): &NodeAddr,
        path: &str,
        timeout: Duration,
    ) -> RedisResult<Connection> {
        let host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
        let url = format!("{scheme}://{credentials}{host}:{port}/{path}");
        let conn = client(self.ca.as_deref(), &url)?.get_connection_with_timeout(timeout)?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        Ok(conn)
    }

    /// A connection to the Redis Cluster's server at `address` (a master of
    /// the [`slot_map`](Self::slot_map), or where a `MOVED`/`ASK` points),
    /// with the URL's TLS and credentials; connecting, reads and writes each
    /// take at most `timeout`. An error for a URL that is not a cluster's.
    pub(super) fn open_node(&self, address: &NodeAddr, timeout: Duration) -> RedisResult<Connection> {
        self.cluster_node(address, "0", timeout)
    }

    /// As [`open_node`](Self::open_node), speaking RESP3: pub/sub traffic
    /// then comes as push values, told apart from replies (the sharded
    /// subscriber reads with timeouts: see `super::sharded`).
    pub(super) fn open_node_resp3(&self, address: &NodeAddr, timeout: Duration) -> RedisResult<Connection> {
        self.cluster_node(address, "0?protocol=resp3", timeout)
    }

    fn cluster_node(&self, address: &NodeAddr, path: &str, timeout: Duration) -> RedisResult<Connection> {
        let Target::Cluster(cluster) = &self.target else {
            return Err(invalid("not a Redis Cluster URL", "use redis+cluster://".into()));
        };
        self.connect_to(cluster.scheme, &cluster.credentials, address, path, timeout)
    }

    /// The cluster's slot map now (`CLUSTER SLOTS`), from the masters of the
    /// last map read or else the URL's seeds, the first that answers with
    /// every slot served. The last error if none does (also for a URL that is
    /// not a cluster's).
    pub(super) fn slot_map(&self, timeout: Duration) -> RedisResult<SlotMap> {
        let Target::Cluster(cluster) = &self.target else {
            return Err(invalid("not a Redis Cluster URL", "use redis+cluster://".into()));
        };
        let known = self.cluster_masters.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let mut last = None;
        for address in known.iter().chain(cluster.seeds.iter().filter(|seed| !known.contains(seed))) {
            let map = self.open_node(address, timeout).and_then(|mut conn| {
                let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)?;
                SlotMap::from_cluster_slots(&reply, address)
            });
            match map {
                Ok(map) if map.covers_all() => {
                    let masters = map.masters().into_iter().cloned().collect();
                    *self.cluster_masters.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = masters;
                    return Ok(map);
                }
                Ok(_) => {
                    let at = format!("{}:{}", address.0, address.1);
                    last = Some(RedisError::from((
                        ErrorKind::Server(ServerErrorKind::ClusterDown),
                        "some slots have no master",
                        at,
                    )));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| invalid("no Redis Cluster node", String::new())))
    }
}

/// A client for `url`, trusting the CA certificates `ca` (PEM) if given.
fn client(ca: Option<&[u8]>, url: &str) -> RedisResult<Client> {
    match ca {
        Some(pem) => Client::build_with_tls(url, TlsCertificates { client_tls: None, root_cert: Some(pem.to_vec()) }),
        None => Client::open(url),
    }
}

/// The master's address as one sentinel knows it.
fn ask(sentinel: &Client, master: &str, timeout: Duration) -> RedisResult<(String, u16)> {
    let mut conn = sentinel.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    let address: Option<(String, u16)> =
        redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(master).query(&mut conn)?;
    address.ok_or_else(|| invalid("the sentinel monitors no master of that name", master.into()))
}

/// The CA certificates of `path` (PEM), checked now so that a wrong path
/// fails the start rather than every connection.
fn read_ca(path: &Path) -> Result<Vec<u8>, ClusterError> {
    let failed = |error| ClusterError::CaFile { path: path.to_owned(), error };
    let pem = fs::read(path).map_err(failed)?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(failed(std::io::Error::new(std::io::ErrorKind::InvalidData, "no PEM certificate in the file")));
    }
    Ok(pem)
}

/// A `redis+sentinel://` or `rediss+sentinel://` URL's parts, its
/// sentinels' clients still to make (from the `host:port`s returned beside,
/// a port 26379 added where none is given); None for any other scheme.
fn parse_sentinel_url(url: &str) -> RedisResult<Option<(Sentinel, Vec<String>)>> {
    let Some((scheme, rest)) = split_sentinel_scheme(url) else { return Ok(None) };
    let bad = |why: &str| {
        invalid(
            "bad Sentinel URL",
            format!("{why}: expected {scheme}+sentinel://[user:password@]host:port[,host:port...]/MASTER[/DB]"),
        )
    };
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
    let (credentials, hosts) = split_credentials(authority);
    let hosts = hosts
        .split(',')
        .map(|host| {
            let port_given =
                host.rsplit_once(':').is_some_and(|(name, port)| !name.ends_with(':') && port.parse::<u16>().is_ok());
            match (host.is_empty(), port_given) {
                (true, _) => Err(bad("an empty sentinel address")),
                (false, true) => Ok(host.to_owned()),
                (false, false) => Ok(format!("{host}:{SENTINEL_PORT}")),
            }
        })
        .collect::<RedisResult<_>>()?;
    let (master, db) = match path.trim_end_matches('/').split_once('/') {
        Some((master, db)) => (master, db.parse().map_err(|_| bad("the database is not a number"))?),
        None => (path.trim_end_matches('/'), 0),
    };
    if master.is_empty() || master.contains(['?', '#']) {
        return Err(bad("no master name"));
    }
    Ok(Some((Sentinel { sentinels: Vec::new(), master: master.into(), scheme, credentials, db }, hosts)))
}

/// A `redis+cluster://` or `rediss+cluster://` URL's parts: its seed nodes
/// (`host:port` each, the port required: cluster nodes have no usual port)
/// and credentials. A cluster has only database 0: no other is accepted.
fn parse_cluster_url(url: &str) -> RedisResult<ClusterSeeds> {
    let (scheme, rest) = match url.strip_prefix("redis+cluster://") {
        Some(rest) => ("redis", rest),
        None => ("rediss", url.strip_prefix("rediss+cluster://").unwrap_or(url)),
    };
    let bad = |why: String| {
        invalid(
            "bad Redis Cluster URL",
            format!("{why}: expected {scheme}+cluster://[user:password@]host:port[,host:port...][/]"),
        )
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() && path != "0" {
        return Err(bad(format!("a Redis Cluster has only database 0, not {path:?}")));
    }
    let (credentials, hosts) = split_credentials(authority);
    let seeds = hosts
        .split(',')
        .map(|host| {
            let (name, port) = host.rsplit_once(':').ok_or_else(|| bad(format!("no port in {host:?}")))?;
            let port = port.parse::<u16>().map_err(|_| bad(format!("bad port in {host:?}")))?;
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() {
                return Err(bad(format!("no host in {host:?}")));
            }
            Ok((name.to_owned(), port))
        })
        .collect::<RedisResult<_>>()?;
    Ok(ClusterSeeds { seeds, scheme, credentials })
}

/// A URL's authority split into its credentials (`user:password@`, still
/// percent-encoded, or empty) and its comma-separated hosts.
fn split_credentials(authority: &str) -> (String, &str) {
    match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), authority),
    }
}

/// The data scheme (`redis` or `rediss`) and what follows `+sentinel://`.
fn split_sentinel_scheme(url: &str) -> Option<(&'static str, &str)> {
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        Some(("redis", rest))
    } else {
        url.strip_prefix("rediss+sentinel://").map(|rest| ("rediss", rest))
    }
}

fn invalid(what: &'static str, detail: String) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, what, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse_into_sentinels_master_and_database() {
        let url = "redis+sentinel://u:p%40ss@10.0.0.1:26380,10.0.0.2,[::1]:26381/mymaster/3";
        let (sentinel, hosts) = parse_sentinel_url(url).unwrap().unwrap();
        let parts = (sentinel.scheme, &sentinel.credentials[..], &sentinel.master[..], sentinel.db);
        assert_eq!(parts, ("redis", "u:p%40ss@", "mymaster", 3));
        assert_eq!(hosts, ["10.0.0.1:26380", "10.0.0.2:26379", "[::1]:26381"]);
        let (tls, _) = parse_sentinel_url("rediss+sentinel://h/m").unwrap().unwrap();
        assert_eq!((tls.scheme, &tls.master[..], tls.db, &tls.credentials[..]), ("rediss", "m", 0, ""));
        assert!(parse_sentinel_url("redis://h/0").unwrap().is_none());
    }

    #[test]
    fn bad_sentinel_urls_are_refused_with_the_reason() {
        for (url, why) in [
            ("redis+sentinel://h1:26379", "no master name"),
            ("redis+sentinel://h1:26379/", "no master name"),
            ("redis+sentinel://h1/m/x", "not a number"),
        ] {
            let error = parse_sentinel_url(url).err().unwrap_or_else(|| panic!("{url} accepted"));
            assert!(error.to_string().contains(why), "{url}: {error}");
        }
        let error = parse_sentinel_url("redis+sentinel://h1,,h2/m").err().expect("an empty address refused");
        assert!(error.to_string().contains("an empty sentinel address"), "{error}");
        let options = RedisOptions::default();
        assert!(matches!(Connector::new("redis+sentinel://h1,/m", &options), Err(ClusterError::BadUrl(_))));
    }

    #[test]
    fn cluster_urls_parse_into_seeds_and_credentials() {
        let cluster = parse_cluster_url("redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001/").unwrap();
        assert_eq!((cluster.scheme, &cluster.credentials[..]), ("redis", "u:p%40ss@"));
        assert_eq!(cluster.seeds, [("10.0.0.1".to_owned(), 7000), ("::1".to_owned(), 7001)]);
        let tls = parse_cluster_url("rediss+cluster://h:7000").unwrap();
        assert_eq!((tls.scheme, &tls.credentials[..], tls.seeds.len()), ("rediss", "", 1));
        for (url, why) in [
            ("redis+cluster://h1", "no port"),
            ("redis+cluster://h1:7000,h2:x/", "bad port"),
            ("redis+cluster://h1:7000,,h2:7001/", "no port"),
            ("redis+cluster://:7000/", "no host"),
            ("redis+cluster://h1:7000/3", "only database 0"),
        ] {
            let error = parse_cluster_url(url).err().unwrap_or_else(|| panic!("{url} accepted"));
            assert!(error.to_string().contains(why), "{url}: {error}");
        }
        let options = RedisOptions::default();
        assert!(Connector::new("redis+cluster://h1:7000/", &options).unwrap().is_cluster());
        assert!(!Connector::new("redis://h1:7000/", &options).unwrap().is_cluster());
        assert!(matches!(Connector::new("redis+cluster://h1/", &options), Err(ClusterError::BadUrl(_))));
    }

    #[test]
    fn a_ca_file_must_exist_hold_a_certificate_and_come_with_tls() {
        let missing = RedisOptions::default().ca_file("/nonexistent/ca.pem");
        assert!(matches!(Connector::new("rediss://h/", &missing), Err(ClusterError::CaFile { .. })));
        let not_pem = RedisOptions::default().ca_file("Cargo.toml");
        match Connector::new("rediss://h/", &not_pem) {
            Err(ClusterError::CaFile { error, .. }) => assert_eq!(error.kind(), std::io::ErrorKind::InvalidData),
            other => panic!("{:?}", other.err()),
        }
        let dir = std::env::temp_dir().join(format!("emitws-ca-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        fs::write(&ca, rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap().cert.pem()).unwrap();
        let options = RedisOptions::default().ca_file(&ca);
        assert!(Connector::new("rediss://h/", &options).is_ok());
        assert!(Connector::new("rediss+sentinel://h1,h2/m", &options).is_ok());
        assert!(Connector::new("rediss+cluster://h1:7000/", &options).is_ok());
        assert!(matches!(Connector::new("redis+cluster://h1:7000/", &options), Err(ClusterError::BadUrl(_))));
        assert!(matches!(Connector::new("redis://h/", &options), Err(ClusterError::BadUrl(_))));
        let _ = fs::remove_dir_all(&dir);
    }
}
