//! permessage-deflate on a worker: a connection's compression state, created
//! on first use, and the worker's spare compressors, so that connections whose
//! context resets after every message hold no zlib state between messages.

use crate::proto::deflate::{Compressor, Decompressor, DeflateAgreement, DeflateConfig};
use crate::proto::{utf8, Message, ProtocolError, Role};

/// The RSV bit that marks a compressed message (RFC 7692 §6).
pub(crate) const RSV1: u8 = 0b100;

/// How many idle compressors (and decompressors) a worker keeps for reuse.
const SPARES_KEPT: usize = 64;

/// Inflated messages larger than this do not keep their buffer afterwards.
const KEPT_INFLATE_CAPACITY: usize = 1 << 20;

/// One connection's compression state. The zlib state behind each direction
/// exists only while it is needed: from the first message on for a direction
/// with context takeover, during each message for one without.
#[derive(Debug)]
pub(crate) struct DeflateState {
    agreement: DeflateAgreement,
    compressor: Option<Box<Compressor>>,
    decompressor: Option<Box<Decompressor>>,
}

impl DeflateState {
    pub fn new(agreement: DeflateAgreement) -> Self {
        DeflateState { agreement, compressor: None, decompressor: None }
    }
}

/// A worker's spare zlib state and buffers, shared by its connections.
#[derive(Debug, Default)]
pub(crate) struct Deflater {
    /// Spare compressors and decompressors, by window bits.
    compressors: Vec<(u8, Box<Compressor>)>,
    decompressors: Vec<(u8, Box<Decompressor>)>,
    /// Where outgoing messages are compressed before they are queued.
    pub scratch: Vec<u8>,
    /// Where incoming messages are inflated before the handler sees them.
    pub inflated: Vec<u8>,
}

impl Deflater {
    /// Compresses `payload` for `state`'s connection into `self.scratch`.
    pub fn compress(&mut self, state: &mut DeflateState, config: &DeflateConfig, payload: &[u8]) {
        let window = state.agreement.window_bits(Role::Server);
        let mut compressor = state.compressor.take().unwrap_or_else(|| {
            take_spare(&mut self.compressors, window)
                .unwrap_or_else(|| Box::new(Compressor::new(&state.agreement, Role::Server, config)))
        });
        self.scratch.clear();
        compressor.compress(payload, &mut self.scratch);
        if compressor.resets_after_message() {
            keep_spare(&mut self.compressors, window, compressor);
        } else {
            state.compressor = Some(compressor);
        }
    }

    /// Inflates a compressed message for `state`'s connection into
    /// `self.inflated` and checks a text message's UTF-8.
    pub fn decompress(
        &mut self,
        state: &mut DeflateState,
        text: bool,
        payload: &[u8],
        max_size: u64,
    ) -> Result<Message<'_>, ProtocolError> {
        let window = state.agreement.window_bits(Role::Client);
        let mut decompressor = state.decompressor.take().unwrap_or_else(|| {
            take_spare(&mut self.decompressors, window)
                .unwrap_or_else(|| Box::new(Decompressor::new(&state.agreement, Role::Server)))
        });
        if self.inflated.capacity() > KEPT_INFLATE_CAPACITY {
            self.inflated = Vec::new();
        }
        self.inflated.clear();
        let max_size = usize::try_from(max_size).unwrap_or(usize::MAX);
        let result = decompressor.decompress(payload, &mut self.inflated, max_size);
        if decompressor.resets_after_message() {
            keep_spare(&mut self.decompressors, window, decompressor);
        } else {
            state.decompressor = Some(decompressor);
        }
        result?;
        Ok(match text {
            true => Message::Text(utf8::text(&self.inflated)?),
            false => Message::Binary(&self.inflated),
        })
    }
}

fn take_spare<T>(spares: &mut Vec<(u8, Box<T>)>, window: u8) -> Option<Box<T>> {
    let at = spares.iter().rposition(|(bits, _)| *bits == window)?;
    Some(spares.swap_remove(at).1)
}

fn keep_spare<T>(spares: &mut Vec<(u8, Box<T>)>, window: u8, spare: Box<T>) {
    if spares.len() < SPARES_KEPT {
        spares.push((window, spare));
    }
}
