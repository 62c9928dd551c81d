//! TLS for `wss://`, on rustls (with the ring crypto provider), behind the
//! `tls` cargo feature.
//!
//! [`TlsAcceptor`] holds a server's certificate and key; [`TlsConnector`]
//! holds the roots a client trusts. Both wrap a shared rustls configuration,
//! so building one per connection costs nothing. [`TlsStream`] pumps one
//! session over a socket that may be non-blocking: plaintext in and out,
//! records to and from the socket, `WouldBlock` passed through.
//!
//! ```
//! use emitws::tls::{TlsAcceptor, TlsConnector};
//! let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! let acceptor = TlsAcceptor::from_pem(cert.cert.pem().as_bytes(), cert.signing_key.serialize_pem().as_bytes());
//! assert!(acceptor.is_ok());
//! let connector = TlsConnector::with_root_pem(cert.cert.pem().as_bytes()).unwrap();
//! assert!(connector.session("localhost").is_ok());
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};

/// Why a TLS setting could not be built, or a client's TLS handshake failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    Io(io::Error),
    /// The PEM input holds no certificate, no private key, or bad data.
    Pem(String),
    /// rustls refused the certificate, key or name.
    Rustls(rustls::Error),
    /// The host name is not a valid DNS name or IP address.
    BadServerName(String),
    /// A client's TLS handshake failed: the server's certificate is not
    /// trusted or names another host, the server sent an alert, or the
    /// socket failed. When rustls refused, the I/O error wraps the
    /// [`rustls::Error`] (see [`io::Error::get_ref`]).
    Handshake(io::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Io(e) => write!(f, "cannot read PEM file: {e}"),
            TlsError::Pem(what) => write!(f, "bad PEM input: {what}"),
            TlsError::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
            TlsError::BadServerName(name) => write!(f, "{name:?} is not a valid TLS server name"),
            TlsError::Handshake(e) => write!(f, "the TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Io(e) | TlsError::Handshake(e) => Some(e),
            TlsError::Rustls(e) => Some(e),
            TlsError::Pem(_) | TlsError::BadServerName(_) => None,
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate found".into()));
    }
    Ok(certs)
}

/// A server's TLS identity: its certificate chain and private key.
#[derive(Clone, Debug)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl TlsAcceptor {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert_chain: impl AsRef<Path>, private_key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let certs = std::fs::read(cert_chain).map_err(TlsError::Io)?;
        let key = std::fs::read(private_key).map_err(TlsError::Io)?;
        TlsAcceptor::from_pem(&certs, &key)
    }

    /// The same from PEM bytes in memory.
    pub fn from_pem(cert_chain: &[u8], private_key: &[u8]) -> Result<Self, TlsError> {
        let key = PrivateKeyDer::from_pem_slice(private_key).map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certificates(cert_chain)?, key)?;
        Ok(TlsAcceptor::from_config(Arc::new(config)))
    }

    /// Uses a rustls configuration built elsewhere (client certificates,
    /// session resumption, ALPN and so on).
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        TlsAcceptor { config }
    }

    /// A new server session.
    pub fn session(&self) -> Result<TlsStream, TlsError> {
        Ok(TlsStream::new(ServerConnection::new(self.config.clone())?.into()))
    }
}

/// The roots a client trusts.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    /// Trusts the Mozilla root program, as compiled into `webpki-roots`: the
    /// same answer on every machine, whatever its certificate store holds.
    pub fn webpki_roots() -> Self {
        let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        TlsConnector::with_roots(roots).expect("the default protocol versions are supported")
    }

    /// Trusts only the certificates in `pem` (a private CA, or a self-signed
    /// server certificate).
    pub fn with_root_pem(pem: &[u8]) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(pem)? {
            roots.add(cert)?;
        }
        TlsConnector::with_roots(roots)
    }

    fn with_roots(roots: RootCertStore) -> Result<Self, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from_config(Arc::new(config)))
    }

    /// Uses a rustls configuration built elsewhere.
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        TlsConnector { config }
    }

    /// A new client session for `host` (checked against the certificate).
    pub fn session(&self, host: &str) -> Result<TlsStream, TlsError> {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .map_err(|_| TlsError::BadServerName(host.into()))?;
        Ok(TlsStream::new(ClientConnection::new(self.config.clone(), name)?.into()))
    }
}

/// One TLS session, pumped over a socket passed to each call: plaintext goes
/// in and out through [`read`](Self::read) and [`write`](Self::write), records
/// to and from the socket. On a non-blocking socket every call may return
/// `WouldBlock`; call [`flush`](Self::flush) when the socket is writable while
/// [`wants_write`](Self::wants_write).
pub struct TlsStream {
    conn: Connection,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream").field("handshaking", &self.conn.is_handshaking()).finish_non_exhaustive()
    }
}

impl TlsStream {
    fn new(conn: Connection) -> Self {
        TlsStream { conn }
    }

    /// Reads plaintext into `buf`. `Ok(0)` means the peer closed: with a
    /// close_notify, or by closing TCP (which a WebSocket close handshake
    /// makes safe to accept).
    pub fn read(&mut self, socket: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.conn.read_tls(socket)? == 0 {
                return Ok(0);
            }
            self.conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }

    /// Whether the TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Reads records and answers the handshake until it is done, or the
    /// socket would block. Returns whether the handshake is complete.
    pub fn handshake(&mut self, socket: &mut (impl io::Read + io::Write)) -> io::Result<bool> {
        while self.conn.is_handshaking() {
            self.flush(socket)?;
            if !self.conn.is_handshaking() {
                break;
            }
            if self.conn.read_tls(socket)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        self.flush(socket)?;
        Ok(true)
    }

    /// Encrypts as much of `plaintext` as the session buffers take and sends
    /// what the socket takes. Returns the plaintext bytes accepted; the
    /// records not yet sent go out with a later [`flush`](Self::flush).
    pub fn write(&mut self, socket: &mut impl io::Write, plaintext: &[u8]) -> io::Result<usize> {
        let accepted = self.conn.writer().write(plaintext)?;
        match self.flush(socket) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if accepted == 0 && !plaintext.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(accepted)
    }

    /// Sends pending records until none are left or the socket would block.
    pub fn flush(&mut self, socket: &mut impl io::Write) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(socket)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Whether records wait to be sent.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Queues a close_notify alert (sent by the next flush).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    fn identity() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    /// A server session on one end of a loopback pair, echoing until EOF.
    fn echo_server(acceptor: TlsAcceptor) -> (std::net::SocketAddr, thread::JoinHandle<io::Result<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut socket, _) = listener.accept()?;
            let mut tls = acceptor.session().map_err(io::Error::other)?;
            tls.handshake(&mut socket)?;
            let mut buf = [0; 4096];
            loop {
                let n = tls.read(&mut socket, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                let mut sent = 0;
                while sent < n {
                    sent += tls.write(&mut socket, &buf[sent..n])?;
                }
                tls.flush(&mut socket)?;
            }
        });
        (addr, server)
    }

    #[test]
    fn a_session_carries_bytes_both_ways_and_closes() {
        let (cert, key) = identity();
        let (addr, server) = echo_server(TlsAcceptor::from_pem(cert.as_bytes(), key.as_bytes()).unwrap());
        let mut socket = TcpStream::connect(addr).unwrap();
        let mut tls = TlsConnector::with_root_pem(cert.as_bytes()).unwrap().session("localhost").unwrap();
        tls.handshake(&mut socket).unwrap();
        let message = vec![42u8; 100_000];
        let mut written = 0;
        let mut echoed = Vec::new();
        let mut buf = [0; 8192];
        while echoed.len() < message.len() {
            if written < message.len() {
                written += tls.write(&mut socket, &message[written..(written + 8192).min(message.len())]).unwrap();
                tls.flush(&mut socket).unwrap();
            }
            while echoed.len() < written {
                let n = tls.read(&mut socket, &mut buf).unwrap();
                echoed.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(echoed, message);
        tls.close();
        tls.flush(&mut socket).unwrap();
        server.join().unwrap().unwrap();
    }

    #[test]
    fn an_untrusted_certificate_fails_the_handshake() {
        let (cert, key) = identity();
        let (other, _) = identity();
        let (addr, server) = echo_server(TlsAcceptor::from_pem(cert.as_bytes(), key.as_bytes()).unwrap());
        let mut socket = TcpStream::connect(addr).unwrap();
        let mut tls = TlsConnector::with_root_pem(other.as_bytes()).unwrap().session("localhost").unwrap();
        let error = tls.handshake(&mut socket).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("certificate"), "{error}");
        drop(socket);
        assert!(server.join().unwrap().is_err(), "the server sees the failed handshake too");
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(matches!(TlsAcceptor::from_pem(b"", b""), Err(TlsError::Pem(_))));
        assert!(matches!(TlsConnector::with_root_pem(b"not pem"), Err(TlsError::Pem(_))));
        assert!(matches!(TlsAcceptor::from_pem_files("/nonexistent.pem", "/nonexistent.key"), Err(TlsError::Io(_))));
        let connector = TlsConnector::webpki_roots();
        assert!(matches!(connector.session("bad name!"), Err(TlsError::BadServerName(_))));
        assert!(connector.session("[::1]").is_ok());
    }
}
