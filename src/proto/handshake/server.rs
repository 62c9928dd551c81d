//! The HTTP/1.1 upgrade handshake (RFC 6455 §4), server side.
//!
//! [`RequestReader`] collects the request head incrementally: each byte is
//! scanned once however the request trickles in, and httparse runs once, when
//! the blank line arrives. [`HttpRequest`] borrows everything from the reader's
//! buffer. [`HttpRequest::websocket`] validates an upgrade and yields what the
//! response needs; [`write_accept`] and [`write_response`] produce the bytes.

use std::fmt;

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID appended to the client's key (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Limits on the request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// The most bytes the request line and headers may take (default 8 KiB).
    pub max_bytes: usize,
    /// The most header lines (default 64).
    pub max_headers: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { max_bytes: 8 << 10, max_headers: 64 }
    }
}

/// Why a request was refused, with the HTTP status that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head exceeded [`RequestLimits::max_bytes`] (431).
    HeadTooLarge,
    /// More header lines than [`RequestLimits::max_headers`] (431).
    TooManyHeaders,
    /// Not parseable as HTTP/1.x (400).
    Malformed,
    /// An upgrade with a method other than GET (400).
    MethodNotGet,
    /// An upgrade over HTTP/1.0 (400).
    OldHttpVersion,
    /// No Host header, or more than one (400).
    BadHost,
    /// `Upgrade` lacks the token `websocket` (400).
    UpgradeNotWebsocket,
    /// `Connection` lacks the token `upgrade` (400).
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Key` missing, repeated, or not 16 bytes in base64 (400).
    BadKey,
    /// `Sec-WebSocket-Version` is not 13 (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// The Origin is not allowed (403).
    OriginRejected,
}

impl HandshakeError {
    /// The HTTP status code of the response.
    ///
    /// ```
    /// use emitws::proto::handshake::server::HandshakeError;
    /// assert_eq!(HandshakeError::UnsupportedVersion.status(), 426);
    /// assert_eq!(HandshakeError::HeadTooLarge.status(), 431);
    /// ```
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::OriginRejected => 403,
            _ => 400,
        }
    }

    /// Writes the complete HTTP response for this error into `out`.
    pub fn write_response(self, out: &mut Vec<u8>) {
        let extra: &[(&str, &str)] = match self {
            HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        };
        write_response(out, self.status(), extra, self.to_string().as_bytes());
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::HeadTooLarge => "request header fields too large",
            HandshakeError::TooManyHeaders => "too many request header fields",
            HandshakeError::Malformed => "malformed HTTP request",
            HandshakeError::MethodNotGet => "a WebSocket upgrade must use GET",
            HandshakeError::OldHttpVersion => "a WebSocket upgrade needs HTTP/1.1 or later",
            HandshakeError::BadHost => "missing or repeated Host header",
            HandshakeError::UpgradeNotWebsocket => "Upgrade header lacks the websocket token",
            HandshakeError::ConnectionNotUpgrade => "Connection header lacks the upgrade token",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be one base64-encoded 16-byte value",
            HandshakeError::UnsupportedVersion => "unsupported Sec-WebSocket-Version (13 is supported)",
            HandshakeError::OriginRejected => "origin not allowed",
        })
    }
}

impl std::error::Error for HandshakeError {}

/// Collects an HTTP request head from arbitrary chunks.
///
/// ```
/// use emitws::proto::handshake::server::{RequestLimits, RequestReader};
/// let mut reader = RequestReader::default();
/// let limits = RequestLimits::default();
/// assert_eq!(reader.push(b"GET / HTTP/1.1\r\nHost: a\r\n", &limits), Ok(None));
/// // The head ends after "\r\n"; the trailing bytes belong to the next protocol.
/// assert_eq!(reader.push(b"\r\nrest", &limits), Ok(Some(2)));
/// assert_eq!(reader.request(&limits).unwrap().path(), "/");
/// ```
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    line_start: usize,
    lines: usize,
    complete: bool,
}

impl RequestReader {
    /// Appends `input` up to the end of the head.
    ///
    /// Returns `Ok(Some(used))` once the head is complete, where `used` is how
    /// much of `input` belonged to it (the rest is WebSocket data), and
    /// `Ok(None)` while more is needed.
    pub fn push(&mut self, input: &[u8], limits: &RequestLimits) -> Result<Option<usize>, HandshakeError> {
        // One allocation for a request that arrives whole, instead of a doubling series.
        self.buf.reserve(input.len().min(limits.max_bytes.saturating_sub(self.buf.len())));
        for (i, &byte) in input.iter().enumerate() {
            if self.buf.len() >= limits.max_bytes {
                return Err(HandshakeError::HeadTooLarge);
            }
            self.buf.push(byte);
            if byte != b'\n' {
                continue;
            }
            let line = &self.buf[self.line_start..self.buf.len() - 1];
            if line.is_empty() || line == b"\r" {
                if self.lines == 0 {
                    // RFC 7230 §3.5: ignore empty lines before the request line
                    // (httparse skips them too). They still count against max_bytes.
                    self.line_start = self.buf.len();
                    continue;
                }
                self.complete = true;
                return Ok(Some(i + 1));
            }
            self.lines += 1;
            // The first line is the request line, not a header.
            if self.lines > limits.max_headers + 1 {
                return Err(HandshakeError::TooManyHeaders);
            }
            self.line_start = self.buf.len();
        }
        Ok(None)
    }

    /// Parses the complete head. Call only after [`push`](Self::push) returned `Some`.
    pub fn request(&self, limits: &RequestLimits) -> Result<HttpRequest<'_>, HandshakeError> {
        assert!(self.complete, "the request head is incomplete");
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
            _ => return Err(HandshakeError::Malformed),
        }
        let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version) else {
            return Err(HandshakeError::Malformed);
        };
        let header_count = parsed.headers.len();
        headers.truncate(header_count);
        let headers = headers.into_iter().map(|h| (h.name, h.value)).collect();
        Ok(HttpRequest { method, target, minor_version: version, headers })
    }

    /// The head collected so far (all of it once [`push`](Self::push) returned `Some`).
    pub(crate) fn head(&self) -> &[u8] {
        &self.buf
    }

    /// Whether the blank line that ends the head has arrived.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }
}

/// A parsed request head, borrowed from the [`RequestReader`].
#[derive(Clone, Debug)]
pub struct HttpRequest<'a> {
    method: &'a str,
    target: &'a str,
    minor_version: u8,
    headers: Vec<(&'a str, &'a [u8])>,
}

impl<'a> HttpRequest<'a> {
    /// The method, such as `GET`.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The path of the request target, without the query.
    pub fn path(&self) -> &'a str {
        self.target.split_once('?').map_or(self.target, |(path, _)| path)
    }

    /// The query string after `?`, if any (not decoded).
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// Every value of the header `name` (case-insensitive), in order.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        values_of(&self.headers, name)
    }

    /// All headers as (name, value) pairs, in order.
    pub fn headers(&self) -> &[(&'a str, &'a [u8])] {
        &self.headers
    }

    /// Whether the request asks for a WebSocket upgrade at all (as opposed to
    /// plain HTTP): it carries `Upgrade: websocket` or a `Sec-WebSocket-Key`.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.header_values("upgrade").any(|v| has_token(v, "websocket")) || self.header("sec-websocket-key").is_some()
    }

    /// Validates the request as a WebSocket upgrade (RFC 6455 §4.2.1).
    ///
    /// ```
    /// use emitws::proto::handshake::server::{RequestLimits, RequestReader};
    /// let head = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
    ///     Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    ///     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n";
    /// let mut reader = RequestReader::default();
    /// let limits = RequestLimits::default();
    /// reader.push(head, &limits).unwrap();
    /// let request = reader.request(&limits).unwrap();
    /// let upgrade = request.websocket().unwrap();
    /// assert_eq!(upgrade.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /// assert_eq!(upgrade.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
    /// assert_eq!(request.query(), Some("room=1"));
    /// ```
    pub fn websocket(&self) -> Result<Upgrade<'a>, HandshakeError> {
        if self.method != "GET" {
            return Err(HandshakeError::MethodNotGet);
        }
        if self.minor_version < 1 {
            return Err(HandshakeError::OldHttpVersion);
        }
        if self.header_values("host").count() != 1 {
            return Err(HandshakeError::BadHost);
        }
        if !self.header_values("upgrade").any(|v| has_token(v, "websocket")) {
            return Err(HandshakeError::UpgradeNotWebsocket);
        }
        if !self.header_values("connection").any(|v| has_token(v, "upgrade")) {
            return Err(HandshakeError::ConnectionNotUpgrade);
        }
        let mut versions = self.header_values("sec-websocket-version");
        match (versions.next().map(trim), versions.next()) {
            (Some(b"13"), None) => {}
            _ => return Err(HandshakeError::UnsupportedVersion),
        }
        let mut keys = self.header_values("sec-websocket-key");
        let (Some(key), None) = (keys.next().map(trim), keys.next()) else {
            return Err(HandshakeError::BadKey);
        };
        let mut decoded = [0u8; 18];
        match base64::engine::general_purpose::STANDARD.decode_slice(key, &mut decoded) {
            Ok(16) => {}
            _ => return Err(HandshakeError::BadKey),
        }
        let protocols = self.header_values("sec-websocket-protocol").collect();
        let extensions = self.header_values("sec-websocket-extensions").collect();
        Ok(Upgrade { key, protocols, extensions })
    }
}

/// A valid upgrade request: what the response needs.
#[derive(Clone, Debug)]
pub struct Upgrade<'a> {
    key: &'a [u8],
    protocols: Vec<&'a [u8]>,
    extensions: Vec<&'a [u8]>,
}

impl<'a> Upgrade<'a> {
    /// The `Sec-WebSocket-Accept` value for this request's key.
    pub fn accept_key(&self) -> String {
        accept_key(self.key)
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.protocols.iter().flat_map(|v| tokens(v))
    }

    /// The extension offers, in the client's order. Offers that do not parse
    /// are skipped.
    pub fn extensions(&self) -> impl Iterator<Item = ExtensionOffer<'a>> + '_ {
        self.extensions.iter().flat_map(|v| parse_extensions(v))
    }
}

/// Computes `Sec-WebSocket-Accept` from a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
///
/// ```
/// assert_eq!(emitws::proto::handshake::server::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Writes the `101 Switching Protocols` response, with the chosen subprotocol
/// and extension responses (each already formatted) if any.
pub fn write_accept(out: &mut Vec<u8>, accept_key: &str, protocol: Option<&str>, extensions: Option<&str>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept_key.as_bytes());
    if let Some(protocol) = protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(protocol.as_bytes());
    }
    if let Some(extensions) = extensions {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(extensions.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes a complete HTTP/1.1 response that closes the connection.
///
/// ```
/// let mut out = Vec::new();
/// emitws::proto::handshake::server::write_response(&mut out, 404, &[], b"no such room");
/// assert!(out.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
/// assert!(out.ends_with(b"\r\n\r\nno such room"));
/// ```
pub fn write_response(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    use std::io::Write as _;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

/// The standard reason phrase for the statuses a WebSocket server answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Every value of the header `name` (case-insensitive) among `headers`, in
/// order: requests and responses keep their headers the same way.
pub(crate) fn values_of<'a, 's>(
    headers: &'s [(&'a str, &'a [u8])],
    name: &'s str,
) -> impl Iterator<Item = &'a [u8]> + 's {
    headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
///
/// ```
/// use emitws::proto::handshake::server::has_token;
/// assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
/// assert!(!has_token(b"upgraded", "upgrade"));
/// ```
pub fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|item| trim(item).eq_ignore_ascii_case(token.as_bytes()))
}

/// The non-empty comma-separated items of a header value that are valid UTF-8.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    value.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty()).filter_map(|t| std::str::from_utf8(t).ok())
}

pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// One extension offer from `Sec-WebSocket-Extensions`: a name and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionOffer<'a> {
    /// The extension token, such as `permessage-deflate`.
    pub name: &'a str,
    /// Parameters in order: name and optional value (quotes removed).
    pub params: Vec<(&'a str, Option<&'a str>)>,
}

/// Parses a `Sec-WebSocket-Extensions` value in one pass. Offers with
/// syntax errors are dropped; the rest are returned in order.
///
/// ```
/// use emitws::proto::handshake::server::parse_extensions;
/// let offers = parse_extensions(b"permessage-deflate; client_max_window_bits, x-junk;;=, foo; a=\"1,2\"");
/// assert_eq!(offers.len(), 2);
/// assert_eq!(offers[0].params, [("client_max_window_bits", None)]);
/// assert_eq!(offers[1].params, [("a", Some("1,2"))]);
/// ```
pub fn parse_extensions(value: &[u8]) -> Vec<ExtensionOffer<'_>> {
    extension_elements(value).into_iter().flatten().collect()
}

/// Every non-blank element of a `Sec-WebSocket-Extensions` value, `None` for
/// one that does not parse (a value that is not UTF-8 is one such element).
pub(crate) fn extension_elements(value: &[u8]) -> Vec<Option<ExtensionOffer<'_>>> {
    let Ok(text) = std::str::from_utf8(value) else { return vec![None] };
    let mut elements = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (element, next) = split_unquoted(rest, ',');
        rest = next;
        if !element.trim_matches([' ', '\t']).is_empty() {
            elements.push(parse_offer(element));
        }
    }
    elements
}

/// Splits at the first `sep` outside double quotes.
fn split_unquoted(text: &str, sep: char) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => return (&text[..i], &text[i + 1..]),
            _ => {}
        }
    }
    (text, "")
}

fn parse_offer(offer: &str) -> Option<ExtensionOffer<'_>> {
    let (name, mut rest) = split_unquoted(offer, ';');
    let name = name.trim_matches([' ', '\t']);
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (param, next) = split_unquoted(rest, ';');
        rest = next;
        let (key, value) = match param.split_once('=') {
            Some((key, value)) => (key, Some(value.trim_matches([' ', '\t']))),
            None => (param, None),
        };
        let key = key.trim_matches([' ', '\t']);
        if !is_token(key) {
            return None;
        }
        let value = match value {
            Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => Some(&v[1..v.len() - 1]),
            Some(v) if is_token(v) => Some(v),
            Some(_) => return None,
            None => None,
        };
        params.push((key, value));
    }
    Some(ExtensionOffer { name, params })
}

/// An HTTP token (RFC 7230 §3.2.6).
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn validate(head: &str) -> Result<(), HandshakeError> {
        let limits = RequestLimits::default();
        let mut reader = RequestReader::default();
        assert!(reader.push(head.as_bytes(), &limits)?.is_some(), "incomplete head");
        reader.request(&limits)?.websocket().map(|_| ())
    }

    #[test]
    fn accepts_a_good_request_in_any_chunking() {
        assert_eq!(validate(GOOD), Ok(()));
        let limits = RequestLimits::default();
        let mut reader = RequestReader::default();
        let bytes = GOOD.as_bytes();
        for (i, byte) in bytes.iter().enumerate() {
            let done = reader.push(std::slice::from_ref(byte), &limits).unwrap();
            assert_eq!(done.is_some(), i == bytes.len() - 1);
        }
        assert!(reader.request(&limits).unwrap().websocket().is_ok());
    }

    #[test]
    fn ignores_empty_lines_before_the_request_line() {
        assert_eq!(validate(&format!("\r\n{GOOD}")), Ok(()));
        assert_eq!(validate(&format!("\n\r\n{GOOD}")), Ok(()));
        let limits = RequestLimits { max_bytes: 16, max_headers: 2 };
        let mut reader = RequestReader::default();
        assert_eq!(reader.push(&b"\r\n".repeat(9), &limits), Err(HandshakeError::HeadTooLarge));
    }

    #[test]
    fn rejects_each_broken_rule_with_its_own_error() {
        let cases = [
            (GOOD.replace("GET", "POST"), HandshakeError::MethodNotGet),
            (GOOD.replace("HTTP/1.1", "HTTP/1.0"), HandshakeError::OldHttpVersion),
            (GOOD.replace("Host: h\r\n", ""), HandshakeError::BadHost),
            (GOOD.replace("Host: h\r\n", "Host: h\r\nHost: i\r\n"), HandshakeError::BadHost),
            (GOOD.replace("Upgrade: WebSocket", "Upgrade: h2c"), HandshakeError::UpgradeNotWebsocket),
            (GOOD.replace("Connection: Upgrade", "Connection: Upgraded"), HandshakeError::ConnectionNotUpgrade),
            (GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), HandshakeError::BadKey),
            (GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!notbase64!!"), HandshakeError::BadKey),
            (GOOD.replace("Version: 13", "Version: 8"), HandshakeError::UnsupportedVersion),
            (
                GOOD.replace("Version: 13\r\n", "Version: 13\r\nSec-WebSocket-Version: 8\r\n"),
                HandshakeError::UnsupportedVersion,
            ),
        ];
        for (head, expected) in cases {
            assert_eq!(validate(&head), Err(expected), "{head}");
        }
        let twice = GOOD.replace("Version: 13\r\n", "Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        assert_eq!(validate(&twice), Err(HandshakeError::BadKey));
    }

    #[test]
    fn caps_size_and_header_count() {
        let limits = RequestLimits { max_bytes: 64, max_headers: 2 };
        let mut reader = RequestReader::default();
        assert_eq!(reader.push(&[b'a'; 65], &limits), Err(HandshakeError::HeadTooLarge));
        let mut reader = RequestReader::default();
        let head = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert_eq!(reader.push(head, &limits), Err(HandshakeError::TooManyHeaders));
    }

    #[test]
    fn version_error_response_names_the_supported_version() {
        let mut out = Vec::new();
        HandshakeError::UnsupportedVersion.write_response(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn extension_parsing_skips_junk_offers() {
        let junk = ";=\",".repeat(20_000);
        assert!(parse_extensions(junk.as_bytes()).is_empty());
        let offers = parse_extensions(b"x; a=1, ,,; b, permessage-deflate");
        assert_eq!(offers.iter().map(|o| o.name).collect::<Vec<_>>(), ["x", "permessage-deflate"]);
        let offers = parse_extensions(b"permessage-deflate; server_max_window_bits=10; client_max_window_bits=\"12\"");
        assert_eq!(offers[0].params, [("server_max_window_bits", Some("10")), ("client_max_window_bits", Some("12"))]);
    }
}
