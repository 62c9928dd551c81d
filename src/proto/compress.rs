//! permessage-deflate on a connection: its compression state, created on
//! first use, and the spare compressors of a worker (or of a blocking
//! client), so that connections whose context resets after every message
//! hold no zlib state between messages.

use std::sync::{Arc, OnceLock};

use super::deflate::{Compressor, Decompressor, DeflateAgreement, DeflateConfig};
use super::{encode_frame_with_rsv, utf8, Message, OpCode, ProtocolError, Role};

/// The RSV bit that marks a compressed message (RFC 7692 §6).
pub(crate) const RSV1: u8 = 0b100;

/// How many idle compressors (and decompressors) a worker keeps for reuse.
const SPARES_KEPT: usize = 64;

/// Inflated messages larger than this do not keep their buffer afterwards.
const KEPT_INFLATE_CAPACITY: usize = 1 << 20;

/// The compressed form of a shared frame: built at most once, by whichever
/// worker first sends it to a server connection that can take it.
#[derive(Debug, Default)]
pub(crate) struct SharedCompressed(OnceLock<Arc<[u8]>>);

impl SharedCompressed {
    /// The frame compressed on its own, unmasked, with `config`'s window and level.
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

/// What a connection's zlib state is built from: our end, the agreement and
/// our settings (the server's [`Settings::deflate`](crate::runtime::Settings::deflate),
/// or the client's [`ClientBuilder::deflate`](crate::client::ClientBuilder::deflate)).
/// A spare is only reused by a connection with an equal setup, so it never
/// brings another window, level or reset rule along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DeflateParams {
    role: Role,
    agreement: DeflateAgreement,
    config: DeflateConfig,
}

/// One connection's compression state. The zlib state behind each direction
/// exists only while it is needed: from the first message on for a direction
/// with context takeover, during each message for one without.
#[derive(Debug)]
pub(crate) struct DeflateState {
    setup: DeflateParams,
    compressor: Option<Box<Compressor>>,
    decompressor: Option<Box<Decompressor>>,
}

impl DeflateState {
    /// The state of `role`'s end of a connection that agreed on `agreement`,
    /// compressing with `config`.
    pub fn new(role: Role, agreement: DeflateAgreement, config: DeflateConfig) -> Self {
        DeflateState { setup: DeflateParams { role, agreement, config }, compressor: None, decompressor: None }
    }

    pub fn agreement(&self) -> &DeflateAgreement {
        &self.setup.agreement
    }

    /// Whether a data message of `len` bytes is worth compressing.
    pub fn compresses(&self, len: usize) -> bool {
        len >= self.setup.config.min_size
    }

    /// The settings a shared frame sent here is compressed with, if it may
    /// be: a server connection whose context does not carry over between
    /// messages (else the peer's window would hold a message ours lacks),
    /// in a window no larger than the peer allows. A client connection never
    /// takes one: its frames are masked, each with its own key.
    pub fn takes_shared(&self) -> Option<&DeflateConfig> {
        let DeflateParams { role, agreement, config } = &self.setup;
        let resets = agreement.resets_after_message(Role::Server) || !config.context_takeover;
        let fits = config.window_bits <= agreement.window_bits(Role::Server);
        (*role == Role::Server && resets && fits).then_some(config)
    }
}

/// Spare zlib state and buffers: a worker's, shared by its connections, or
/// a blocking client's own.
#[derive(Debug, Default)]
pub(crate) struct Deflater {
    compressors: Vec<(DeflateParams, Box<Compressor>)>,
    decompressors: Vec<(DeflateParams, Box<Decompressor>)>,
    /// Where outgoing messages are compressed before they are queued.
    pub scratch: Vec<u8>,
    /// Where incoming messages are inflated before the handler sees them.
    pub inflated: Vec<u8>,
}

impl Deflater {
    /// Compresses `payload` for `state`'s connection into `self.scratch`.
    pub fn compress(&mut self, state: &mut DeflateState, payload: &[u8]) {
        let DeflateParams { role, agreement, config } = &state.setup;
        let mut compressor = state.compressor.take().unwrap_or_else(|| {
            take_spare(&mut self.compressors, &state.setup)
                .unwrap_or_else(|| Box::new(Compressor::new(agreement, *role, config)))
        });
        self.scratch.clear();
        compressor.compress(payload, &mut self.scratch);
        if compressor.resets_after_message() {
            keep_spare(&mut self.compressors, state.setup, compressor);
        } else {
            state.compressor = Some(compressor);
        }
    }

    /// Inflates a compressed message for `state`'s connection into
    /// `self.inflated`, at most `max_size` bytes, and checks a text message's UTF-8.
    pub fn decompress(
        &mut self,
        state: &mut DeflateState,
        text: bool,
        payload: &[u8],
        max_size: u64,
    ) -> Result<Message<'_>, ProtocolError> {
        let DeflateParams { role, agreement, .. } = &state.setup;
        let mut decompressor = state.decompressor.take().unwrap_or_else(|| {
            take_spare(&mut self.decompressors, &state.setup)
                .unwrap_or_else(|| Box::new(Decompressor::new(agreement, *role)))
        });
        if self.inflated.capacity() > KEPT_INFLATE_CAPACITY {
            self.inflated = Vec::new();
        }
        self.inflated.clear();
        let max_size = usize::try_from(max_size).unwrap_or(usize::MAX);
        let result = decompressor.decompress(payload, &mut self.inflated, max_size);
        if decompressor.resets_after_message() {
            keep_spare(&mut self.decompressors, state.setup, decompressor);
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

fn take_spare<T>(spares: &mut Vec<(DeflateParams, Box<T>)>, setup: &DeflateParams) -> Option<Box<T>> {
    let at = spares.iter().rposition(|(built, _)| built == setup)?;
    Some(spares.swap_remove(at).1)
}

fn keep_spare<T>(spares: &mut Vec<(DeflateParams, Box<T>)>, setup: DeflateParams, spare: Box<T>) {
    if spares.len() < SPARES_KEPT {
        spares.push((setup, spare));
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

    /// Compresses `messages` as `from`'s end would and inflates them with `state`.
    fn receive(deflater: &mut Deflater, state: &mut DeflateState, from: Role, messages: &[&str]) {
        let mut sender = Compressor::new(state.agreement(), from, &DeflateConfig::default());
        for message in messages {
            let mut wire = Vec::new();
            sender.compress(message.as_bytes(), &mut wire);
            assert_eq!(deflater.decompress(state, true, &wire, 1 << 20), Ok(Message::Text(message)));
        }
    }

    #[test]
    fn spares_go_only_to_connections_built_alike() {
        let mut deflater = Deflater::default();
        let config = DeflateConfig::default();
        let resets = DeflateAgreement { client_no_context_takeover: true, ..DeflateAgreement::default() };
        let mut alone = DeflateState::new(Role::Server, resets, config);
        let repeated = ["a message said twice over", "a message said twice over"];
        receive(&mut deflater, &mut alone, Role::Client, &repeated);
        assert_eq!(deflater.decompressors.len(), 1, "a decompressor that resets is kept as a spare");
        // Same window, but the peer keeps its context: the spare, which
        // resets after each message, would lose the second message's reference.
        let mut takeover = DeflateState::new(Role::Server, DeflateAgreement::default(), config);
        receive(&mut deflater, &mut takeover, Role::Client, &repeated);
        assert_eq!(deflater.decompressors.len(), 1, "the spare stays for a connection like the first");
        // Nor does a client connection take a server connection's spare.
        let mut client = DeflateState::new(Role::Client, resets, config);
        assert!(take_spare(&mut deflater.decompressors, &client.setup).is_none());
        let server_resets = DeflateAgreement { server_no_context_takeover: true, ..resets };
        client = DeflateState::new(Role::Client, server_resets, config);
        receive(&mut deflater, &mut client, Role::Server, &repeated);
        assert_eq!(deflater.decompressors.len(), 2);
    }

    #[test]
    fn only_server_connections_take_a_shared_frame() {
        let resets = DeflateAgreement { server_no_context_takeover: true, ..DeflateAgreement::default() };
        let config = DeflateConfig::default();
        assert_eq!(DeflateState::new(Role::Server, resets, config).takes_shared(), Some(&config));
        assert_eq!(DeflateState::new(Role::Server, DeflateAgreement::default(), config).takes_shared(), None);
        assert_eq!(DeflateState::new(Role::Client, resets, config).takes_shared(), None);
    }
}
