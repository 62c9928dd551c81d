//! Redis as production runs it, started by a test on 127.0.0.1 and killed on
//! drop: a TLS redis-server with a CA and a server certificate made here
//! (rcgen), and a Sentinel group (a master, a replica, three sentinels
//! with writable config files in a directory of their own). Include after
//! `common/redis.rs` (as module `redis_server`).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::redis_server::{free_port, wait_for, Redis};

/// A directory of the test's own under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("emitws-{what}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a temp dir");
        TempDir(dir)
    }

    /// Writes `contents` to `name` in the directory; its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A CA and a certificate it signed for 127.0.0.1 and localhost, in PEM files.
pub struct Certificates {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certificates {
    /// A new CA (`ca.pem`) and server certificate (`server.pem`, `server.key`) in `dir`.
    pub fn make(dir: &TempDir) -> Certificates {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "emitws test CA");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
        let key = rcgen::KeyPair::generate().expect("a server key");
        let cert = params.signed_by(&key, &issuer).expect("the server certificate");
        Certificates {
            ca: dir.write("ca.pem", &ca.pem()),
            cert: dir.write("server.pem", &cert.pem()),
            key: dir.write("server.key", &key.serialize_pem()),
        }
    }
}

/// A redis-server that takes only TLS connections, with a certificate its
/// own CA signed, the CA file beside it.
pub struct TlsRedis {
    pub server: Redis,
    pub certificates: Certificates,
    _dir: TempDir,
}

impl TlsRedis {
    /// None when the Redis tests are left out (see `Redis::start`).
    pub fn start() -> Option<TlsRedis> {
        let dir = TempDir::new("tls-redis");
        let certificates = Certificates::make(&dir);
        let port = free_port();
        let path = |p: &Path| p.to_str().expect("a UTF-8 temp path").to_owned();
        let (cert, key, ca) = (path(&certificates.cert), path(&certificates.key), path(&certificates.ca));
        let port_text = port.to_string();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port_text,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ];
        let server = Redis::start_with(port, &args)?;
        Some(TlsRedis { server, certificates, _dir: dir })
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.server.port)
    }
}

/// A Sentinel group: a master, one replica, three sentinels with quorum 2,
/// down-after 1000 ms.
pub struct SentinelGroup {
    pub name: String,
    /// The first master; None once killed.
    pub master: Option<Redis>,
    pub replica: Redis,
    pub sentinels: Vec<Redis>,
    _dir: TempDir,
}

impl SentinelGroup {
    /// Starts the group and waits (bounded) until the replica is in sync and
    /// every sentinel knows the replica and the two other sentinels, so
    /// that a failover can happen. None when the Redis tests are left out.
    pub fn start(name: &str) -> Option<SentinelGroup> {
        // Every file the servers write (a replica's synced RDB, the
        // sentinels' rewritten configs) goes to this directory.
        let dir = TempDir::new("sentinel");
        let dir_text = dir.0.to_str().expect("a UTF-8 temp path").to_owned();
        let port = free_port();
        let master = Redis::start_with(port, &["--port", &port.to_string(), "--dir", &dir_text])?;
        let replica_of = master.port.to_string();
        let port = free_port();
        let replica = Redis::start_with(
            port,
            &[
                "--port",
                &port.to_string(),
                "--dir",
                &dir_text,
                "--dbfilename",
                "replica.rdb",
                "--replicaof",
                "127.0.0.1",
                &replica_of,
            ],
        )?;
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.write(
                    &format!("sentinel-{i}.conf"),
                    &format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n",
                        dir.0.display(),
                        master.port
                    ),
                );
                Redis::start_with(port, &[conf.to_str().expect("a UTF-8 temp path"), "--sentinel"])
            })
            .collect::<Option<Vec<_>>>()?;
        let group = SentinelGroup { name: name.into(), master: Some(master), replica, sentinels, _dir: dir };
        wait_for(Duration::from_secs(30), || {
            let synced = info(group.replica.port, "replication").contains("master_link_status:up");
            synced
                && group.sentinels.iter().all(|s| {
                    let state = sentinel_master(s.port, &group.name);
                    state.get("num-other-sentinels").is_some_and(|n| n == "2")
                        && state.get("num-slaves").is_some_and(|n| n == "1")
                })
        });
        Some(group)
    }

    /// `redis+sentinel://` with every sentinel, for the master.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), self.name)
    }

    /// The master's port as the first sentinel that answers says.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let mut conn = connect(s.port)?;
            let address: Option<(String, u16)> =
                redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(&self.name).query(&mut conn).ok()?;
            address.map(|(_, port)| port)
        })
    }

    /// Waits (bounded by `within`) until the sentinels name a master other
    /// than port `old` and it says it is one; its port.
    pub fn wait_new_master(&self, old: u16, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(port) = self.master_port().filter(|port| *port != old) {
                if info(port, "replication").contains("role:master") {
                    return port;
                }
            }
            assert!(Instant::now() < deadline, "no new master within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks a sentinel for a failover (`SENTINEL FAILOVER`), retried while
    /// the sentinels are not ready for one ("INPROG", "NOGOODSLAVE").
    pub fn failover(&self) {
        wait_for(Duration::from_secs(20), || {
            connect(self.sentinels[0].port).is_some_and(|mut conn| {
                redis::cmd("SENTINEL").arg("FAILOVER").arg(&self.name).query::<()>(&mut conn).is_ok()
            })
        });
    }
}

/// A plain connection to 127.0.0.1:`port`, with a short timeout.
pub fn connect(port: u16) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    Some(conn)
}

/// `INFO section` of the server on `port` (empty if it does not answer).
pub fn info(port: u16, section: &str) -> String {
    connect(port).and_then(|mut conn| redis::cmd("INFO").arg(section).query(&mut conn).ok()).unwrap_or_default()
}

/// `SENTINEL MASTER name` of the sentinel on `port`, as fields (empty if it does not answer).
fn sentinel_master(port: u16, name: &str) -> std::collections::HashMap<String, String> {
    connect(port)
        .and_then(|mut conn| redis::cmd("SENTINEL").arg("MASTER").arg(name).query(&mut conn).ok())
        .unwrap_or_default()
}
