//! permessage-deflate (RFC 7692): negotiation and the per-message codec.
//!
//! Negotiation works on the offers [`parse_extensions`](crate::proto::handshake::server::parse_extensions) returns:
//! a server picks the first offer it can honour ([`accept_offer`]); a client
//! sends [`client_offer`] and checks the answer with [`accept_response`]. Both
//! end with a [`DeflateAgreement`], from which each side builds its
//! [`Compressor`] (what it sends) and [`Decompressor`] (what it receives).
//!
//! The codec runs on zlib-rs, a memory-safe zlib in Rust and the backend
//! flate2 uses with its `zlib-rs` feature. We call it directly rather than
//! through flate2 because flate2's `Compress` cannot set zlib's memory level,
//! which is the main memory-against-ratio dial a server with many compressed
//! connections needs. zlib cannot produce a raw deflate stream with an 8-bit
//! (256-byte) window, so a peer that insists on one for our direction is
//! declined, and an 8-bit window the peer uses is inflated with 9 bits, which
//! reads any stream an 8-bit window writes.
//!
//! ```
//! use emitws::proto::deflate::{accept_offer, Compressor, DeflateConfig, Decompressor};
//! use emitws::proto::handshake::server::parse_extensions;
//! use emitws::proto::Role;
//!
//! let config = DeflateConfig::default();
//! let offers = parse_extensions(b"permessage-deflate; client_max_window_bits");
//! let agreement = accept_offer(&offers, &config).unwrap();
//! assert_eq!(agreement.to_string(), "permessage-deflate");
//!
//! let mut server = Compressor::new(&agreement, Role::Server, &config);
//! let mut client = Decompressor::new(&agreement, Role::Client);
//! let mut wire = Vec::new();
//! server.compress(b"hello hello hello", &mut wire);
//! let mut message = Vec::new();
//! client.decompress(&wire, &mut message, 1 << 20).unwrap();
//! assert_eq!(message, b"hello hello hello");
//! ```
//!
//! [`handshake::parse_extensions`]: super::handshake::server::parse_extensions

use std::fmt;
use std::mem::MaybeUninit;

use zlib_rs::{Deflate, DeflateConfig as ZlibConfig, DeflateFlush, Inflate, InflateFlush};

use super::handshake::server::ExtensionOffer;
use super::{ProtocolError, Role};

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The four bytes a sync flush ends with; stripped on send, restored on receive.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A non-final stored block of no bytes: what a sync flush ends with.
const EMPTY_STORED_BLOCK: [u8; 5] = [0x00, 0x00, 0x00, 0xff, 0xff];

/// The smallest window zlib can write a raw deflate stream with.
const MIN_COMPRESS_WINDOW: u8 = 9;

/// How this endpoint wants to compress. The defaults favour ratio; lower
/// `window_bits` and `mem_level`, or turn context takeover off, to spend less
/// memory per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// The window our compressor uses, 9–15 (default 15: 32 KiB). Lowered
    /// further if the peer asks for less.
    pub window_bits: u8,
    /// The largest window we let the peer compress with, 8–15 (default 15).
    /// Ours to request: a server can only impose it on a client that offered
    /// `client_max_window_bits`.
    pub peer_window_bits: u8,
    /// Keep our compression context between messages (default true). Off,
    /// each message compresses alone and the compressor can be dropped or
    /// reused by another connection between messages.
    pub context_takeover: bool,
    /// Let the peer keep its context between messages (default true). Off,
    /// we ask it not to, and our decompressor holds no state between messages.
    pub peer_context_takeover: bool,
    /// zlib's compression level, 0–9 (default 6).
    pub level: u8,
    /// zlib's memory level, 1–9 (default 8). Each step down halves the hash
    /// table and the pending buffer, trading ratio and speed for memory.
    pub mem_level: u8,
    /// Messages shorter than this are sent uncompressed (default 128 bytes).
    pub min_size: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            window_bits: 15,
            peer_window_bits: 15,
            context_takeover: true,
            peer_context_takeover: true,
            level: 6,
            mem_level: 8,
            min_size: 128,
        }
    }
}

impl DeflateConfig {
    /// The settings that use the least memory: 9-bit windows, memory level 1,
    /// no context takeover in either direction.
    ///
    /// ```
    /// let config = emitws::proto::deflate::DeflateConfig::low_memory();
    /// assert_eq!((config.window_bits, config.mem_level), (9, 1));
    /// ```
    pub fn low_memory() -> Self {
        DeflateConfig {
            window_bits: 9,
            peer_window_bits: 9,
            context_takeover: false,
            peer_context_takeover: false,
            mem_level: 1,
            ..DeflateConfig::default()
        }
    }

    fn compress_window(&self) -> u8 {
        self.window_bits.clamp(MIN_COMPRESS_WINDOW, 15)
    }

    fn peer_window(&self) -> u8 {
        self.peer_window_bits.clamp(8, 15)
    }
}

/// The parameters both ends agreed on, in RFC 7692's terms. Its `Display`
/// is the `Sec-WebSocket-Extensions` value a server answers with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeflateAgreement {
    /// The server resets its compression context after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after every message.
    pub client_no_context_takeover: bool,
    /// The largest window the server compresses with, if limited.
    pub server_max_window_bits: Option<u8>,
    /// The largest window the client compresses with, if limited.
    pub client_max_window_bits: Option<u8>,
}

impl DeflateAgreement {
    /// Whether `role`'s compressor resets after every message.
    pub fn resets_after_message(&self, role: Role) -> bool {
        match role {
            Role::Server => self.server_no_context_takeover,
            Role::Client => self.client_no_context_takeover,
        }
    }

    /// The window `role` compresses with, at most.
    pub fn window_bits(&self, role: Role) -> u8 {
        match role {
            Role::Server => self.server_max_window_bits,
            Role::Client => self.client_max_window_bits,
        }
        .unwrap_or(15)
    }
}

impl fmt::Display for DeflateAgreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXTENSION_NAME)?;
        if self.server_no_context_takeover {
            f.write_str("; server_no_context_takeover")?;
        }
        if self.client_no_context_takeover {
            f.write_str("; client_no_context_takeover")?;
        }
        if let Some(bits) = self.server_max_window_bits {
            write!(f, "; server_max_window_bits={bits}")?;
        }
        if let Some(bits) = self.client_max_window_bits {
            write!(f, "; client_max_window_bits={bits}")?;
        }
        Ok(())
    }
}

/// The parameters of one permessage-deflate offer or response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in an offer only).
    client_max_window_bits: Option<Option<u8>>,
}

/// Reads the parameters of a permessage-deflate element. A duplicate, an
/// unknown name or a bad value makes the whole element invalid (RFC 7692 §7.1).
fn parse_params(offer: &ExtensionOffer<'_>) -> Option<Params> {
    let mut params = Params::default();
    for &(name, value) in &offer.params {
        match (name, value) {
            ("server_no_context_takeover", None) if !params.server_no_context_takeover => {
                params.server_no_context_takeover = true;
            }
            ("client_no_context_takeover", None) if !params.client_no_context_takeover => {
                params.client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(value)) if params.server_max_window_bits.is_none() => {
                params.server_max_window_bits = Some(window_bits(value)?);
            }
            ("client_max_window_bits", value) if params.client_max_window_bits.is_none() => {
                params.client_max_window_bits = Some(match value {
                    Some(value) => Some(window_bits(value)?),
                    None => None,
                });
            }
            _ => return None,
        }
    }
    Some(params)
}

/// A window size: a decimal 8–15 without leading zeros.
fn window_bits(value: &str) -> Option<u8> {
    match value.as_bytes() {
        [b'8'] => Some(8),
        [b'9'] => Some(9),
        [b'1', digit @ b'0'..=b'5'] => Some(10 + digit - b'0'),
        _ => None,
    }
}

/// Server side: picks the first permessage-deflate offer that `config` can
/// honour and returns what to answer. `None` when no offer is acceptable (the
/// connection then runs uncompressed).
///
/// ```
/// use emitws::proto::deflate::{accept_offer, DeflateConfig};
/// use emitws::proto::handshake::server::parse_extensions;
/// let offers = parse_extensions(
///     b"permessage-deflate; server_max_window_bits=8, permessage-deflate; server_no_context_takeover",
/// );
/// // zlib cannot compress with an 8-bit window, so the second offer wins.
/// let agreement = accept_offer(&offers, &DeflateConfig::default()).unwrap();
/// assert_eq!(agreement.to_string(), "permessage-deflate; server_no_context_takeover");
/// ```
pub fn accept_offer(offers: &[ExtensionOffer<'_>], config: &DeflateConfig) -> Option<DeflateAgreement> {
    offers.iter().filter(|offer| offer.name.eq_ignore_ascii_case(EXTENSION_NAME)).find_map(|offer| {
        let params = parse_params(offer)?;
        let our_window = match params.server_max_window_bits {
            Some(asked) if asked < MIN_COMPRESS_WINDOW => return None,
            Some(asked) => asked.min(config.compress_window()),
            None => config.compress_window(),
        };
        let peer_window = match params.client_max_window_bits {
            Some(offered) => Some(offered.unwrap_or(15).min(config.peer_window())).filter(|&bits| bits < 15),
            None => None,
        };
        Some(DeflateAgreement {
            server_no_context_takeover: params.server_no_context_takeover || !config.context_takeover,
            client_no_context_takeover: params.client_no_context_takeover || !config.peer_context_takeover,
            server_max_window_bits: (params.server_max_window_bits.is_some() || our_window < 15).then_some(our_window),
            client_max_window_bits: peer_window,
        })
    })
}

/// Client side: the `Sec-WebSocket-Extensions` value to offer.
///
/// ```
/// use emitws::proto::deflate::{client_offer, DeflateConfig};
/// assert_eq!(client_offer(&DeflateConfig::default()), "permessage-deflate; client_max_window_bits");
/// ```
pub fn client_offer(config: &DeflateConfig) -> String {
    let mut offer = String::from(EXTENSION_NAME);
    if !config.peer_context_takeover {
        offer.push_str("; server_no_context_takeover");
    }
    if !config.context_takeover {
        offer.push_str("; client_no_context_takeover");
    }
    if config.peer_window() < 15 {
        offer.push_str(&format!("; server_max_window_bits={}", config.peer_window()));
    }
    match config.compress_window() {
        15 => offer.push_str("; client_max_window_bits"),
        bits => offer.push_str(&format!("; client_max_window_bits={bits}")),
    }
    offer
}

/// Why a client refuses a server's permessage-deflate answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeflateResponseError {
    /// A duplicate, unknown or malformed parameter.
    BadParameter,
    /// More than one permessage-deflate element.
    Duplicate,
    /// The server dropped a parameter the offer required it to answer.
    IgnoredRequest,
    /// A window larger than we asked for, or one of 8 bits for our
    /// compressor, which zlib cannot produce.
    BadWindow,
}

impl fmt::Display for DeflateResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeflateResponseError::BadParameter => "malformed permessage-deflate parameters",
            DeflateResponseError::Duplicate => "permessage-deflate accepted twice",
            DeflateResponseError::IgnoredRequest => "permessage-deflate answer ignores a parameter we required",
            DeflateResponseError::BadWindow => "permessage-deflate answer sets a window we cannot use",
        })
    }
}

impl std::error::Error for DeflateResponseError {}

/// Client side: checks the server's permessage-deflate answer (the element
/// named permessage-deflate from its `Sec-WebSocket-Extensions`) against
/// what [`client_offer`] sent.
///
/// ```
/// use emitws::proto::deflate::{accept_response, DeflateConfig, DeflateResponseError};
/// use emitws::proto::handshake::server::parse_extensions;
/// let config = DeflateConfig::default();
/// let answer = parse_extensions(b"permessage-deflate; client_max_window_bits=10");
/// assert_eq!(accept_response(&answer[0], &config).unwrap().client_max_window_bits, Some(10));
/// let answer = parse_extensions(b"permessage-deflate; client_max_window_bits");
/// assert_eq!(accept_response(&answer[0], &config), Err(DeflateResponseError::BadParameter));
/// ```
pub fn accept_response(
    answer: &ExtensionOffer<'_>,
    config: &DeflateConfig,
) -> Result<DeflateAgreement, DeflateResponseError> {
    let params = parse_params(answer).ok_or(DeflateResponseError::BadParameter)?;
    let client_max_window_bits = match params.client_max_window_bits {
        Some(None) => return Err(DeflateResponseError::BadParameter),
        Some(Some(bits)) if bits < MIN_COMPRESS_WINDOW => return Err(DeflateResponseError::BadWindow),
        Some(Some(bits)) => Some(bits),
        None => None,
    };
    if !config.peer_context_takeover && !params.server_no_context_takeover {
        return Err(DeflateResponseError::IgnoredRequest);
    }
    if config.peer_window() < 15 {
        match params.server_max_window_bits {
            None => return Err(DeflateResponseError::IgnoredRequest),
            Some(bits) if bits > config.peer_window() => return Err(DeflateResponseError::BadWindow),
            Some(_) => {}
        }
    }
    Ok(DeflateAgreement {
        server_no_context_takeover: params.server_no_context_takeover,
        client_no_context_takeover: params.client_no_context_takeover || !config.context_takeover,
        server_max_window_bits: params.server_max_window_bits,
        client_max_window_bits,
    })
}

/// Compresses the messages one end sends.
///
/// Holds zlib's compression state: with the defaults about 256 KiB (a 32 KiB
/// window twice over, plus hash chains and buffers sized by `mem_level`), at
/// [`DeflateConfig::low_memory`] a few KiB.
pub struct Compressor {
    stream: Deflate,
    reset_after_message: bool,
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor").field("reset_after_message", &self.reset_after_message).finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor for `role`'s side of `agreement`, with `config`'s level
    /// and memory level. Allocates zlib's state, so create it when the first
    /// message needs it.
    pub fn new(agreement: &DeflateAgreement, role: Role, config: &DeflateConfig) -> Self {
        let window = agreement.window_bits(role).min(config.compress_window()).max(MIN_COMPRESS_WINDOW);
        let stream = Deflate::new_with_config(ZlibConfig {
            level: i32::from(config.level.min(9)),
            window_bits: -i32::from(window),
            mem_level: i32::from(config.mem_level.clamp(1, 9)),
            ..ZlibConfig::default()
        });
        let reset_after_message = agreement.resets_after_message(role) || !config.context_takeover;
        Compressor { stream, reset_after_message }
    }

    /// Whether the context is reset after each message, so the compressor
    /// holds nothing between messages and may be shared.
    pub fn resets_after_message(&self) -> bool {
        self.reset_after_message
    }

    /// Appends the compressed form of `message` to `out`, without the
    /// trailing `00 00 ff ff` (RFC 7692 §7.2.1).
    #[allow(unsafe_code)] // `set_len` over what zlib wrote into the spare capacity
    pub fn compress(&mut self, message: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let mut input = message;
        loop {
            // A sync flush of incompressible data grows it by a few bytes per block.
            out.reserve(input.len() + input.len() / 64 + 64);
            let spare = out.spare_capacity_mut();
            let (in_before, out_before) = (self.stream.total_in(), self.stream.total_out());
            // Only a misconfigured stream errs, and every setting is clamped above.
            let status = self.stream.compress_uninit(input, spare, DeflateFlush::SyncFlush);
            debug_assert!(status.is_ok(), "deflate failed: {status:?}");
            let read = (self.stream.total_in() - in_before) as usize;
            let written = (self.stream.total_out() - out_before) as usize;
            // SAFETY: zlib initialised the first `written` bytes of the spare capacity.
            unsafe { out.set_len(out.len() + written) };
            input = &input[read..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.len() == start {
            // zlib writes nothing for an empty message right after a flush,
            // but the receiver appends the tail to every payload (RFC 7692
            // §7.2.2): without a block of its own, the tail would open a
            // stored block there and swallow the next message. An empty
            // stored block leaves the single byte 00 (§7.2.3.6) and the
            // stream byte-aligned at a block boundary, as zlib left it.
            out.extend_from_slice(&EMPTY_STORED_BLOCK);
        }
        debug_assert!(out[start..].ends_with(&SYNC_TAIL), "a sync flush ends with an empty stored block");
        out.truncate(out.len() - SYNC_TAIL.len());
        if self.reset_after_message {
            self.stream.reset();
        }
    }
}

/// Inflates the messages one end receives, under a size limit.
pub struct Decompressor {
    stream: Inflate,
    window: u8,
    reset_after_message: bool,
}

impl fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decompressor")
            .field("window", &self.window)
            .field("reset_after_message", &self.reset_after_message)
            .finish_non_exhaustive()
    }
}

/// How much output to add per inflate step: enough to keep calls few, small
/// enough that a bomb is caught soon after it crosses the limit.
const INFLATE_STEP: usize = 16 << 10;

impl Decompressor {
    /// A decompressor for what the peer of `role` sends under `agreement`.
    pub fn new(agreement: &DeflateAgreement, role: Role) -> Self {
        let peer = match role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        let window = agreement.window_bits(peer).max(MIN_COMPRESS_WINDOW);
        let reset_after_message = agreement.resets_after_message(peer);
        Decompressor { stream: Inflate::new(false, window), window, reset_after_message }
    }

    /// Whether the peer resets its context after each message, so this
    /// decompressor holds nothing between messages.
    pub fn resets_after_message(&self) -> bool {
        self.reset_after_message
    }

    /// Inflates one message's payload (all its frames, joined) and appends
    /// the result to `out`. Fails with [`ProtocolError::MessageTooLarge`] as
    /// soon as the output would pass `max_size` bytes (`out` never grows
    /// past one byte over the limit), and with
    /// [`ProtocolError::InvalidCompressedData`] on corrupt input.
    pub fn decompress(&mut self, payload: &[u8], out: &mut Vec<u8>, max_size: usize) -> Result<(), ProtocolError> {
        let limit = out.len().saturating_add(max_size);
        // A message may end with a final block (RFC 7692 §7.2.3.5); then the
        // tail is not needed and the next message starts a new stream.
        let result = match self.inflate(payload, out, limit) {
            Ok(false) => self.inflate(&SYNC_TAIL, out, limit),
            other => other,
        };
        if self.reset_after_message || !matches!(result, Ok(false)) {
            self.reset();
        }
        result.map(|_| ())
    }

    /// Inflates `input` into `out` up to index `limit`; returns whether the
    /// stream ended with a final block.
    #[allow(unsafe_code)] // `set_len` over what zlib wrote into the spare capacity
    fn inflate(&mut self, mut input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<bool, ProtocolError> {
        // One byte past the limit is enough to tell that the limit was crossed.
        let end = limit.saturating_add(1);
        loop {
            if out.len() == out.capacity() {
                // Doubling, as Vec would, but never past `end`.
                let grow = out.len().max(INFLATE_STEP).min(end - out.len());
                out.reserve_exact(grow);
            }
            let spare = spare_up_to(out, end);
            let (in_before, out_before) = (self.stream.total_in(), self.stream.total_out());
            let status = self.stream.decompress_uninit(input, spare, InflateFlush::SyncFlush);
            let read = (self.stream.total_in() - in_before) as usize;
            let written = (self.stream.total_out() - out_before) as usize;
            // SAFETY: zlib initialised the first `written` bytes of the spare capacity.
            unsafe { out.set_len(out.len() + written) };
            input = &input[read..];
            if out.len() > limit {
                return Err(ProtocolError::MessageTooLarge);
            }
            match status {
                Ok(zlib_rs::Status::StreamEnd) if !input.is_empty() => {
                    return Err(ProtocolError::InvalidCompressedData)
                }
                Ok(zlib_rs::Status::StreamEnd) => return Ok(true),
                // Input used up and room left over: zlib has nothing more to give.
                Ok(_) if input.is_empty() && out.len() < out.capacity() => return Ok(false),
                Ok(_) => {}
                Err(_) => return Err(ProtocolError::InvalidCompressedData),
            }
            // No progress with input left: the output filled up, so grow it.
            if read == 0 && written == 0 && out.len() < out.capacity() {
                return Err(ProtocolError::InvalidCompressedData);
            }
        }
    }

    fn reset(&mut self) {
        // Keeps zlib's allocations (a fresh stream costs ~1 µs per message
        // without context takeover). The reset stream takes the default 15-bit
        // window, which inflates anything a smaller window wrote.
        self.stream.reset(false);
    }
}

/// The spare capacity of `out`, but no further than index `end`.
fn spare_up_to(out: &mut Vec<u8>, end: usize) -> &mut [MaybeUninit<u8>] {
    let room = end.saturating_sub(out.len());
    let spare = out.spare_capacity_mut();
    let len = spare.len().min(room);
    &mut spare[..len]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::server::parse_extensions;

    fn accept(header: &str, config: &DeflateConfig) -> Option<String> {
        accept_offer(&parse_extensions(header.as_bytes()), config).map(|agreement| agreement.to_string())
    }

    #[test]
    fn server_negotiation_follows_rfc_7692() {
        let config = DeflateConfig::default();
        let cases = [
            ("permessage-deflate", Some("permessage-deflate")),
            ("permessage-deflate; client_max_window_bits", Some("permessage-deflate")),
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
            ("permessage-deflate; server_max_window_bits=10", Some("permessage-deflate; server_max_window_bits=10")),
            (
                "permessage-deflate; server_max_window_bits=\"12\"",
                Some("permessage-deflate; server_max_window_bits=12"),
            ),
            ("permessage-deflate; client_max_window_bits=9", Some("permessage-deflate; client_max_window_bits=9")),
            // Declined offers: duplicates, unknown names, bad values, an 8-bit window for us.
            ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
            ("permessage-deflate; foo", None),
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; server_max_window_bits=16", None),
            ("permessage-deflate; server_max_window_bits=010", None),
            ("permessage-deflate; client_no_context_takeover=1", None),
            ("permessage-deflate; server_max_window_bits=8", None),
            ("x-webkit-deflate-frame", None),
            // The first acceptable offer wins.
            (
                "permessage-deflate; bad, permessage-deflate; client_max_window_bits=10",
                Some("permessage-deflate; client_max_window_bits=10"),
            ),
        ];
        for (offer, expected) in cases {
            assert_eq!(accept(offer, &config).as_deref(), expected, "{offer}");
        }
    }

    #[test]
    fn server_applies_its_own_settings() {
        let low = DeflateConfig::low_memory();
        assert_eq!(
            accept("permessage-deflate; client_max_window_bits", &low).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=9")
        );
        // Without client_max_window_bits in the offer the client's window cannot be limited.
        assert_eq!(
            accept("permessage-deflate", &low).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"
            )
        );
    }

    #[test]
    fn client_checks_the_answer_against_its_offer() {
        let config = DeflateConfig::default();
        let check =
            |answer: &str, config: &DeflateConfig| accept_response(&parse_extensions(answer.as_bytes())[0], config);
        assert!(check("permessage-deflate", &config).is_ok());
        assert!(check("permessage-deflate; server_max_window_bits=10", &config).is_ok());
        assert_eq!(
            check("permessage-deflate; client_max_window_bits=8", &config),
            Err(DeflateResponseError::BadWindow)
        );
        assert_eq!(check("permessage-deflate; mystery", &config), Err(DeflateResponseError::BadParameter));
        let strict = DeflateConfig { peer_context_takeover: false, peer_window_bits: 10, ..config };
        assert_eq!(
            client_offer(&strict),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits"
        );
        assert_eq!(
            check("permessage-deflate; server_max_window_bits=10", &strict),
            Err(DeflateResponseError::IgnoredRequest)
        );
        assert_eq!(
            check("permessage-deflate; server_no_context_takeover; server_max_window_bits=11", &strict),
            Err(DeflateResponseError::BadWindow)
        );
        assert!(check("permessage-deflate; server_no_context_takeover; server_max_window_bits=9", &strict).is_ok());
    }

    fn roundtrip(agreement: &DeflateAgreement, config: &DeflateConfig, messages: &[&[u8]]) {
        let mut sender = Compressor::new(agreement, Role::Server, config);
        let mut receiver = Decompressor::new(agreement, Role::Client);
        for message in messages {
            let mut wire = Vec::new();
            sender.compress(message, &mut wire);
            let mut out = Vec::new();
            receiver.decompress(&wire, &mut out, message.len()).unwrap();
            assert_eq!(&out, message);
        }
    }

    #[test]
    fn messages_roundtrip_with_and_without_context_takeover() {
        let json = br#"{"event":"chat","data":{"room":"lobby","text":"hello there"}}"#.repeat(20);
        let noise: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let messages: [&[u8]; 5] = [b"", &json, &json, &noise, b"x"];
        let config = DeflateConfig::default();
        roundtrip(&DeflateAgreement::default(), &config, &messages);
        let low = DeflateConfig::low_memory();
        let agreement = accept_offer(&parse_extensions(b"permessage-deflate; client_max_window_bits"), &low).unwrap();
        roundtrip(&agreement, &low, &messages);
    }

    #[test]
    fn context_takeover_shrinks_repeats() {
        let json = br#"{"event":"price","data":{"symbol":"ABC","bid":101.25,"ask":101.27}}"#;
        let mut compressor = Compressor::new(&DeflateAgreement::default(), Role::Server, &DeflateConfig::default());
        let (mut first, mut second) = (Vec::new(), Vec::new());
        compressor.compress(json, &mut first);
        compressor.compress(json, &mut second);
        assert!(second.len() < first.len() / 3, "{} then {}", first.len(), second.len());
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let mut compressor = Compressor::new(&DeflateAgreement::default(), Role::Client, &DeflateConfig::default());
        let mut wire = Vec::new();
        compressor.compress(&vec![0u8; 8 << 20], &mut wire);
        assert!(wire.len() < 16 << 10, "8 MiB of zeros compress to {} bytes", wire.len());
        let mut decompressor = Decompressor::new(&DeflateAgreement::default(), Role::Server);
        let mut out = Vec::new();
        assert_eq!(decompressor.decompress(&wire, &mut out, 1 << 20), Err(ProtocolError::MessageTooLarge));
        assert!(out.capacity() <= (1 << 20) + 1, "grew to {}", out.capacity());
        // The limit is inclusive and the decompressor is usable afterwards.
        let mut small = Vec::new();
        compressor.compress(b"abc", &mut small);
        let mut out = Vec::new();
        let mut fresh = Decompressor::new(&DeflateAgreement::default(), Role::Server);
        assert_eq!(fresh.decompress(&small, &mut out, 3), Ok(()));
    }

    #[test]
    fn no_limit_means_no_limit() {
        let mut compressor = Compressor::new(&DeflateAgreement::default(), Role::Client, &DeflateConfig::default());
        let mut wire = Vec::new();
        compressor.compress(&[7; 100_000], &mut wire);
        let mut out = Vec::new();
        let mut decompressor = Decompressor::new(&DeflateAgreement::default(), Role::Server);
        assert_eq!(decompressor.decompress(&wire, &mut out, usize::MAX), Ok(()));
        assert_eq!(out.len(), 100_000);
    }

    #[test]
    fn corrupt_data_is_an_error_not_a_panic() {
        let mut decompressor = Decompressor::new(&DeflateAgreement::default(), Role::Server);
        for bad in [&b"\xff\xff\xff"[..], b"\x07", b"\x03\x00garbage"] {
            let mut out = Vec::new();
            assert_eq!(
                decompressor.decompress(bad, &mut out, 1 << 20),
                Err(ProtocolError::InvalidCompressedData),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_message_may_end_with_a_final_block() {
        // "abc" as one final fixed-Huffman block, as zlib's Z_FINISH writes it.
        let mut deflate = Deflate::new(6, false, 15);
        let mut wire = vec![0; 64];
        deflate.compress(b"abc", &mut wire, DeflateFlush::Finish).unwrap();
        wire.truncate(deflate.total_out() as usize);
        let mut decompressor = Decompressor::new(&DeflateAgreement::default(), Role::Server);
        for _ in 0..2 {
            let mut out = Vec::new();
            decompressor.decompress(&wire, &mut out, 100).unwrap();
            assert_eq!(out, b"abc");
        }
    }

    #[test]
    fn an_eight_bit_peer_window_inflates_with_nine() {
        let agreement = DeflateAgreement { client_max_window_bits: Some(8), ..DeflateAgreement::default() };
        let decompressor = Decompressor::new(&agreement, Role::Server);
        assert_eq!(decompressor.window, 9);
    }
}
