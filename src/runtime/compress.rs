//! permessage-deflate on a worker: a connection's compression state, created
//! on first use, and the worker's spare compressors, so that connections whose
//! context resets after every message hold no zlib state between messages.

use crate::proto::deflate::{Compressor, Decompressor, DeflateAgreement, DeflateConfig};
use std::sync::{Arc, OnceLock};

use crate::proto::{encode_frame_with_rsv, utf8, Message, OpCode, ProtocolError, Role};

/// The RSV bit that marks a compressed message (RFC 7692 §6).
pub(crate) const RSV1: u8 = 0b100;

/// How many idle compressors (and decompressors) a worker keeps for reuse.
const SPARES_KEPT: usize = 64;

/// Inflated messages larger than this do not keep their buffer afterwards.
const KEPT_INFLATE_CAPACITY: usize = 1 << 20;

/// The compressed form of a shared frame: built at most once, by whichever
/// worker first sends it to a connection that can take it.
#[derive(Debug, Default)]
pub(crate) struct SharedCompressed(OnceLock<Arc<[u8]>>);

impl SharedCompressed {
    /// The frame compressed on its own with `config`'s window and level.
    pub fn get_or_compress(&self, config: &DeflateConfig, opcode: OpCode, payload: &[u8]) -> Arc<[u8]> {
        let frame = self.0.get_or_init(|| {
            let alone = DeflateConfig { context_takeover: false, ..*config };
            let mut compressed = Vec::new();
            Compressor::new(&DeflateAgreement::default(), Role::Server, &alone).compress(payload, &mut compressed);
            let mut frame = Vec::with_capacity(compressed.len() + 10);
            encode_frame_with_rsv(&mut frame, opcode, true, RSV1, None, &compressed);
            frame.into()
        });
        frame.clone()
    }
}

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

    /// Whether a message compressed on its own, as [`SharedCompressed`]
    /// holds it, may be sent here: only if our context does not carry over
    /// between messages (else the peer's window would hold a message ours
    /// lacks), and in a window no larger than the peer allows.
    pub fn takes_shared(&self, config: &DeflateConfig) -> bool {
        let resets = self.agreement.resets_after_message(Role::Server) || !config.context_takeover;
        resets && config.window_bits <= self.agreement.window_bits(Role::Server)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_frame_is_compressed_once() {
        let shared = SharedCompressed::default();
        let config = DeflateConfig::default();
        let first = shared.get_or_compress(&config, OpCode::Text, b"hello hello hello hello");
        let again = shared.get_or_compress(&config, OpCode::Text, b"hello hello hello hello");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first[0], 0x80 | RSV1 << 4 | 0x1, "FIN, RSV1, text");
    }
}
