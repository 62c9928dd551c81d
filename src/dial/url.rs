//! `ws://` and `wss://` URLs (RFC 6455 §3).

use std::fmt;

/// A parsed WebSocket URL.
///
/// ```
/// use emitws::client::Url;
/// let url = Url::parse("wss://[::1]:8443/chat?room=1").unwrap();
/// assert!(url.is_secure());
/// assert_eq!((url.host(), url.port(), url.target()), ("::1", 8443, "/chat?room=1"));
/// assert_eq!(url.host_header(), "[::1]:8443");
/// assert_eq!(Url::parse("ws://example.com").unwrap().target(), "/");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    secure: bool,
    host: String,
    port: u16,
    target: String,
}

/// Why a URL was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// The scheme is not `ws` or `wss` (or there is none).
    Scheme(String),
    /// No host between `//` and the path.
    MissingHost,
    /// An IPv6 literal without its closing `]`, or not an IPv6 address.
    BadIpv6(String),
    /// The port is not a number from 1 to 65535.
    BadPort(String),
    /// A host with characters a host name cannot have (spaces, `@`, …).
    BadHost(String),
    /// A `#fragment`, which WebSocket URLs must not have.
    Fragment,
    /// A path or query with spaces or control characters.
    BadTarget(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme(scheme) => write!(f, "unsupported URL scheme {scheme:?} (use ws:// or wss://)"),
            UrlError::MissingHost => f.write_str("the URL has no host"),
            UrlError::BadIpv6(host) => write!(f, "{host:?} is not a valid bracketed IPv6 address"),
            UrlError::BadPort(port) => write!(f, "{port:?} is not a valid port"),
            UrlError::BadHost(host) => write!(f, "{host:?} is not a valid host"),
            UrlError::Fragment => f.write_str("a WebSocket URL must not have a #fragment"),
            UrlError::BadTarget(target) => write!(f, "{target:?} is not a valid path and query"),
        }
    }
}

impl std::error::Error for UrlError {}

impl Url {
    /// Parses `ws://host[:port][/path][?query]` or the same with `wss://`.
    /// The scheme and host are case-insensitive; the default ports are 80 and 443.
    pub fn parse(text: &str) -> Result<Url, UrlError> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| UrlError::Scheme(String::new()))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" => false,
            "wss" => true,
            _ => return Err(UrlError::Scheme(scheme.to_string())),
        };
        if rest.contains('#') {
            return Err(UrlError::Fragment);
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None => {
                if secure {
                    443
                } else {
                    80
                }
            }
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
                _ => return Err(UrlError::BadPort(text.to_string())),
            },
        };
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        if target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(UrlError::BadTarget(target));
        }
        Ok(Url { secure, host, port, target })
    }

    /// Whether the scheme is `wss` (TLS).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The host name or IP address (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request target: the path and query, `/` at least.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The `Host` header value: the port is left out when it is the scheme's default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.secure { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.target)
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(authority: &str) -> Result<(String, Option<&str>), UrlError> {
    if authority.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']').ok_or_else(|| UrlError::BadIpv6(authority.to_string()))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError::BadIpv6(authority.to_string()));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| UrlError::BadPort(p.to_string()))?),
        };
        return Ok((v6.to_string(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
    if host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if !host.bytes().all(valid) {
        return Err(UrlError::BadHost(host.to_string()));
    }
    Ok((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_part() {
        let url = Url::parse("WS://Example.COM:9001/a/b?x=1&y=2").unwrap();
        assert_eq!(
            (url.is_secure(), url.host(), url.port(), url.target()),
            (false, "example.com", 9001, "/a/b?x=1&y=2")
        );
        assert_eq!(url.host_header(), "example.com:9001");
        let url = Url::parse("wss://example.com?q").unwrap();
        assert_eq!((url.port(), url.target(), url.host_header().as_str()), (443, "/?q", "example.com"));
        let url = Url::parse("ws://[::1]/").unwrap();
        assert_eq!((url.host(), url.port(), url.host_header().as_str()), ("::1", 80, "[::1]"));
        assert_eq!(Url::parse("ws://127.0.0.1:1").unwrap().to_string(), "ws://127.0.0.1:1/");
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        let cases = [
            ("http://example.com", UrlError::Scheme("http".into())),
            ("example.com", UrlError::Scheme(String::new())),
            ("ws://", UrlError::MissingHost),
            ("ws:///path", UrlError::MissingHost),
            ("ws://:80", UrlError::MissingHost),
            ("ws://[::1", UrlError::BadIpv6("[::1".into())),
            ("ws://[nope]:80", UrlError::BadIpv6("[nope]:80".into())),
            ("ws://[::1]x", UrlError::BadPort("x".into())),
            ("ws://host:0", UrlError::BadPort("0".into())),
            ("ws://host:65536", UrlError::BadPort("65536".into())),
            ("ws://host:+80", UrlError::BadPort("+80".into())),
            ("ws://host:", UrlError::BadPort(String::new())),
            ("ws://us er@host", UrlError::BadHost("us er@host".into())),
            ("ws://host/#top", UrlError::Fragment),
            ("ws://host/a b", UrlError::BadTarget("/a b".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(Url::parse(text), Err(expected), "{text}");
        }
    }
}
