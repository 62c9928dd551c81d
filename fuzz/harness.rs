//! The checks behind the fuzz targets, shared with `tests/fuzz_corpus.rs`.
//!
//! Each `check_*` function takes one fuzz input and panics if the engine
//! misbehaves on it. The fuzz targets in `fuzz_targets/` call them from
//! libFuzzer; `cargo test --test fuzz_corpus` replays every file of
//! `fuzz/corpus/<target>/` through the very same functions.
//!
//! Decoder inputs: byte 0 seeds the chunk sizes, byte 1 picks the limits and
//! the extension RSV bits (0 = defaults, no extension), the rest is the byte
//! stream from the peer. Handshake inputs: byte 0 picks the request limits and
//! seeds the chunk sizes, the rest is what the client sent. Inflate inputs:
//! byte 0 picks the limit, window and context takeover, the rest is a series
//! of compressed messages, each after its 16-bit length. Handshake response
//! inputs: byte 0 as for requests, byte 1 picks what the client offered, the
//! rest is what the server answered. Envelope inputs: the whole input is one
//! text message of the event layer (skipped unless UTF-8).

// Each fuzz target uses only one of the checks.
#![allow(dead_code)]

use emitws::proto::deflate::{Compressor, Decompressor, DeflateAgreement, DeflateConfig};
use emitws::proto::handshake::client::{Accepted, Offer, ResponseError, ResponseReader};
use emitws::proto::handshake::server::{self, HandshakeError, RequestLimits, RequestReader};
use emitws::proto::{Decoder, Event, Limits, Message, ProtocolError, Role};

/// The event layer's envelope check (feature `app`: without it the crate has
/// no event layer and no JSON crate to compare with).
#[cfg(feature = "app")]
#[path = "envelope_check.rs"]
mod envelope_check;
#[cfg(feature = "app")]
#[allow(unused_imports)] // each fuzz target uses one check of this file
pub use envelope_check::*;

/// The event layer's binary envelope check (`emitws.v2`, feature `app` as above).
#[cfg(feature = "app")]
#[path = "binary_check.rs"]
mod binary_check;
#[cfg(feature = "app")]
#[allow(unused_imports)] // each fuzz target uses one check of this file
pub use binary_check::*;

/// Streams at most this long are also decoded one byte at a time.
const BYTE_AT_A_TIME_MAX: usize = 2048;

/// Checks the server decoder (masked frames) on one input.
pub fn check_server_decoder(data: &[u8]) {
    check_decoder(Role::Server, data);
}

/// Checks the client decoder (unmasked frames) on one input.
pub fn check_client_decoder(data: &[u8]) {
    check_decoder(Role::Client, data);
}

/// An owned copy of a decoder event (or of the error that ended the stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    /// A message whose first frame had RSV1: (is text, payload still compressed).
    Compressed(bool, Vec<u8>),
    Error(ProtocolError),
}

/// Everything observable about one run of a decoder over a stream.
#[derive(Debug, PartialEq, Eq)]
pub struct DecoderRun {
    /// The events in order, ending with the first error if there was one.
    pub events: Vec<Owned>,
    /// `(is_idle, peer_closed)` after the last byte, if no error stopped the run.
    pub end_state: Option<(bool, bool)>,
}

/// The limits and extension RSV bits selected by the config byte.
///
/// 0 keeps the defaults; otherwise each two-bit field picks a small value, so
/// the 1009 paths (frame size, message size, fragment count) get fuzzed.
pub fn decoder_config(config: u8) -> (Limits, u8) {
    let default = Limits::default();
    let limits = default
        .max_frame_size([default.max_frame_size, 0, 5, 126][(config & 3) as usize])
        .max_message_size([default.max_message_size, 0, 7, 300][(config >> 2 & 3) as usize])
        .max_fragments([default.max_fragments, 1, 2, 3][(config >> 4 & 3) as usize]);
    let rsv = [0, 0b100, 0b001, 0b111][(config >> 6) as usize];
    (limits, rsv)
}

fn check_decoder(role: Role, data: &[u8]) {
    let [seed, config, ref stream @ ..] = *data else { return };
    let (limits, rsv) = decoder_config(config);
    let whole = run_decoder(role, rsv, &limits, stream, std::iter::once(stream.len().max(1)));
    let model = model_decoder(role, rsv, &limits, stream);
    assert_eq!(whole, model, "the decoder disagrees with the reference model ({role:?}, {limits:?}, rsv {rsv:#05b})");
    let chunked = run_decoder(role, rsv, &limits, stream, ChunkSizes::new(seed));
    assert_eq!(whole, chunked, "chunking changed the result ({role:?}, {limits:?}, rsv {rsv:#05b}, chunk seed {seed})");
    if stream.len() <= BYTE_AT_A_TIME_MAX {
        let singles = run_decoder(role, rsv, &limits, stream, std::iter::repeat(1));
        assert_eq!(
            whole, singles,
            "feeding one byte at a time changed the result ({role:?}, {limits:?}, rsv {rsv:#05b})"
        );
    }
}

/// Decodes `stream` fed in chunks of the given sizes, recording owned events
/// and checking the per-call contract of [`Decoder::decode`] on the way.
pub fn run_decoder(
    role: Role,
    rsv: u8,
    limits: &Limits,
    stream: &[u8],
    mut chunk_sizes: impl Iterator<Item = usize>,
) -> DecoderRun {
    let mut decoder = Decoder::new(role);
    decoder.allow_extension_rsv(rsv);
    let mut data = stream.to_vec();
    let mut events = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let size = chunk_sizes.next().expect("chunk sizes never run out").max(1);
        let end = (at + size).min(data.len());
        let mut pos = at;
        while pos < end {
            let input = &mut data[pos..end];
            let len = input.len();
            let event = match decoder.decode(input, limits) {
                Ok(decoded) => {
                    assert!(decoded.consumed <= len, "consumed {} of {len} bytes", decoded.consumed);
                    match decoded.event {
                        None => assert_eq!(decoded.consumed, len, "no event, yet not all input consumed"),
                        Some(_) => assert!(decoded.consumed > 0, "an event from no input"),
                    }
                    pos += decoded.consumed;
                    decoded.event.map(|event| to_owned(event, limits))
                }
                Err(error) => {
                    check_error(error);
                    events.push(Owned::Error(error));
                    return DecoderRun { events, end_state: None };
                }
            };
            if let Some(event) = event {
                if let Owned::Close(..) = event {
                    assert!(decoder.peer_closed(), "close event without peer_closed()");
                }
                events.push(event);
            }
        }
        // What the runtime does after each read; it must not change the result.
        decoder.release_buffers();
        at = end;
    }
    DecoderRun { events, end_state: Some((decoder.is_idle(), decoder.peer_closed())) }
}

/// A plain reference decoder, written from RFC 6455 over the whole stream at
/// once (no chunk machinery, no spill, std UTF-8 validation), with the error
/// precedence the engine documents: header rules in wire order, then masking,
/// RSV bits, fragmentation, the limits; invalid UTF-8 in a text message fails
/// as soon as the bytes received so far cannot start valid text.
pub fn model_decoder(role: Role, allowed_rsv: u8, limits: &Limits, stream: &[u8]) -> DecoderRun {
    struct InProgress {
        text: bool,
        compressed: bool,
        bytes: Vec<u8>,
        declared: u64,
        fragments: u32,
    }
    let mut events = Vec::new();
    let mut message: Option<InProgress> = None;
    let mut closed = false;
    let mut rest = stream;
    macro_rules! fail {
        ($error:expr) => {{
            events.push(Owned::Error($error));
            return DecoderRun { events, end_state: None };
        }};
    }
    let idle = loop {
        if rest.is_empty() {
            break message.is_none();
        }
        if closed {
            fail!(ProtocolError::DataAfterClose);
        }
        let [first, second, ..] = *rest else { break false };
        let (fin, rsv, opcode) = (first & 0x80 != 0, first >> 4 & 7, first & 0x0f);
        let control = opcode & 0x08 != 0;
        if !matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xa) {
            fail!(ProtocolError::ReservedOpcode(opcode));
        }
        let short_len = second & 0x7f;
        if control && short_len > 125 {
            fail!(ProtocolError::ControlFrameTooLong);
        }
        if control && !fin {
            fail!(ProtocolError::FragmentedControlFrame);
        }
        let masked = second & 0x80 != 0;
        let len_bytes = match short_len {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
        if rest.len() < header_len {
            break false;
        }
        let len = match short_len {
            126 => {
                let len = u64::from(u16::from_be_bytes([rest[2], rest[3]]));
                if len < 126 {
                    fail!(ProtocolError::NonMinimalLength);
                }
                len
            }
            127 => {
                let len = u64::from_be_bytes(rest[2..10].try_into().unwrap());
                if len >= 1 << 63 {
                    fail!(ProtocolError::LengthOverflow);
                }
                if len < 1 << 16 {
                    fail!(ProtocolError::NonMinimalLength);
                }
                len
            }
            len => u64::from(len),
        };
        match (role, masked) {
            (Role::Server, false) => fail!(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => fail!(ProtocolError::MaskedFrame),
            _ => {}
        }
        let allowed = if opcode == 0x1 || opcode == 0x2 { allowed_rsv } else { 0 };
        if rsv & !allowed != 0 {
            fail!(ProtocolError::ReservedBits(rsv));
        }
        if !control {
            match (opcode, message.is_some()) {
                (0x0, false) => fail!(ProtocolError::UnexpectedContinuation),
                (0x1 | 0x2, true) => fail!(ProtocolError::ExpectedContinuation),
                (0x0, true) => {}
                (_, false) => {
                    let (text, compressed) = (opcode == 0x1, rsv & 0b100 != 0);
                    message = Some(InProgress { text, compressed, bytes: Vec::new(), declared: 0, fragments: 0 })
                }
                _ => unreachable!(),
            }
            let message = message.as_mut().unwrap();
            if len > limits.max_frame_size {
                fail!(ProtocolError::FrameTooLarge);
            }
            message.declared += len;
            if message.declared > limits.max_message_size {
                fail!(ProtocolError::MessageTooLarge);
            }
            message.fragments += 1;
            if message.fragments > limits.max_fragments {
                fail!(ProtocolError::TooManyFragments);
            }
        }
        let key =
            masked.then(|| [rest[header_len - 4], rest[header_len - 3], rest[header_len - 2], rest[header_len - 1]]);
        let body = &rest[header_len..];
        let take = body.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        let mut payload = body[..take].to_vec();
        if let Some(key) = key {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        rest = &body[take..];
        let complete = take as u64 == len;
        if control {
            if !complete {
                break false;
            }
            let event = match opcode {
                0x9 => Owned::Ping(payload),
                0xa => Owned::Pong(payload),
                _ => {
                    closed = true;
                    match payload[..] {
                        [] => Owned::Close(None, String::new()),
                        [_] => fail!(ProtocolError::InvalidCloseFrame),
                        [high, low, ref reason @ ..] => {
                            let code = u16::from_be_bytes([high, low]);
                            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                                fail!(ProtocolError::InvalidCloseCode(code));
                            }
                            match std::str::from_utf8(reason) {
                                Ok(reason) => Owned::Close(Some(code), reason.to_owned()),
                                Err(_) => fail!(ProtocolError::InvalidUtf8),
                            }
                        }
                    }
                }
            };
            events.push(event);
            continue;
        }
        let in_progress = message.as_mut().unwrap();
        in_progress.bytes.extend_from_slice(&payload);
        if in_progress.text && !in_progress.compressed {
            if let Err(error) = std::str::from_utf8(&in_progress.bytes) {
                // error_len() is None when the bytes so far are a valid prefix.
                if error.error_len().is_some() || (complete && fin) {
                    fail!(ProtocolError::InvalidUtf8);
                }
            }
        }
        if !complete {
            break false;
        }
        if fin {
            let done = message.take().unwrap();
            events.push(match (done.compressed, done.text) {
                (true, text) => Owned::Compressed(text, done.bytes),
                (false, true) => Owned::Text(String::from_utf8(done.bytes).unwrap()),
                (false, false) => Owned::Binary(done.bytes),
            });
        }
    };
    DecoderRun { events, end_state: Some((idle, closed)) }
}

fn to_owned(event: Event<'_>, limits: &Limits) -> Owned {
    match event {
        Event::Message(message) => {
            assert!(message.as_bytes().len() as u64 <= limits.max_message_size, "message over the limit");
            match message {
                Message::Text(text) => {
                    assert!(std::str::from_utf8(text.as_bytes()).is_ok(), "text message is not UTF-8");
                    Owned::Text(text.to_owned())
                }
                Message::Binary(bytes) => Owned::Binary(bytes.to_vec()),
            }
        }
        Event::Compressed { text, payload } => {
            assert!(payload.len() as u64 <= limits.max_message_size, "message over the limit");
            Owned::Compressed(text, payload.to_vec())
        }
        Event::Ping(payload) => {
            assert!(payload.len() <= 125, "ping payload over 125 bytes");
            Owned::Ping(payload.to_vec())
        }
        Event::Pong(payload) => {
            assert!(payload.len() <= 125, "pong payload over 125 bytes");
            Owned::Pong(payload.to_vec())
        }
        Event::Close(code, reason) => {
            assert!(reason.len() <= 123, "close reason over 123 bytes");
            assert!(std::str::from_utf8(reason.as_bytes()).is_ok(), "close reason is not UTF-8");
            if let Some(code) = code {
                assert!(code.is_valid_on_wire(), "close code {code} is not valid on the wire");
            } else {
                assert!(reason.is_empty(), "a close reason without a code");
            }
            Owned::Close(code.map(|code| code.0), reason.to_owned())
        }
    }
}

fn check_error(error: ProtocolError) {
    let code = error.close_code().0;
    assert!(matches!(code, 1002 | 1007 | 1009), "{error:?} fails the connection with {code}");
    assert!(!error.to_string().is_empty());
}

/// Pseudo-random chunk sizes from a one-byte seed: mostly tiny, sometimes large.
pub struct ChunkSizes(u64);

impl ChunkSizes {
    pub fn new(seed: u8) -> ChunkSizes {
        // (seed + 1) times an odd constant is never zero, as xorshift needs.
        ChunkSizes((u64::from(seed) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

impl Iterator for ChunkSizes {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let r = self.0 >> 8;
        let bound = match self.0 % 8 {
            0..=3 => 4,
            4 | 5 => 32,
            6 => 300,
            _ => 70_000,
        };
        Some(1 + (r % bound) as usize)
    }
}

/// Checks the handshake request reader and validation on one input.
pub fn check_handshake_request(data: &[u8]) {
    let [config, ref head @ ..] = *data else { return };
    let limits = request_limits(config);
    let whole = read_request(head, &limits, std::iter::once(head.len().max(1)));
    let singles = read_request(head, &limits, std::iter::repeat(1));
    assert_eq!(whole, singles, "pushing one byte at a time changed the outcome ({limits:?})");
    let chunked = read_request(head, &limits, ChunkSizes::new(config));
    assert_eq!(whole, chunked, "pushing in chunks changed the outcome ({limits:?}, chunk seed {config})");
}

/// The request limits selected by the config byte (0 = defaults).
pub fn request_limits(config: u8) -> RequestLimits {
    let default = RequestLimits::default();
    RequestLimits {
        max_bytes: [default.max_bytes, 0, 1, 20, 64, 128, 512, 1024][(config & 7) as usize],
        max_headers: [default.max_headers, 0, 1, 2, 3, 8, 16, 100][(config >> 3 & 7) as usize],
    }
}

/// Everything observable about reading one request head.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadOutcome {
    /// All input was pushed and the head is still incomplete.
    Incomplete,
    /// `push` refused the head.
    Refused(HandshakeError),
    /// The head is complete after `used` bytes; then it parsed (or not).
    Complete { used: usize, request: Result<ParsedRequest, HandshakeError> },
}

/// An owned summary of a parsed [`server::HttpRequest`].
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub is_websocket_upgrade: bool,
    pub upgrade: Result<UpgradeSummary, HandshakeError>,
}

/// An owned summary of a valid [`server::Upgrade`].
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeSummary {
    pub accept_key: String,
    pub protocols: Vec<String>,
    pub extensions: Vec<ExtensionSummary>,
}

/// One extension offer: its name and its parameters (name, optional value).
pub type ExtensionSummary = (String, Vec<(String, Option<String>)>);

/// Feeds `head` to an incremental head reader (`push`) in chunks of the given
/// sizes: `Some(bytes used)` once the head is complete, `None` if it never is.
fn push_in_chunks<E>(
    head: &[u8],
    mut chunk_sizes: impl Iterator<Item = usize>,
    mut push: impl FnMut(&[u8]) -> Result<Option<usize>, E>,
) -> Result<Option<usize>, E> {
    let mut at = 0;
    while at < head.len() {
        let size = chunk_sizes.next().expect("chunk sizes never run out").max(1);
        let end = (at + size).min(head.len());
        if let Some(used) = push(&head[at..end])? {
            assert!(used >= 1 && at + used <= end, "used {used} of a {}-byte chunk", end - at);
            return Ok(Some(at + used));
        }
        at = end;
    }
    Ok(None)
}

/// Pushes `head` into a fresh reader in chunks of the given sizes and records
/// the outcome, checking the request's accessors on the way.
pub fn read_request(head: &[u8], limits: &RequestLimits, chunk_sizes: impl Iterator<Item = usize>) -> HeadOutcome {
    let mut reader = RequestReader::default();
    let used = match push_in_chunks(head, chunk_sizes, |chunk| reader.push(chunk, limits)) {
        Ok(Some(used)) => used,
        Ok(None) => return HeadOutcome::Incomplete,
        Err(error) => {
            check_handshake_error(error);
            return HeadOutcome::Refused(error);
        }
    };
    assert!(used <= limits.max_bytes, "a {used}-byte head accepted over a limit of {}", limits.max_bytes);
    assert_eq!(head[used - 1], b'\n', "the head must end at a line feed");
    let request = reader.request(limits).map(|request| summarize(&request, &head[..used]));
    if let Err(error) = request {
        check_handshake_error(error);
    }
    HeadOutcome::Complete { used, request }
}

fn summarize(request: &server::HttpRequest<'_>, head: &[u8]) -> ParsedRequest {
    let path = request.path();
    let query = request.query();
    assert!(!path.contains('?'), "path {path:?} contains the query");
    let headers = request.headers();
    for (name, value) in headers {
        let first = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
        assert_eq!(request.header(name), first, "header({name:?})");
        assert_eq!(
            request.header_values(name).count(),
            headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
        );
        // The helpers the runtime uses on header values must cope with anything.
        let _ = server::has_token(value, "upgrade");
        for offer in server::parse_extensions(value) {
            check_extension_name(offer.name);
        }
    }
    let is_websocket_upgrade = request.is_websocket_upgrade();
    let values = |name: &str| headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v).collect();
    let keys: Vec<&[u8]> = values("sec-websocket-key");
    let model_is_upgrade = values("upgrade").iter().any(|v| model_has_token(v, "websocket")) || !keys.is_empty();
    assert_eq!(is_websocket_upgrade, model_is_upgrade, "is_websocket_upgrade() disagrees with the model");
    let expected = model_websocket(request.method(), head, &values);
    let upgrade = request.websocket();
    assert_eq!(upgrade.as_ref().err(), expected.err().as_ref(), "websocket() disagrees with RFC 6455 §4.2.1");
    let upgrade = upgrade.map(|upgrade| {
        assert!(is_websocket_upgrade, "a valid upgrade that is_websocket_upgrade() denies");
        let accept_key = upgrade.accept_key();
        assert_eq!(accept_key.len(), 28, "accept key {accept_key:?}");
        let protocols: Vec<String> = upgrade.protocols().map(str::to_owned).collect();
        let model_protocols: Vec<String> = values("sec-websocket-protocol")
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(model_trim)
            .filter(|item| !item.is_empty())
            .filter_map(|item| std::str::from_utf8(item).ok().map(str::to_owned))
            .collect();
        assert_eq!(protocols, model_protocols, "protocols()");
        let extensions = upgrade
            .extensions()
            .map(|offer| {
                check_extension_name(offer.name);
                let params = offer.params.iter().map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned))).collect();
                (offer.name.to_owned(), params)
            })
            .collect();
        UpgradeSummary { accept_key, protocols, extensions }
    });
    if let Err(error) = upgrade {
        check_handshake_error(error);
    }
    ParsedRequest {
        method: request.method().to_owned(),
        path: path.to_owned(),
        query: query.map(str::to_owned),
        headers: headers.iter().map(|(n, v)| ((*n).to_owned(), v.to_vec())).collect(),
        is_websocket_upgrade,
        upgrade,
    }
}

/// RFC 6455 §4.2.1, checked in the order the engine documents its errors.
/// Only the error is modelled; the success value is checked piecewise.
fn model_websocket<'a>(
    method: &str,
    head: &[u8],
    values: &dyn Fn(&str) -> Vec<&'a [u8]>,
) -> Result<(), HandshakeError> {
    // The request line is the first non-empty line (empty lines before it
    // are skipped), and httparse accepted only "HTTP/1.0" or "HTTP/1.1".
    let line = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .find(|line| !line.is_empty())
        .expect("a request line");
    let version = *line.last().expect("a version");
    if method != "GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if version < b'1' {
        return Err(HandshakeError::OldHttpVersion);
    }
    if values("host").len() != 1 {
        return Err(HandshakeError::BadHost);
    }
    if !values("upgrade").iter().any(|v| model_has_token(v, "websocket")) {
        return Err(HandshakeError::UpgradeNotWebsocket);
    }
    if !values("connection").iter().any(|v| model_has_token(v, "upgrade")) {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    if !matches!(values("sec-websocket-version")[..], [v] if model_trim(v) == b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    // 16 bytes in canonical padded base64: 21 free characters, a 22nd whose
    // low 4 bits are zero, then "==".
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    let good_key = |key: &[u8]| {
        key.len() == 24 && key[..21].iter().all(is_b64) && b"AQgw".contains(&key[21]) && &key[22..] == b"=="
    };
    match values("sec-websocket-key")[..] {
        [key] if good_key(model_trim(key)) => Ok(()),
        _ => Err(HandshakeError::BadKey),
    }
}

fn model_has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|item| model_trim(item).eq_ignore_ascii_case(token.as_bytes()))
}

fn model_trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

fn check_extension_name(name: &str) {
    assert!(!name.is_empty(), "an extension offer with an empty name");
    assert!(!name.contains([',', ';', ' ', '"']), "extension name {name:?} is not a token");
}

fn check_handshake_error(error: HandshakeError) {
    assert!(matches!(error.status(), 400 | 403 | 426 | 431), "{error:?}");
    let mut response = Vec::new();
    error.write_response(&mut response);
    assert!(response.starts_with(b"HTTP/1.1 4"));
}

/// Checks the permessage-deflate decompressor on one input: byte 0 picks the
/// size limit, the window and context takeover (see [`inflate_config`]); the
/// rest is a sequence of messages, each a 16-bit big-endian length and that
/// many bytes of compressed payload, inflated in order as one connection would.
pub fn check_inflate(data: &[u8]) {
    let [config, ref rest @ ..] = *data else { return };
    let (agreement, limit) = inflate_config(config);
    let mut decompressor = Decompressor::new(&agreement, Role::Server);
    let mut rest = rest;
    while let [high, low, ref tail @ ..] = *rest {
        let len = usize::from(u16::from_be_bytes([high, low]));
        let (payload, next) = tail.split_at(len.min(tail.len()));
        rest = next;
        let mut out = Vec::new();
        match decompressor.decompress(payload, &mut out, limit) {
            Ok(()) => {
                assert!(out.len() <= limit, "{} bytes inflated past a limit of {limit}", out.len());
                assert_roundtrip(&out);
            }
            Err(error) => {
                assert!(
                    matches!(error, ProtocolError::MessageTooLarge | ProtocolError::InvalidCompressedData),
                    "unexpected {error:?}"
                );
                let most = limit.saturating_add(1);
                assert!(out.capacity() <= most, "{} bytes held for a limit of {limit}", out.capacity());
                check_error(error);
                return; // The connection is failed here.
            }
        }
    }
}

/// The agreement (what the client may do) and size limit selected by `config`:
/// bits 0-1 the limit, bits 2-4 the client's window (9-15), bit 5 no context takeover.
pub fn inflate_config(config: u8) -> (DeflateAgreement, usize) {
    let limit = [1 << 20, 0, 100, usize::MAX][(config & 3) as usize];
    let window = 9 + (config >> 2 & 7).min(6);
    let agreement = DeflateAgreement {
        client_no_context_takeover: config & 0x20 != 0,
        client_max_window_bits: Some(window),
        ..DeflateAgreement::default()
    };
    (agreement, limit)
}

/// Whatever inflated must survive our own compressor and decompressor unchanged.
fn assert_roundtrip(message: &[u8]) {
    let agreement = DeflateAgreement::default();
    let mut compressor = Compressor::new(&agreement, Role::Server, &DeflateConfig::default());
    let mut wire = Vec::new();
    compressor.compress(message, &mut wire);
    let mut out = Vec::new();
    Decompressor::new(&agreement, Role::Client)
        .decompress(&wire, &mut out, message.len())
        .expect("own output inflates");
    assert_eq!(out, message, "round trip changed the message");
}

/// The key every `handshake_response` input is checked against (RFC 6455 §1.3's sample).
pub const RESPONSE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RESPONSE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Checks the client's response reader and validation on one input: byte 0
/// picks the limits and seeds the chunk sizes (as for `handshake_request`),
/// byte 1 what was offered (bit 0: subprotocols `chat` and `superchat`;
/// bit 1: permessage-deflate with the defaults; bit 2: with low-memory
/// settings), the rest is what the server answered.
pub fn check_handshake_response(data: &[u8]) {
    let [config, offered, ref head @ ..] = *data else { return };
    let limits = request_limits(config);
    let protocols = if offered & 1 != 0 { vec!["chat".to_string(), "superchat".to_string()] } else { Vec::new() };
    let deflate = match offered >> 1 & 3 {
        0 => None,
        2 => Some(DeflateConfig::low_memory()),
        _ => Some(DeflateConfig::default()),
    };
    let offer = Offer { key: RESPONSE_KEY, protocols: &protocols, deflate: deflate.as_ref() };
    let whole = read_response(head, &limits, &offer, std::iter::once(head.len().max(1)));
    let singles = read_response(head, &limits, &offer, std::iter::repeat(1));
    assert_eq!(whole, singles, "pushing one byte at a time changed the outcome ({limits:?})");
    let chunked = read_response(head, &limits, &offer, ChunkSizes::new(config));
    assert_eq!(whole, chunked, "pushing in chunks changed the outcome ({limits:?}, chunk seed {config})");
}

/// Everything observable about reading one response head.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseOutcome {
    /// All input was pushed and the head is still incomplete.
    Incomplete,
    /// `push` refused the head.
    Refused(ResponseError),
    /// The head is complete after `used` bytes: its status and headers, and the verdict on it.
    Complete {
        used: usize,
        parsed: Result<ResponseHead, ResponseError>,
        verdict: Option<Result<Accepted, ResponseError>>,
    },
}

/// A parsed response head, owned: the status and the headers.
pub type ResponseHead = (u16, Vec<(String, Vec<u8>)>);

fn read_response(
    head: &[u8],
    limits: &RequestLimits,
    offer: &Offer<'_>,
    chunk_sizes: impl Iterator<Item = usize>,
) -> ResponseOutcome {
    let mut reader = ResponseReader::default();
    let used = match push_in_chunks(head, chunk_sizes, |chunk| reader.push(chunk, limits)) {
        Ok(Some(used)) => used,
        Ok(None) => return ResponseOutcome::Incomplete,
        Err(error) => {
            assert!(matches!(error, ResponseError::HeadTooLarge | ResponseError::TooManyHeaders), "{error:?}");
            return ResponseOutcome::Refused(error);
        }
    };
    assert!(used <= limits.max_bytes, "a {used}-byte head accepted over a limit of {}", limits.max_bytes);
    assert_eq!(head[used - 1], b'\n', "the head must end at a line feed");
    let response = match reader.response(limits) {
        Ok(response) => response,
        Err(error) => return ResponseOutcome::Complete { used, parsed: Err(error), verdict: None },
    };
    let _ = response.content_length();
    let verdict = response.validate(offer);
    let values = |name: &str| -> Vec<&[u8]> { response.header_values(name).collect() };
    match &verdict {
        Ok(accepted) => {
            assert_eq!(response.status(), 101, "accepted without 101");
            assert!(values("upgrade").iter().any(|v| model_has_token(v, "websocket")), "accepted without Upgrade");
            assert!(values("connection").iter().any(|v| model_has_token(v, "upgrade")), "accepted without Connection");
            assert!(
                matches!(values("sec-websocket-accept")[..], [v] if model_trim(v) == RESPONSE_ACCEPT.as_bytes()),
                "accepted a wrong Sec-WebSocket-Accept"
            );
            if let Some(protocol) = &accepted.protocol {
                assert!(offer.protocols.contains(protocol), "accepted unoffered subprotocol {protocol:?}");
            }
            assert!(accepted.deflate.is_none() || offer.deflate.is_some(), "accepted unoffered permessage-deflate");
        }
        Err(ResponseError::NotSwitching(status)) => assert_eq!(*status, response.status()),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    let headers = response.headers().iter().map(|(n, v)| ((*n).to_owned(), v.to_vec())).collect();
    ResponseOutcome::Complete { used, parsed: Ok((response.status(), headers)), verdict: Some(verdict) }
}
