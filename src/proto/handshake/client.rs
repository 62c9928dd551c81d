//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.1), client side.
//!
//! [`UpgradeRequest::write`] produces the request; [`ResponseReader`]
//! collects the response head from arbitrary chunks under the same byte and
//! header caps as the server's request reader, and [`Response::validate`]
//! checks it against what was offered. Bytes after the head belong to the
//! WebSocket stream: [`ResponseReader::push`] says where the head ended.
//!
//! ```
//! use emitws::proto::handshake::client::{encode_key, Offer, ResponseReader, UpgradeRequest};
//! use emitws::proto::handshake::server::{accept_key, RequestLimits};
//!
//! let key = encode_key([7; 16]);
//! let mut request = Vec::new();
//! UpgradeRequest { host: "example.com", target: "/chat", key: &key, ..UpgradeRequest::default() }
//!     .write(&mut request);
//! assert!(request.starts_with(b"GET /chat HTTP/1.1\r\nHost: example.com\r\n"));
//!
//! let mut response = format!(
//!     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
//!      Sec-WebSocket-Accept: {}\r\n\r\n",
//!     accept_key(key.as_bytes())
//! )
//! .into_bytes();
//! response.extend_from_slice(b"\x81\x02hi"); // the server's first frame, in the same read
//! let limits = RequestLimits::default();
//! let mut reader = ResponseReader::default();
//! let used = reader.push(&response, &limits).unwrap().expect("a complete head");
//! assert_eq!(&response[used..], b"\x81\x02hi"); // not lost
//! let accepted = reader.response(&limits).unwrap().validate(&Offer { key: &key, ..Offer::default() });
//! assert_eq!(accepted.unwrap().protocol, None);
//! ```

use std::fmt;

use base64::Engine as _;

use super::server::{
    accept_key, extension_elements, has_token, tokens, trim, HandshakeError, RequestLimits, RequestReader,
};
use crate::proto::deflate::{self, DeflateAgreement, DeflateConfig, DeflateResponseError};

/// Encodes a 16-byte nonce as a `Sec-WebSocket-Key` (draw the nonce from a
/// CSPRNG: RFC 6455 §4.1 asks for one chosen randomly per connection).
pub fn encode_key(nonce: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// What goes into an upgrade request.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpgradeRequest<'a> {
    /// The `Host` value: the host, with `:port` unless it is the scheme's
    /// default, and IPv6 addresses in brackets.
    pub host: &'a str,
    /// The request target: path and query (`/` at least).
    pub target: &'a str,
    /// The `Sec-WebSocket-Key` (see [`encode_key`]).
    pub key: &'a str,
    /// An `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// Subprotocols offered, in order of preference.
    pub protocols: &'a [String],
    /// The `Sec-WebSocket-Extensions` value to offer, if any.
    pub extensions: Option<&'a str>,
    /// Further headers, written as given.
    pub headers: &'a [(String, String)],
}

impl UpgradeRequest<'_> {
    /// Appends the request head to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let target = if self.target.is_empty() { "/" } else { self.target };
        out.extend_from_slice(format!("GET {target} HTTP/1.1\r\n").as_bytes());
        let mut header = |name: &str, value: &str| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        header("Host", self.host);
        header("Upgrade", "websocket");
        header("Connection", "Upgrade");
        header("Sec-WebSocket-Key", self.key);
        header("Sec-WebSocket-Version", "13");
        if let Some(origin) = self.origin {
            header("Origin", origin);
        }
        if !self.protocols.is_empty() {
            header("Sec-WebSocket-Protocol", &self.protocols.join(", "));
        }
        if let Some(extensions) = self.extensions {
            header("Sec-WebSocket-Extensions", extensions);
        }
        for (name, value) in self.headers {
            header(name, value);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Why a server's answer to an upgrade request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseError {
    /// The head exceeded [`RequestLimits::max_bytes`].
    HeadTooLarge,
    /// More header lines than [`RequestLimits::max_headers`].
    TooManyHeaders,
    /// Not parseable as an HTTP/1.x response.
    Malformed,
    /// A status other than 101 (the client reads the body that follows).
    NotSwitching(u16),
    /// `Upgrade` lacks the token `websocket`.
    UpgradeNotWebsocket,
    /// `Connection` lacks the token `upgrade`.
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Accept` missing, repeated or not the digest of our key.
    BadAccept,
    /// A subprotocol we did not offer, or more than one.
    UnofferedProtocol,
    /// An extension we did not offer, or one that does not parse.
    UnofferedExtension,
    /// A permessage-deflate answer that does not fit our offer.
    Deflate(DeflateResponseError),
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::HeadTooLarge => f.write_str("response head too large"),
            ResponseError::TooManyHeaders => f.write_str("too many response header fields"),
            ResponseError::Malformed => f.write_str("malformed HTTP response"),
            ResponseError::NotSwitching(status) => write!(f, "the server answered {status}, not 101"),
            ResponseError::UpgradeNotWebsocket => f.write_str("Upgrade header lacks the websocket token"),
            ResponseError::ConnectionNotUpgrade => f.write_str("Connection header lacks the upgrade token"),
            ResponseError::BadAccept => f.write_str("Sec-WebSocket-Accept does not match our key"),
            ResponseError::UnofferedProtocol => f.write_str("the server chose a subprotocol we did not offer"),
            ResponseError::UnofferedExtension => f.write_str("the server chose an extension we did not offer"),
            ResponseError::Deflate(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ResponseError {}

/// Collects a response head from arbitrary chunks: each byte is scanned
/// once, and httparse runs once, when the blank line arrives.
#[derive(Debug, Default)]
pub struct ResponseReader {
    head: RequestReader,
}

impl ResponseReader {
    /// Appends `input` up to the end of the head. `Ok(Some(used))` once the
    /// head is complete, where `used` is how much of `input` belonged to it
    /// (the rest is the response body or WebSocket data); `Ok(None)` while
    /// more is needed.
    pub fn push(&mut self, input: &[u8], limits: &RequestLimits) -> Result<Option<usize>, ResponseError> {
        self.head.push(input, limits).map_err(|e| match e {
            HandshakeError::TooManyHeaders => ResponseError::TooManyHeaders,
            _ => ResponseError::HeadTooLarge,
        })
    }

    /// Parses the complete head. Call only after [`push`](Self::push) returned `Some`.
    pub fn response(&self, limits: &RequestLimits) -> Result<Response<'_>, ResponseError> {
        assert!(self.head.is_complete(), "the response head is incomplete");
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(self.head.head()) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
            _ => return Err(ResponseError::Malformed),
        }
        let Some(status) = parsed.code else { return Err(ResponseError::Malformed) };
        let header_count = parsed.headers.len();
        headers.truncate(header_count);
        let headers = headers.into_iter().map(|h| (h.name, h.value)).collect();
        Ok(Response { status, headers })
    }
}

/// What the client offered, to check the answer against.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offer<'a> {
    /// The `Sec-WebSocket-Key` sent.
    pub key: &'a str,
    /// The subprotocols offered.
    pub protocols: &'a [String],
    /// The permessage-deflate settings offered (with [`deflate::client_offer`]), if any.
    pub deflate: Option<&'a DeflateConfig>,
}

/// What the server agreed to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The subprotocol chosen, if any.
    pub protocol: Option<String>,
    /// The permessage-deflate parameters, if compression was agreed.
    pub deflate: Option<DeflateAgreement>,
}

/// A parsed response head, borrowed from the [`ResponseReader`].
#[derive(Clone, Debug)]
pub struct Response<'a> {
    status: u16,
    headers: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Response<'a> {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// Every value of the header `name` (case-insensitive), in order.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        super::server::values_of(&self.headers, name)
    }

    /// All headers as (name, value) pairs, in order.
    pub fn headers(&self) -> &[(&'a str, &'a [u8])] {
        &self.headers
    }

    /// The `Content-Length`, if present and numeric.
    pub fn content_length(&self) -> Option<usize> {
        std::str::from_utf8(trim(self.header("content-length")?)).ok()?.parse().ok()
    }

    /// Checks a WebSocket upgrade answer against what was offered (RFC 6455
    /// §4.1, RFC 7692 §5): 101; the Upgrade and Connection tokens; the
    /// accept digest of our key; a subprotocol and extensions we offered.
    pub fn validate(&self, offer: &Offer<'_>) -> Result<Accepted, ResponseError> {
        if self.status != 101 {
            return Err(ResponseError::NotSwitching(self.status));
        }
        if !self.header_values("upgrade").any(|v| has_token(v, "websocket")) {
            return Err(ResponseError::UpgradeNotWebsocket);
        }
        if !self.header_values("connection").any(|v| has_token(v, "upgrade")) {
            return Err(ResponseError::ConnectionNotUpgrade);
        }
        let mut accepts = self.header_values("sec-websocket-accept");
        match (accepts.next().map(trim), accepts.next()) {
            (Some(accept), None) if accept == accept_key(offer.key.as_bytes()).as_bytes() => {}
            _ => return Err(ResponseError::BadAccept),
        }
        let chosen: Vec<&str> = self.header_values("sec-websocket-protocol").flat_map(tokens).collect();
        let protocol = match chosen[..] {
            [] => None,
            [one] if offer.protocols.iter().any(|p| p == one) => Some(one.to_string()),
            _ => return Err(ResponseError::UnofferedProtocol),
        };
        let mut agreement = None;
        for element in self.header_values("sec-websocket-extensions").flat_map(extension_elements) {
            let (Some(element), Some(config)) = (element, offer.deflate) else {
                return Err(ResponseError::UnofferedExtension);
            };
            if !element.name.eq_ignore_ascii_case(deflate::EXTENSION_NAME) {
                return Err(ResponseError::UnofferedExtension);
            }
            if agreement.is_some() {
                return Err(ResponseError::Deflate(DeflateResponseError::Duplicate));
            }
            agreement = Some(deflate::accept_response(&element, config).map_err(ResponseError::Deflate)?);
        }
        Ok(Accepted { protocol, deflate: agreement })
    }
}

/// The most of a refused upgrade's response body a client keeps.
pub(crate) const MAX_REFUSAL_BODY: usize = 64 << 10;

/// One client upgrade in progress, the same for the blocking client and the
/// runtime's outgoing connections: the request to send, then the response
/// read and checked against what the request offered.
#[derive(Debug)]
pub(crate) struct PendingUpgrade {
    /// The request head to send.
    pub request: Vec<u8>,
    key: String,
    protocols: Vec<String>,
    deflate: Option<DeflateConfig>,
    limits: RequestLimits,
    reader: ResponseReader,
}

impl PendingUpgrade {
    /// Writes `request`; `deflate` is what its extensions offer, and `limits`
    /// cap the response head.
    pub fn new(request: UpgradeRequest<'_>, deflate: Option<DeflateConfig>, limits: RequestLimits) -> PendingUpgrade {
        let mut head = Vec::new();
        request.write(&mut head);
        PendingUpgrade {
            request: head,
            key: request.key.to_string(),
            protocols: request.protocols.to_vec(),
            deflate,
            limits,
            reader: ResponseReader::default(),
        }
    }

    /// Feeds response bytes; `Some(used)` once the head is complete (see
    /// [`ResponseReader::push`]).
    pub fn push(&mut self, input: &[u8]) -> Result<Option<usize>, ResponseError> {
        self.reader.push(input, &self.limits)
    }

    /// Checks the complete head against the offer. A refusal is
    /// [`ResponseError::NotSwitching`]; [`refusal_length`](Self::refusal_length)
    /// then says how long its body is.
    pub fn finish(&self) -> Result<Accepted, ResponseError> {
        let offer = Offer { key: &self.key, protocols: &self.protocols, deflate: self.deflate.as_ref() };
        self.reader.response(&self.limits)?.validate(&offer)
    }

    /// The refusal body's `Content-Length`, if the head has one.
    pub fn refusal_length(&self) -> Option<usize> {
        self.reader.response(&self.limits).ok()?.content_length()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const GOOD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

    fn check(head: &str, offer: &Offer<'_>) -> Result<Accepted, ResponseError> {
        let limits = RequestLimits::default();
        let mut reader = ResponseReader::default();
        assert!(reader.push(head.as_bytes(), &limits)?.is_some(), "incomplete head");
        reader.response(&limits)?.validate(offer)
    }

    fn with(header: &str) -> String {
        GOOD.replace("\r\n\r\n", &format!("\r\n{header}\r\n\r\n"))
    }

    #[test]
    fn the_request_carries_every_offer() {
        let protocols = ["chat.v2".to_string(), "chat.v1".to_string()];
        let headers = [("Authorization".to_string(), "Bearer x".to_string())];
        let request = UpgradeRequest {
            host: "[::1]:9001",
            target: "/room?id=3",
            key: KEY,
            origin: Some("https://example.com"),
            protocols: &protocols,
            extensions: Some("permessage-deflate"),
            headers: &headers,
        };
        let mut out = Vec::new();
        request.write(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "GET /room?id=3 HTTP/1.1\r\nHost: [::1]:9001\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: https://example.com\r\nSec-WebSocket-Protocol: chat.v2, chat.v1\r\n\
             Sec-WebSocket-Extensions: permessage-deflate\r\nAuthorization: Bearer x\r\n\r\n"
        );
        assert_eq!(encode_key([0; 16]).len(), 24);
    }

    #[test]
    fn accepts_a_good_answer_in_any_chunking_and_keeps_what_follows() {
        let offer = Offer { key: KEY, ..Offer::default() };
        assert_eq!(check(GOOD, &offer), Ok(Accepted::default()));
        let limits = RequestLimits::default();
        let mut reader = ResponseReader::default();
        let stream = format!("{GOOD}\u{81}");
        let bytes = stream.as_bytes();
        for (i, byte) in bytes[..GOOD.len()].iter().enumerate() {
            let done = reader.push(std::slice::from_ref(byte), &limits).unwrap();
            assert_eq!(done.is_some(), i == GOOD.len() - 1);
        }
        let mut whole = ResponseReader::default();
        assert_eq!(whole.push(bytes, &limits), Ok(Some(GOOD.len())));
    }

    #[test]
    fn refuses_each_broken_rule_with_its_own_error() {
        let protocols = ["a".to_string(), "b".to_string()];
        let offer = Offer { key: KEY, protocols: &protocols, deflate: None };
        let cases = [
            (GOOD.replace("101 Switching Protocols", "403 Forbidden"), ResponseError::NotSwitching(403)),
            (GOOD.replace("Upgrade: websocket", "Upgrade: h2c"), ResponseError::UpgradeNotWebsocket),
            (GOOD.replace("Connection: Upgrade", "Connection: close"), ResponseError::ConnectionNotUpgrade),
            (GOOD.replace("xOo=", "xOA="), ResponseError::BadAccept),
            (with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), ResponseError::BadAccept),
            (with("Sec-WebSocket-Protocol: c"), ResponseError::UnofferedProtocol),
            (with("Sec-WebSocket-Protocol: a, b"), ResponseError::UnofferedProtocol),
            (with("Sec-WebSocket-Extensions: permessage-deflate"), ResponseError::UnofferedExtension),
            ("HTTP/1.1 abc\r\n\r\n".to_string(), ResponseError::Malformed),
        ];
        for (head, expected) in cases {
            assert_eq!(check(&head, &offer), Err(expected), "{head}");
        }
        assert_eq!(check(&with("Sec-WebSocket-Protocol: b"), &offer).unwrap().protocol.as_deref(), Some("b"));
    }

    #[test]
    fn checks_the_deflate_answer_against_the_offer() {
        let config = DeflateConfig::default();
        let offer = Offer { key: KEY, protocols: &[], deflate: Some(&config) };
        let agreed = check(&with("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=10"), &offer);
        assert_eq!(agreed.unwrap().deflate.unwrap().client_max_window_bits, Some(10));
        assert_eq!(check(GOOD, &offer).unwrap().deflate, None, "the server may decline");
        let cases = [
            ("Sec-WebSocket-Extensions: x-other", ResponseError::UnofferedExtension),
            ("Sec-WebSocket-Extensions: permessage-deflate; ;;", ResponseError::UnofferedExtension),
            (
                "Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate",
                ResponseError::Deflate(DeflateResponseError::Duplicate),
            ),
            (
                "Sec-WebSocket-Extensions: permessage-deflate; mystery",
                ResponseError::Deflate(DeflateResponseError::BadParameter),
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(check(&with(header), &offer), Err(expected), "{header}");
        }
    }

    #[test]
    fn caps_size_and_header_count() {
        let limits = RequestLimits { max_bytes: 64, max_headers: 2 };
        let mut reader = ResponseReader::default();
        assert_eq!(reader.push(&[b'a'; 65], &limits), Err(ResponseError::HeadTooLarge));
        let mut reader = ResponseReader::default();
        assert_eq!(
            reader.push(b"HTTP/1.1 101 OK\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n", &limits),
            Err(ResponseError::TooManyHeaders)
        );
    }
}
