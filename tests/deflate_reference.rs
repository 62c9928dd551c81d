//! permessage-deflate read and written by a second implementation: C zlib
//! through flate2 (not the zlib-rs our codec runs on), used exactly as
//! RFC 7692 says a peer uses it. A receiver (§7.2.2) appends `00 00 ff ff`
//! to each message's payload and inflates it with a raw inflater that keeps
//! its window between messages unless the sender's no_context_takeover was
//! agreed; a sender (§7.2.1) raw-deflates each message with a sync flush and
//! removes the `00 00 ff ff` it ends with.
//!
//! Long mixed sequences (empty, tiny, compressible, incompressible and
//! large messages, over every takeover and window combination the
//! negotiation allows, for both roles) go through our compressor into the
//! reference inflater, and through the reference deflater into our
//! decompressor, every message compared byte for byte. Over real sockets the
//! server runtime and the blocking client talk to a peer written here on
//! top of the reference, with uncompressed and fragmented messages mixed in.

mod common;

use std::net::TcpStream;

use common::*;
use emitws::client::ClientBuilder;
use emitws::proto::deflate::{
    accept_offer, accept_response, Compressor, Decompressor, DeflateAgreement, DeflateConfig, DeflateResponseError,
};
use emitws::proto::handshake::server::parse_extensions;
use emitws::proto::{encode_frame_with_rsv, CloseCode, Decoder, Limits, Message, OpCode, Role};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a sync flush ends with, and what §7.2.2 appends before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The RSV bit of a compressed message.
const RSV1: u8 = 0b100;

/// RFC 7692 §7.2.2's receiver, on C zlib.
struct ReferenceInflater {
    stream: Decompress,
    window_bits: u8,
    /// The sender's no_context_takeover was agreed: start afresh per message.
    resets: bool,
    /// The window's content: what earlier messages inflated to (the last 32 KiB).
    history: Vec<u8>,
}

impl ReferenceInflater {
    /// Inflates what `sender` compresses under `agreement`.
    fn new(agreement: &DeflateAgreement, sender: Role) -> ReferenceInflater {
        let window_bits = agreement.window_bits(sender);
        let resets = agreement.resets_after_message(sender);
        let stream = Decompress::new_with_window_bits(false, window_bits);
        ReferenceInflater { stream, window_bits, resets, history: Vec::new() }
    }

    /// One message: its payload with `00 00 ff ff` appended, inflated with a
    /// sync flush, after checking that this leaves the stream between blocks.
    fn inflate(&mut self, payload: &[u8]) -> Vec<u8> {
        self.check_complete_blocks(payload);
        let input = [payload, &TAIL].concat();
        let (mut out, mut read) = (Vec::new(), 0);
        loop {
            out.reserve(64 << 10);
            let before = self.stream.total_in();
            let status = self.stream.decompress_vec(&input[read..], &mut out, FlushDecompress::Sync);
            let status = status.unwrap_or_else(|e| panic!("C zlib cannot inflate the payload: {e}"));
            read += (self.stream.total_in() - before) as usize;
            assert_ne!(status, Status::StreamEnd, "a message ended the deflate stream (a final block)");
            if read == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        if self.resets {
            self.stream = Decompress::new_with_window_bits(false, self.window_bits);
        } else {
            self.history.extend_from_slice(&out);
            self.history.drain(..self.history.len().saturating_sub(32 << 10));
        }
        out
    }

    /// The payload and its tail must be whole deflate blocks (§7.2.1), so a
    /// final empty block right after them ends the stream exactly there. A
    /// separate inflater checks that, primed with the window's content: one
    /// left inside a block (a stored block opened by the tail, say) reads
    /// the final block as that block's data or fails, and never ends there.
    fn check_complete_blocks(&self, payload: &[u8]) {
        const FINAL_EMPTY_BLOCK: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];
        let mut probe = Decompress::new_with_window_bits(false, self.window_bits);
        if !self.history.is_empty() {
            probe.set_dictionary(&self.history).expect("a raw inflater takes a dictionary");
        }
        let input = [payload, &TAIL, &FINAL_EMPTY_BLOCK].concat();
        let mut out = Vec::with_capacity(64 << 10);
        loop {
            let status = probe.decompress_vec(&input[probe.total_in() as usize..], &mut out, FlushDecompress::Finish);
            match status {
                Ok(Status::StreamEnd) => break,
                Ok(_) if out.len() == out.capacity() => out.reserve(64 << 10),
                other => {
                    panic!("the payload {:02x?}… is not whole blocks: {other:?}", &payload[..payload.len().min(8)])
                }
            }
        }
        assert_eq!(probe.total_in() as usize, input.len(), "the stream ended before the final block");
    }
}

/// RFC 7692 §7.2.1's sender, on C zlib.
struct ReferenceDeflater {
    stream: Compress,
    resets: bool,
}

impl ReferenceDeflater {
    /// Compresses as `sender` may under `agreement`. zlib cannot write an
    /// 8-bit window, so an agreement giving `sender` one has no reference.
    fn new(agreement: &DeflateAgreement, sender: Role) -> Option<ReferenceDeflater> {
        let window_bits = agreement.window_bits(sender);
        let stream =
            (window_bits >= 9).then(|| Compress::new_with_window_bits(Compression::new(6), false, window_bits))?;
        Some(ReferenceDeflater { stream, resets: agreement.resets_after_message(sender) })
    }

    /// One message's payload: deflated with a sync flush, the tail removed.
    fn deflate(&mut self, message: &[u8]) -> Vec<u8> {
        let (mut out, mut read) = (Vec::new(), 0);
        loop {
            out.reserve(message.len() + 1024);
            let before = self.stream.total_in();
            let status = self.stream.compress_vec(&message[read..], &mut out, FlushCompress::Sync);
            let status = status.unwrap_or_else(|e| panic!("C zlib cannot deflate: {e}"));
            read += (self.stream.total_in() - before) as usize;
            // BufError: an empty message right after a flush, nothing to write.
            if read == message.len() && (out.len() < out.capacity() || status == Status::BufError) {
                break;
            }
        }
        if self.resets {
            self.stream.reset();
        }
        match out.strip_suffix(&TAIL) {
            Some(payload) => payload.to_vec(),
            // zlib writes nothing for it: §7.2.3.6's empty stored block instead.
            None if out.is_empty() && message.is_empty() => vec![0x00],
            None => panic!("a sync flush without its tail: {out:02x?}"),
        }
    }
}

/// A small deterministic generator (xorshift64), so every run sends the same sequence.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> usize {
        (self.next() % bound) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Messages of every kind, in an order that puts an empty message after
/// one deflate stores (incompressible), after a compressed one, after
/// another empty one and at the very start, then `random` more picked at
/// random; never ending on an empty message, whose damage only shows in the
/// message after it. `large` adds messages past one stored block (64 KiB).
fn mixed_messages(seed: u64, random: usize, large: bool) -> Vec<Vec<u8>> {
    let mut rng = Random(seed);
    let json = |n: usize| r#"{"event":"tick","data":{"symbol":"ABC","bid":101.25}}"#.repeat(n).into_bytes();
    let mut messages = vec![
        Vec::new(),
        json(3),
        rng.bytes(1000),
        Vec::new(),
        json(1),
        Vec::new(),
        Vec::new(),
        b"x".to_vec(),
        rng.bytes(1),
        Vec::new(),
        vec![0; 3000],
        Vec::new(),
    ];
    if large {
        messages.extend([rng.bytes(70_000), Vec::new(), vec![7; 200_000], rng.bytes(140_000), Vec::new()]);
    }
    for _ in 0..random {
        let len = rng.below(2000);
        messages.push(match rng.below(6) {
            0 => Vec::new(),
            1 => rng.bytes(len),
            2 => json(1 + len / 50),
            3 => vec![b'a'; len],
            4 => rng.bytes(1 + len % 8),
            _ => [json(2), rng.bytes(len / 4), json(2)].concat(),
        });
    }
    messages.push(json(2));
    messages
}

/// Our compressor's output, read by the reference.
fn ours_to_reference(agreement: &DeflateAgreement, sender: Role, config: &DeflateConfig, messages: &[Vec<u8>]) {
    let mut ours = Compressor::new(agreement, sender, config);
    let mut reference = ReferenceInflater::new(agreement, sender);
    for (i, message) in messages.iter().enumerate() {
        let mut payload = Vec::new();
        ours.compress(message, &mut payload);
        let inflated = reference.inflate(&payload);
        assert!(
            inflated == *message,
            "message {i} ({} bytes, payload {:02x?}…) from our {sender:?} under \"{agreement}\" ({config:?}) \
             reads back as {} bytes",
            message.len(),
            &payload[..payload.len().min(8)],
            inflated.len()
        );
    }
}

/// The reference's output, read by our decompressor (none where the sender's
/// window is 8 bits, which zlib cannot write).
fn reference_to_ours(agreement: &DeflateAgreement, sender: Role, messages: &[Vec<u8>]) {
    let Some(mut reference) = ReferenceDeflater::new(agreement, sender) else { return };
    let mut ours = Decompressor::new(agreement, peer_of(sender));
    for (i, message) in messages.iter().enumerate() {
        let payload = reference.deflate(message);
        let mut inflated = Vec::new();
        ours.decompress(&payload, &mut inflated, 1 << 24)
            .unwrap_or_else(|e| panic!("message {i} from a {sender:?} under \"{agreement}\": {e:?}"));
        assert!(inflated == *message, "message {i} ({} bytes) from a {sender:?} under \"{agreement}\"", message.len());
    }
}

fn peer_of(role: Role) -> Role {
    match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    }
}

/// Every agreement the negotiation reaches, for each role: a server
/// answering an offer with each takeover flag and window pair, a client
/// accepting each such answer. Only an 8-bit window for our own compressor
/// is declined (zlib cannot write one).
fn every_agreement(config: &DeflateConfig) -> Vec<(Role, DeflateAgreement)> {
    let mut agreements = Vec::new();
    for flags in 0..4 {
        for server_bits in 8..=15u8 {
            for client_bits in 8..=15u8 {
                let mut params = String::from("permessage-deflate");
                if flags & 1 != 0 {
                    params.push_str("; server_no_context_takeover");
                }
                if flags & 2 != 0 {
                    params.push_str("; client_no_context_takeover");
                }
                params
                    .push_str(&format!("; server_max_window_bits={server_bits}; client_max_window_bits={client_bits}"));
                let offers = parse_extensions(params.as_bytes());
                match accept_offer(&offers, config) {
                    Some(agreement) => agreements.push((Role::Server, agreement)),
                    None => assert_eq!(server_bits, 8, "offer {params} declined"),
                }
                match accept_response(&offers[0], config) {
                    Ok(agreement) => agreements.push((Role::Client, agreement)),
                    Err(error) => assert_eq!((client_bits, error), (8, DeflateResponseError::BadWindow), "{params}"),
                }
            }
        }
    }
    assert_eq!(agreements.len(), 2 * 4 * 8 * 7);
    agreements
}

/// Every message compressed, as examples/autobahn_server sets it.
fn compress_all() -> DeflateConfig {
    DeflateConfig { min_size: 0, ..DeflateConfig::default() }
}

#[test]
fn the_reference_reads_what_we_compress_under_every_agreement() {
    let config = compress_all();
    let messages = mixed_messages(0x5eed, 8, false);
    for (role, agreement) in every_agreement(&config) {
        ours_to_reference(&agreement, role, &config, &messages);
    }
}

#[test]
fn we_read_what_the_reference_compresses_under_every_agreement() {
    let messages = mixed_messages(0xbeef, 8, false);
    for (role, agreement) in every_agreement(&compress_all()) {
        reference_to_ours(&agreement, peer_of(role), &messages);
    }
}

#[test]
fn long_sequences_at_every_level_and_memory_level() {
    let messages = mixed_messages(42, 80, true);
    let takeover = DeflateAgreement::default();
    let no_takeover = DeflateAgreement { server_no_context_takeover: true, ..takeover };
    for level in [0, 1, 6, 9] {
        // Small windows slide (and rehash) often: slow in a debug build with a large hash.
        for (mem_level, window_bits) in [(1, 9), (8, 15), (4, 11)] {
            let config = DeflateConfig { level, mem_level, window_bits, ..compress_all() };
            ours_to_reference(&takeover, Role::Server, &config, &messages);
        }
    }
    let no_context = DeflateConfig { context_takeover: false, ..compress_all() };
    ours_to_reference(&takeover, Role::Server, &no_context, &messages);
    ours_to_reference(&no_takeover, Role::Client, &compress_all(), &messages);
    ours_to_reference(&no_takeover, Role::Server, &compress_all(), &messages);
    for agreement in [takeover, no_takeover] {
        reference_to_ours(&agreement, Role::Server, &messages);
        reference_to_ours(&agreement, Role::Client, &messages);
    }
}

/// Whether `message` goes as a text message (UTF-8) or a binary one.
fn opcode_for(message: &[u8]) -> OpCode {
    match std::str::from_utf8(message) {
        Ok(_) => OpCode::Text,
        Err(_) => OpCode::Binary,
    }
}

/// A compressed message as frames: the first with RSV1, split into `pieces`
/// fragments, masked when `mask` is given.
fn compressed_frames(opcode: OpCode, payload: &[u8], pieces: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let size = payload.len().div_ceil(pieces).max(1);
    let chunks: Vec<&[u8]> = if payload.is_empty() { vec![payload] } else { payload.chunks(size).collect() };
    let mut frames = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let (opcode, rsv) = if i == 0 { (opcode, RSV1) } else { (OpCode::Continuation, 0) };
        encode_frame_with_rsv(&mut frames, opcode, i + 1 == chunks.len(), rsv, mask, chunk);
    }
    frames
}

/// A message as the receiving test peer saw it: inflated by the reference
/// if it came compressed; (text, bytes, compressed).
fn read_back(frame: Frame, inflater: &mut ReferenceInflater) -> (bool, Vec<u8>, bool) {
    match frame {
        Frame::Compressed(text, payload) => (text, inflater.inflate(&payload), true),
        Frame::Text(text) => (true, text.into_bytes(), false),
        Frame::Binary(bytes) => (false, bytes, false),
        other => panic!("expected a data message, got {other:?}"),
    }
}

#[test]
fn our_server_and_a_reference_client_agree_on_every_message() {
    // (min_size, offer, large messages too): the large ones only where our
    // window is full size, as small windows compress slowly in a debug build.
    let cases = [
        (0, "permessage-deflate; client_max_window_bits", true),
        (0, "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9", false),
        (0, "permessage-deflate; server_no_context_takeover; client_no_context_takeover", true),
        (0, "permessage-deflate; client_no_context_takeover; server_max_window_bits=9", false),
        (100, "permessage-deflate; client_max_window_bits=12", false),
    ];
    for (case, (min_size, offer, large)) in cases.into_iter().enumerate() {
        let config = DeflateConfig { min_size, ..DeflateConfig::default() };
        let server = quick_server().deflate(Some(config)).start("127.0.0.1:0", Echo::default()).unwrap();
        let request = upgrade_request("/reference", &[("Sec-WebSocket-Extensions", offer)]);
        let (stream, reply, rest) = http(server.local_addr(), &request);
        assert_eq!(reply.status, 101, "{reply:?}");
        let answer = reply.header("sec-websocket-extensions").expect("permessage-deflate accepted");
        let agreement = accept_response(&parse_extensions(answer.as_bytes())[0], &DeflateConfig::default()).unwrap();
        let mut client = Client::from_parts(stream, rest);
        client.accept_compressed();
        let mut deflater = ReferenceDeflater::new(&agreement, Role::Client).expect("a window zlib writes");
        let mut inflater = ReferenceInflater::new(&agreement, Role::Server);
        for (i, message) in mixed_messages(case as u64 + 1, 40, large).iter().enumerate() {
            let opcode = opcode_for(message);
            // Every fifth message goes plain; the others compressed, in one to three fragments.
            if i % 5 == 4 {
                client.send(opcode, true, message);
            } else {
                let payload = deflater.deflate(message);
                client.write_raw(&compressed_frames(opcode, &payload, 1 + i % 3, Some([0x37, 0xfa, 0x21, 0x3d])));
            }
            let (text, echoed, compressed) = read_back(client.recv(), &mut inflater);
            assert_eq!(
                (text, compressed),
                (opcode == OpCode::Text, message.len() >= min_size),
                "message {i} ({offer})"
            );
            assert!(
                echoed == *message,
                "message {i} of {} bytes echoed as {} bytes ({offer})",
                message.len(),
                echoed.len()
            );
        }
        client.close(1000);
        server.shutdown();
    }
}

/// The scripted server's side of one connection: frames from a masking client.
struct ServerSide {
    socket: TcpStream,
    decoder: Decoder,
    pending: Vec<u8>,
}

impl ServerSide {
    fn new(socket: TcpStream) -> ServerSide {
        let mut decoder = Decoder::new(Role::Server);
        decoder.allow_extension_rsv(RSV1);
        ServerSide { socket, decoder, pending: Vec::new() }
    }

    fn recv(&mut self) -> Frame {
        use std::io::Read;
        let limits = Limits::default().max_message_size(1 << 24);
        loop {
            if !self.pending.is_empty() {
                let decoded = self.decoder.decode(&mut self.pending, &limits).expect("valid client frames");
                let (consumed, frame) = (decoded.consumed, decoded.event.map(Frame::from));
                self.pending.drain(..consumed);
                if let Some(frame) = frame {
                    return frame;
                }
            }
            let mut buf = [0; 16 << 10];
            let n = self.socket.read(&mut buf).expect("the client's next frame");
            assert!(n > 0, "the client hung up");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.socket.write_all(bytes).expect("write to the client");
    }
}

#[test]
fn our_client_and_a_reference_server_agree_on_every_message() {
    // (answer, large messages too), as in the server's test.
    let answers = [
        ("permessage-deflate", true),
        ("permessage-deflate; client_max_window_bits=9", false),
        ("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9", true),
        ("permessage-deflate; client_no_context_takeover; server_max_window_bits=11; client_max_window_bits=13", false),
    ];
    for (case, (answer, large)) in answers.into_iter().enumerate() {
        let messages = mixed_messages(case as u64 + 100, 40, large);
        let agreement = accept_response(&parse_extensions(answer.as_bytes())[0], &compress_all()).unwrap();
        // Reads each message our client sends with the reference and echoes
        // it back compressed by the reference (fragmented, or every fifth
        // plain); returns what it read, until the close.
        let (addr, server) = scripted(move |socket, key| {
            let mut side = ServerSide::new(socket);
            side.send(switching(&key, &format!("Sec-WebSocket-Extensions: {answer}\r\n")).as_bytes());
            let mut inflater = ReferenceInflater::new(&agreement, Role::Client);
            let mut deflater = ReferenceDeflater::new(&agreement, Role::Server).expect("a window zlib writes");
            let mut got = Vec::new();
            loop {
                let (text, message, compressed) = match side.recv() {
                    Frame::Close(code, _) => {
                        side.send(&[0x88, 0x02, 0x03, 0xe8]);
                        assert_eq!(code, Some(1000));
                        return got;
                    }
                    frame => read_back(frame, &mut inflater),
                };
                let opcode = if text { OpCode::Text } else { OpCode::Binary };
                let mut echo = Vec::new();
                match got.len() % 5 {
                    4 => encode_frame_with_rsv(&mut echo, opcode, true, 0, None, &message),
                    i => echo = compressed_frames(opcode, &deflater.deflate(&message), 1 + i % 3, None),
                }
                side.send(&echo);
                got.push((text, message, compressed));
            }
        });
        let builder = ClientBuilder::new().timeout(WAIT).deflate(Some(compress_all())).max_message_size(1 << 24);
        let mut client = builder.connect(&format!("ws://{addr}/")).unwrap();
        for (i, message) in messages.iter().enumerate() {
            match std::str::from_utf8(message) {
                Ok(text) => client.send_text(text).unwrap(),
                Err(_) => client.send_binary(message).unwrap(),
            }
            let echoed = match client.recv().unwrap_or_else(|e| panic!("echo of message {i} ({answer}): {e}")) {
                Message::Text(text) => text.as_bytes().to_vec(),
                Message::Binary(bytes) => bytes.to_vec(),
            };
            assert!(
                echoed == *message,
                "message {i} of {} bytes echoed as {} bytes ({answer})",
                message.len(),
                echoed.len()
            );
        }
        client.close(CloseCode(1000), "").unwrap();
        let got = server.join().expect("the reference server read every message");
        let expected: Vec<_> = messages.iter().map(|m| (opcode_for(m) == OpCode::Text, m.clone(), true)).collect();
        assert!(got == expected, "the reference server read what our client sent ({answer})");
    }
}
