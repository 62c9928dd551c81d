//! Dialing out, shared by the blocking [`client`](crate::client) and the
//! runtime's outgoing connections
//! ([`ServerHandle::connect`](crate::runtime::ServerHandle::connect)): the
//! settings, the URL, the error, name resolution, the upgrade request and
//! the randomness a client needs. It sits below both, so the runtime never
//! reaches up into the client; the client re-exports the public types.

mod builder;
mod error;
mod url;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

pub use builder::ClientBuilder;
pub use error::ClientError;
pub use url::{Url, UrlError};

use crate::proto::deflate::client_offer;
use crate::proto::handshake::client::{encode_key, PendingUpgrade, UpgradeRequest};
use crate::proto::MaskRng;
#[cfg(feature = "tls")]
use crate::tls::TlsConnector;

/// Resolves the URL's host (a blocking lookup, unless it is an IP address).
pub(crate) fn resolve(url: &Url) -> Result<Vec<SocketAddr>, ClientError> {
    let dns_error = |source| ClientError::Dns { host: url.host().to_string(), source };
    let addrs: Vec<SocketAddr> = (url.host(), url.port()).to_socket_addrs().map_err(dns_error)?.collect();
    if addrs.is_empty() {
        return Err(dns_error(io::Error::new(io::ErrorKind::NotFound, "no address")));
    }
    Ok(addrs)
}

/// The error for a failed connect to `addr`.
pub(crate) fn connect_error(addr: SocketAddr, source: io::Error) -> ClientError {
    match source.kind() {
        io::ErrorKind::ConnectionRefused => ClientError::Refused { addr },
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ClientError::Timeout,
        _ => ClientError::Connect { addr, source },
    }
}

/// The roots `wss://` trusts when the settings name none: Mozilla's, built once.
#[cfg(feature = "tls")]
pub(crate) fn default_connector() -> TlsConnector {
    static DEFAULT: std::sync::OnceLock<TlsConnector> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(TlsConnector::webpki_roots).clone()
}

/// The upgrade request for `url` with a fresh key, and what it offers.
pub(crate) fn start_upgrade(url: &Url, settings: &ClientBuilder) -> Result<PendingUpgrade, ClientError> {
    let key = encode_key(random_bytes()?);
    let extensions = settings.deflate.as_ref().map(client_offer);
    let request = UpgradeRequest {
        host: &url.host_header(),
        target: url.target(),
        key: &key,
        origin: settings.origin.as_deref(),
        protocols: &settings.protocols,
        extensions: extensions.as_deref(),
        headers: &settings.headers,
    };
    Ok(PendingUpgrade::new(request, settings.deflate, settings.response_limits))
}

/// A masking-key generator seeded from the OS CSPRNG.
pub(crate) fn mask_rng() -> Result<MaskRng, ClientError> {
    Ok(MaskRng::from_seed(u64::from_ne_bytes(random_bytes()?)))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ClientError> {
    let mut bytes = [0; N];
    getrandom::getrandom(&mut bytes).map_err(|e| ClientError::Io(io::Error::other(e.to_string())))?;
    Ok(bytes)
}
