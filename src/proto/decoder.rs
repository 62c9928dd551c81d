//! The receive side of a connection: bytes in, events out.
//!
//! [`Decoder::decode`] takes a chunk of input, unmasks payloads in place and
//! returns events that borrow from the input wherever a whole message sits in
//! one chunk. Only a message split across chunks (or across fragments) is
//! copied, into a buffer that exists only while such a message is in flight:
//! an idle decoder owns no heap memory. Finished buffers are kept per thread
//! for the next split message.

use std::cell::RefCell;

use super::{apply_mask, utf8, CloseCode, FrameHeader, Message, OpCode, ProtocolError, Utf8Validator, MAX_HEADER_LEN};

/// The RSV bit permessage-deflate claims, as `FrameHeader::rsv` holds it.
const RSV1: u8 = 0b100;

/// Which end of the connection this decoder serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts masked frames only.
    Server,
    /// Accepts unmasked frames only.
    Client,
}

/// Size limits applied while decoding. The defaults suit most servers.
///
/// ```
/// let limits = emitws::proto::Limits::default().max_message_size(1 << 20);
/// assert_eq!(limits.max_frame_size, 16 << 20);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest frame payload accepted (default 16 MiB). Larger frames fail with 1009.
    pub max_frame_size: u64,
    /// The largest message accepted (default 16 MiB). A frame that would push a
    /// message past it fails with 1009 before any of it is buffered.
    pub max_message_size: u64,
    /// The most frames one message may consist of (default 131,072). A message is
    /// buffered contiguously, so fragments cost no memory beyond their payload;
    /// this bounds the CPU a flood of tiny fragments can take.
    pub max_fragments: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_frame_size: 16 << 20, max_message_size: 16 << 20, max_fragments: 1 << 17 }
    }
}

impl Limits {
    /// Sets [`max_frame_size`](Limits::max_frame_size).
    pub fn max_frame_size(mut self, bytes: u64) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`max_message_size`](Limits::max_message_size).
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`max_fragments`](Limits::max_fragments).
    pub fn max_fragments(mut self, frames: u32) -> Self {
        self.max_fragments = frames;
        self
    }
}

/// Something the peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text or binary message.
    Message(Message<'a>),
    /// A ping; the payload must be echoed in a pong.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame: its code (if any) and reason, both already validated.
    Close(Option<CloseCode>, &'a str),
    /// A message with RSV1 set under permessage-deflate: its payload is still
    /// compressed, so a text message's UTF-8 is checked after inflating (see
    /// [`deflate::Decompressor`](super::deflate::Decompressor)).
    Compressed {
        /// A text message (else binary).
        text: bool,
        /// The compressed payload of all its frames.
        payload: &'a [u8],
    },
}

/// What one call to [`Decoder::decode`] produced.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// How many input bytes were used. When `event` is `None` this is the whole input.
    pub consumed: usize,
    /// The event completed by those bytes, if any.
    pub event: Option<Event<'a>>,
}

/// What one call to [`Decoder::poll`] found.
#[derive(Clone, Copy, Debug)]
pub struct Polled {
    /// How many input bytes were used. When `ready` is `None` this is the whole input.
    pub consumed: usize,
    /// The event completed by those bytes, to be taken with [`Decoder::event`].
    pub ready: Option<ReadyEvent>,
}

/// A complete event inside the decoder or its input (see [`Decoder::poll`]).
#[derive(Clone, Copy, Debug)]
pub struct ReadyEvent(Ready);

impl ReadyEvent {
    /// Whether it is a text or binary message (else a ping, pong or close).
    pub fn is_data(&self) -> bool {
        let (Ready::InInput { opcode, .. } | Ready::InSpill { opcode }) = self.0;
        !opcode.is_control()
    }

    /// Whether it is a pong.
    pub fn is_pong(&self) -> bool {
        let (Ready::InInput { opcode, .. } | Ready::InSpill { opcode }) = self.0;
        opcode == OpCode::Pong
    }
}

/// The frame whose payload is being read.
#[derive(Clone, Copy, Debug)]
struct FrameState {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    len: u64,
    read: u64,
}

/// Where the bytes of a completed event are.
#[derive(Clone, Copy, Debug)]
enum Ready {
    /// In the caller's input, from `start` to `end` (the consumed position).
    InInput { opcode: OpCode, start: usize, end: usize },
    /// In the spill buffer (control or message part, by opcode).
    InSpill { opcode: OpCode },
}

/// Payload bytes kept across chunks.
#[derive(Debug, Default)]
struct Spill {
    message: Vec<u8>,
    control: Vec<u8>,
}

/// Decodes the frames of one connection (how, this file's module docs say).
///
/// ```
/// use emitws::proto::{Decoder, Event, Limits, Message, Role};
/// let mut decoder = Decoder::new(Role::Client);
/// let mut input = *b"\x81\x02hi\x89\x00";
/// let limits = Limits::default();
/// let first = decoder.decode(&mut input, &limits).unwrap();
/// assert_eq!(first.event, Some(Event::Message(Message::Text("hi"))));
/// let consumed = first.consumed;
/// let second = decoder.decode(&mut input[consumed..], &limits).unwrap();
/// assert_eq!(second.event, Some(Event::Ping(b"")));
/// ```
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    /// RSV bits a negotiated extension allows on the first frame of a message.
    extension_rsv: u8,
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    frame: Option<FrameState>,
    /// The data opcode of the fragmented message in progress.
    message_opcode: Option<OpCode>,
    /// The message in progress (or the one just completed) has RSV1 set.
    compressed: bool,
    message_len: u64,
    fragments: u32,
    utf8: Utf8Validator,
    peer_closed: bool,
    /// The previous call returned an event borrowed from the spill; clear it first.
    release_spill: bool,
    spill: Option<Box<Spill>>,
}

impl Decoder {
    /// A decoder for the given end of the connection.
    pub fn new(role: Role) -> Decoder {
        Decoder {
            role,
            extension_rsv: 0,
            header: [0; MAX_HEADER_LEN],
            header_len: 0,
            frame: None,
            message_opcode: None,
            compressed: false,
            message_len: 0,
            fragments: 0,
            utf8: Utf8Validator::default(),
            peer_closed: false,
            release_spill: false,
            spill: None,
        }
    }

    /// Allows RSV bits (as `0b0xyz`, RSV1 = `0b100`) on the first frame of a
    /// message, for a negotiated extension.
    pub fn allow_extension_rsv(&mut self, rsv: u8) {
        self.extension_rsv = rsv & 0x07;
    }

    /// Whether the decoder holds no partial frame or message (nothing would be
    /// lost by dropping the connection's read state here).
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && self.frame.is_none() && self.message_opcode.is_none()
    }

    /// Whether the data message last completed (or in progress) is compressed
    /// (RSV1 set under permessage-deflate).
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// Whether the peer's close frame has been decoded.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Gives back the buffer behind the last event returned, if nothing else
    /// needs it. [`decode`](Self::decode) does this itself; call it when done
    /// with a chunk so that a quiet connection holds no buffer.
    pub fn release_buffers(&mut self) {
        if std::mem::take(&mut self.release_spill) {
            match self.message_opcode {
                None => recycle_spill(self.spill.take()),
                Some(_) => self.spill.as_mut().expect("spill in use").control.clear(),
            }
        }
    }

    /// Decodes from `input` until one event is complete or the input runs out.
    ///
    /// Payload bytes in `input` are unmasked in place. Call again with
    /// `&mut input[consumed..]` while input remains. The result is the same
    /// however the byte stream is split into chunks. After an error the
    /// connection must be failed with [`ProtocolError::close_code`].
    pub fn decode<'a>(&'a mut self, input: &'a mut [u8], limits: &Limits) -> Result<Decoded<'a>, ProtocolError> {
        let polled = self.poll(input, limits)?;
        let event = match polled.ready {
            Some(ready) => Some(self.event(input, ready)?),
            None => None,
        };
        Ok(Decoded { consumed: polled.consumed, event })
    }

    /// [`decode`](Self::decode) in two steps, for a caller that returns the
    /// event from a read loop (which the borrow checker refuses to let a
    /// borrowed event leave): `poll` consumes input and says whether an event
    /// is complete, without borrowing; [`event`](Self::event) then hands it out.
    ///
    /// ```
    /// use emitws::proto::{Decoder, Event, Limits, Message, Role};
    /// let mut decoder = Decoder::new(Role::Client);
    /// let mut input = *b"\x81\x02hi";
    /// let polled = decoder.poll(&mut input, &Limits::default()).unwrap();
    /// let ready = polled.ready.expect("a whole frame");
    /// assert!(ready.is_data());
    /// assert_eq!(decoder.event(&input, ready), Ok(Event::Message(Message::Text("hi"))));
    /// ```
    pub fn poll(&mut self, input: &mut [u8], limits: &Limits) -> Result<Polled, ProtocolError> {
        self.release_buffers();
        let (consumed, ready) = self.advance(input, limits)?;
        Ok(Polled { consumed, ready: ready.map(ReadyEvent) })
    }

    /// The event [`poll`](Self::poll) found complete. `input` must be the
    /// input given to that `poll` (at least up to what it consumed), and no
    /// other `poll` may come between.
    #[inline]
    pub fn event<'a>(&'a self, input: &'a [u8], ready: ReadyEvent) -> Result<Event<'a>, ProtocolError> {
        let (opcode, bytes) = match ready.0 {
            Ready::InInput { opcode, start, end } => (opcode, &input[start..end]),
            Ready::InSpill { opcode } => {
                let spill = self.spill.as_deref().expect("spill holds the event");
                let bytes = if opcode.is_control() { &spill.control } else { &spill.message };
                (opcode, &bytes[..])
            }
        };
        Ok(match opcode {
            OpCode::Text | OpCode::Binary if self.compressed => {
                Event::Compressed { text: opcode == OpCode::Text, payload: bytes }
            }
            OpCode::Text => Event::Message(Message::Text(utf8::text(bytes)?)),
            OpCode::Binary => Event::Message(Message::Binary(bytes)),
            OpCode::Ping => Event::Ping(bytes),
            OpCode::Pong => Event::Pong(bytes),
            _ => parse_close(bytes)?,
        })
    }

    /// Consumes input until an event is complete; says where its bytes are.
    fn advance(&mut self, input: &mut [u8], limits: &Limits) -> Result<(usize, Option<Ready>), ProtocolError> {
        let mut pos = 0;
        loop {
            if self.frame.is_none() {
                match self.read_header(&input[pos..], limits)? {
                    Some(used) => pos += used,
                    None => return Ok((input.len(), None)),
                }
            }
            let mut frame = self.frame.expect("a frame is being read");
            let start = pos;
            let take = (frame.len - frame.read).min((input.len() - pos) as u64) as usize;
            let chunk = &mut input[pos..pos + take];
            if let Some(mask) = frame.mask {
                apply_mask(chunk, mask, frame.read as usize);
            }
            let whole_frame_in_chunk = frame.read == 0 && take as u64 == frame.len;
            frame.read += take as u64;
            pos += take;
            let frame_done = frame.read == frame.len;
            self.frame = if frame_done { None } else { Some(frame) };

            if frame.opcode.is_control() {
                if frame_done && frame.opcode == OpCode::Close {
                    self.peer_closed = true;
                }
                if whole_frame_in_chunk {
                    return Ok((pos, Some(Ready::InInput { opcode: frame.opcode, start, end: pos })));
                }
                let spill = self.spill.get_or_insert_with(spare_spill);
                spill.control.extend_from_slice(chunk);
                if !frame_done {
                    return Ok((pos, None));
                }
                self.release_spill = true;
                return Ok((pos, Some(Ready::InSpill { opcode: frame.opcode })));
            }

            let opcode = self.message_opcode.expect("a data frame belongs to a message");
            let message_done = frame_done && frame.fin;
            if message_done && whole_frame_in_chunk && self.fragments == 1 {
                self.end_message();
                return Ok((pos, Some(Ready::InInput { opcode, start, end: pos })));
            }
            if opcode == OpCode::Text && !self.compressed {
                self.utf8.feed(chunk)?;
            }
            let spill = self.spill.get_or_insert_with(spare_spill);
            reserve_within(&mut spill.message, take, limits.max_message_size);
            spill.message.extend_from_slice(chunk);
            if !frame_done {
                return Ok((pos, None));
            }
            if frame.fin {
                self.utf8.finish()?;
                self.end_message();
                self.release_spill = true;
                return Ok((pos, Some(Ready::InSpill { opcode })));
            }
        }
    }

    /// Reads a frame header from `input` (after any spilled header bytes) and
    /// starts the frame. Returns the input bytes used, or `None` if the header
    /// is still incomplete (all of `input` was then stored).
    fn read_header(&mut self, input: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
        if input.is_empty() {
            return Ok(None);
        }
        if self.peer_closed {
            return Err(ProtocolError::DataAfterClose);
        }
        let (header, used) = if self.header_len == 0 {
            match FrameHeader::parse(input)? {
                Some(parsed) => parsed,
                None => {
                    self.header[..input.len()].copy_from_slice(input);
                    self.header_len = input.len() as u8;
                    return Ok(None);
                }
            }
        } else {
            let have = self.header_len as usize;
            let copy = (MAX_HEADER_LEN - have).min(input.len());
            self.header[have..have + copy].copy_from_slice(&input[..copy]);
            match FrameHeader::parse(&self.header[..have + copy])? {
                Some((header, len)) => {
                    self.header_len = 0;
                    (header, len - have)
                }
                None => {
                    self.header_len = (have + copy) as u8;
                    return Ok(None);
                }
            }
        };
        self.start_frame(header, limits)?;
        Ok(Some(used))
    }

    fn start_frame(&mut self, header: FrameHeader, limits: &Limits) -> Result<(), ProtocolError> {
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let starts_message = matches!(header.opcode, OpCode::Text | OpCode::Binary);
        let allowed_rsv = if starts_message { self.extension_rsv } else { 0 };
        if header.rsv & !allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits(header.rsv));
        }
        if !header.opcode.is_control() {
            match (header.opcode, self.message_opcode) {
                (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
                (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
                (OpCode::Continuation, Some(_)) => {}
                (opcode, None) => {
                    self.message_opcode = Some(opcode);
                    self.compressed = header.rsv & RSV1 != 0;
                }
                _ => unreachable!("data opcodes are continuation, text or binary"),
            }
            if header.payload_len > limits.max_frame_size {
                return Err(ProtocolError::FrameTooLarge);
            }
            self.message_len += header.payload_len;
            if self.message_len > limits.max_message_size {
                return Err(ProtocolError::MessageTooLarge);
            }
            self.fragments += 1;
            if self.fragments > limits.max_fragments {
                return Err(ProtocolError::TooManyFragments);
            }
        }
        self.frame = Some(FrameState {
            opcode: header.opcode,
            fin: header.fin,
            mask: header.mask,
            len: header.payload_len,
            read: 0,
        });
        Ok(())
    }

    fn end_message(&mut self) {
        self.message_opcode = None;
        self.message_len = 0;
        self.fragments = 0;
        self.utf8 = Utf8Validator::default();
    }
}

thread_local! {
    /// Spill buffers of finished messages, kept for the next split message on
    /// this thread (a server worker): split messages then cost no allocation,
    /// while idle decoders still hold no buffer at all.
    // Boxed as decoders hold them, so handing one over moves a pointer.
    #[allow(clippy::vec_box)]
    static SPARE_SPILLS: RefCell<Vec<Box<Spill>>> = const { RefCell::new(Vec::new()) };
}

/// How many spare spills a thread keeps, and the largest one it keeps.
const SPARE_SPILLS_KEPT: usize = 16;
const SPARE_SPILL_CAPACITY: usize = 1 << 20;

fn spare_spill() -> Box<Spill> {
    SPARE_SPILLS.with(|spares| spares.borrow_mut().pop()).unwrap_or_default()
}

fn recycle_spill(spill: Option<Box<Spill>>) {
    let Some(mut spill) = spill else { return };
    if spill.message.capacity() > SPARE_SPILL_CAPACITY {
        return;
    }
    spill.message.clear();
    spill.control.clear();
    SPARE_SPILLS.with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARE_SPILLS_KEPT {
            spares.push(spill);
        }
    });
}

/// Grows `buf` for `extra` more bytes, never past `limit` in capacity, so that
/// a message near the limit cannot hold twice the limit in memory.
fn reserve_within(buf: &mut Vec<u8>, extra: usize, limit: u64) {
    let needed = buf.len() + extra;
    if needed <= buf.capacity() {
        return;
    }
    let target = (buf.capacity() * 2).max(needed).max(256).min(limit.max(needed as u64) as usize);
    buf.reserve_exact(target - buf.len());
}

/// Parses a close frame's payload: empty, or a valid code and a UTF-8 reason.
pub fn parse_close(payload: &[u8]) -> Result<Event<'_>, ProtocolError> {
    match payload {
        [] => Ok(Event::Close(None, "")),
        [_] => Err(ProtocolError::InvalidCloseFrame),
        [high, low, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*high, *low]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = utf8::text(reason)?;
            Ok(Event::Close(Some(code), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::encode_frame;

    /// An owned copy of an event, for comparing runs.
    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
        Compressed(bool, Vec<u8>),
        Error(ProtocolError),
    }

    /// Feeds `stream` in chunks of the given sizes (cycled) and records events.
    fn run(role: Role, stream: &[u8], chunk_sizes: &[usize], limits: &Limits) -> Vec<Owned> {
        let mut decoder = Decoder::new(role);
        let mut out = Vec::new();
        let mut data = stream.to_vec();
        let mut at = 0;
        let mut sizes = chunk_sizes.iter().cycle();
        while at < data.len() {
            let end = (at + sizes.next().unwrap()).min(data.len());
            let mut pos = at;
            while pos < end {
                match decoder.decode(&mut data[pos..end], limits) {
                    Ok(decoded) => {
                        pos += decoded.consumed;
                        out.extend(decoded.event.map(|e| match e {
                            Event::Message(Message::Text(t)) => Owned::Text(t.into()),
                            Event::Message(Message::Binary(b)) => Owned::Binary(b.into()),
                            Event::Ping(p) => Owned::Ping(p.into()),
                            Event::Pong(p) => Owned::Pong(p.into()),
                            Event::Close(code, reason) => Owned::Close(code.map(|c| c.0), reason.into()),
                            Event::Compressed { text, payload } => Owned::Compressed(text, payload.into()),
                        }));
                    }
                    Err(e) => {
                        out.push(Owned::Error(e));
                        return out;
                    }
                }
            }
            at = end;
        }
        out
    }

    fn frame(out: &mut Vec<u8>, opcode: OpCode, fin: bool, payload: &[u8]) {
        encode_frame(out, opcode, fin, Some([0xa1, 0xb2, 0xc3, 0xd4]), payload);
    }

    fn sample_stream() -> Vec<u8> {
        let mut s = Vec::new();
        frame(&mut s, OpCode::Text, true, "héllo".as_bytes());
        frame(&mut s, OpCode::Binary, true, &[7; 300]);
        frame(&mut s, OpCode::Text, false, "frag".as_bytes());
        frame(&mut s, OpCode::Ping, true, b"in between");
        frame(&mut s, OpCode::Continuation, false, &"€".as_bytes()[..1]);
        frame(&mut s, OpCode::Continuation, true, &"€".as_bytes()[1..]);
        frame(&mut s, OpCode::Binary, true, &vec![3; 70_000]);
        frame(&mut s, OpCode::Pong, true, b"");
        frame(&mut s, OpCode::Close, true, &[0x03, 0xe8, b'b', b'y', b'e']);
        s
    }

    #[test]
    fn chunking_never_changes_the_result() {
        let stream = sample_stream();
        let limits = Limits::default();
        let whole = run(Role::Server, &stream, &[stream.len()], &limits);
        assert_eq!(whole.len(), 7);
        assert_eq!(whole[0], Owned::Text("héllo".into()));
        assert_eq!(whole[2], Owned::Ping(b"in between".to_vec()));
        assert_eq!(whole[3], Owned::Text("frag€".into()));
        assert_eq!(whole[6], Owned::Close(Some(1000), "bye".into()));
        for sizes in [&[1][..], &[2], &[3, 7], &[13, 1, 5000], &[65_536]] {
            assert_eq!(run(Role::Server, &stream, sizes, &limits), whole, "chunks {sizes:?}");
        }
    }

    fn first_error(stream: &[u8], role: Role, limits: &Limits) -> Option<ProtocolError> {
        for sizes in [&[stream.len().max(1)][..], &[1]] {
            let events = run(role, stream, sizes, limits);
            if let Some(Owned::Error(e)) = events.last() {
                let whole = run(role, stream, &[stream.len().max(1)], limits);
                assert_eq!(events, whole, "chunking changed the result");
                return Some(*e);
            }
        }
        None
    }

    #[test]
    fn each_rule_fails_with_its_error() {
        let limits = Limits::default();
        let mut unmasked = Vec::new();
        encode_frame(&mut unmasked, OpCode::Text, true, None, b"x");
        assert_eq!(first_error(&unmasked, Role::Server, &limits), Some(ProtocolError::UnmaskedFrame));
        let mut masked = Vec::new();
        frame(&mut masked, OpCode::Text, true, b"x");
        assert_eq!(first_error(&masked, Role::Client, &limits), Some(ProtocolError::MaskedFrame));
        assert_eq!(first_error(&unmasked, Role::Client, &limits), None);

        let mut s = Vec::new();
        frame(&mut s, OpCode::Continuation, true, b"x");
        assert_eq!(first_error(&s, Role::Server, &limits), Some(ProtocolError::UnexpectedContinuation));
        let mut s = Vec::new();
        frame(&mut s, OpCode::Text, false, b"x");
        frame(&mut s, OpCode::Binary, true, b"x");
        assert_eq!(first_error(&s, Role::Server, &limits), Some(ProtocolError::ExpectedContinuation));
        let mut s = Vec::new();
        crate::proto::encode_frame_with_rsv(&mut s, OpCode::Text, true, 0b100, Some([1, 2, 3, 4]), b"x");
        assert_eq!(first_error(&s, Role::Server, &limits), Some(ProtocolError::ReservedBits(0b100)));
        let mut s = Vec::new();
        frame(&mut s, OpCode::Close, true, &[0x03]);
        assert_eq!(first_error(&s, Role::Server, &limits), Some(ProtocolError::InvalidCloseFrame));
        let mut s = Vec::new();
        frame(&mut s, OpCode::Close, true, &1005u16.to_be_bytes());
        assert_eq!(first_error(&s, Role::Server, &limits), Some(ProtocolError::InvalidCloseCode(1005)));
        let mut s = Vec::new();
        frame(&mut s, OpCode::Close, true, &[0x03, 0xe8, 0xff]);
        assert_eq!(first_error(&s, Role::Server, &limits), Some(ProtocolError::InvalidUtf8));
        let mut s = Vec::new();
        frame(&mut s, OpCode::Close, true, &[]);
        frame(&mut s, OpCode::Text, true, b"late");
        assert_eq!(first_error(&s, Role::Server, &limits), Some(ProtocolError::DataAfterClose));
        // Nothing after the close is no error: a read loop may call again with no input.
        let mut decoder = Decoder::new(Role::Server);
        let mut close = Vec::new();
        frame(&mut close, OpCode::Close, true, &[]);
        assert!(decoder.decode(&mut close, &limits).unwrap().event.is_some());
        let after = decoder.decode(&mut [], &limits).unwrap();
        assert_eq!((after.consumed, after.event), (0, None));
    }

    #[test]
    fn rsv1_marks_a_compressed_message_when_allowed() {
        let mask = Some([0xa1, 0xb2, 0xc3, 0xd4]);
        let limits = Limits::default();
        let mut s = Vec::new();
        // Compressed bytes need not be UTF-8, even in a text message.
        crate::proto::encode_frame_with_rsv(&mut s, OpCode::Text, false, 0b100, mask, &[0xff, 0xfe]);
        frame(&mut s, OpCode::Ping, true, b"p");
        frame(&mut s, OpCode::Continuation, true, &[0x00]);
        frame(&mut s, OpCode::Binary, true, b"plain");
        let mut decoder = Decoder::new(Role::Server);
        decoder.allow_extension_rsv(0b100);
        let mut events = Vec::new();
        let mut pos = 0;
        while pos < s.len() {
            let decoded = decoder.decode(&mut s[pos..], &limits).unwrap();
            pos += decoded.consumed;
            events.extend(decoded.event.map(|event| format!("{event:?}")));
        }
        assert_eq!(
            events,
            [
                "Ping([112])",
                "Compressed { text: true, payload: [255, 254, 0] }",
                "Message(Binary([112, 108, 97, 105, 110]))"
            ]
        );
        // RSV1 stays forbidden on continuation and control frames.
        for (opcode, first) in [(OpCode::Continuation, true), (OpCode::Ping, false)] {
            let mut s = Vec::new();
            if first {
                frame(&mut s, OpCode::Text, false, b"a");
            }
            crate::proto::encode_frame_with_rsv(&mut s, opcode, true, 0b100, mask, b"b");
            let mut decoder = Decoder::new(Role::Server);
            decoder.allow_extension_rsv(0b100);
            let mut pos = 0;
            let error = loop {
                match decoder.decode(&mut s[pos..], &limits) {
                    Ok(decoded) => pos += decoded.consumed,
                    Err(error) => break error,
                }
            };
            assert_eq!(error, ProtocolError::ReservedBits(0b100), "{opcode:?}");
        }
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_bad_fragment() {
        let mut s = Vec::new();
        frame(&mut s, OpCode::Text, false, b"ok");
        frame(&mut s, OpCode::Continuation, false, &[0xce, 0xba, 0xff]);
        let events = run(Role::Server, &s, &[s.len()], &Limits::default());
        assert_eq!(events, [Owned::Error(ProtocolError::InvalidUtf8)]);
        // Inside one frame still arriving: the bad byte alone is enough.
        let mut s = Vec::new();
        frame(
            &mut s,
            OpCode::Text,
            true,
            &[b'a'; 10].iter().chain(&[0xff]).chain(&[b'b'; 1000]).copied().collect::<Vec<_>>(),
        );
        let mut decoder = Decoder::new(Role::Server);
        let mut head_and_bad = s[..8 + 11].to_vec(); // 8-byte header: 16-bit length and mask
        assert_eq!(decoder.decode(&mut head_and_bad, &Limits::default()).unwrap_err(), ProtocolError::InvalidUtf8);
    }

    #[test]
    fn limits_fail_before_payload_is_buffered() {
        let limits = Limits { max_frame_size: 100, max_message_size: 150, max_fragments: 3 };
        let mut decoder = Decoder::new(Role::Server);
        // Only the header of a 1 GiB frame: rejected from the header alone.
        let mut header = [0x82, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(decoder.decode(&mut header, &limits).unwrap_err(), ProtocolError::FrameTooLarge);
        let mut s = Vec::new();
        frame(&mut s, OpCode::Binary, false, &[0; 100]);
        frame(&mut s, OpCode::Continuation, false, &[0; 60]);
        assert_eq!(first_error(&s, Role::Server, &limits), Some(ProtocolError::MessageTooLarge));
        let mut s = Vec::new();
        for _ in 0..4 {
            frame(&mut s, OpCode::Continuation, false, b"x");
        }
        s[0] = 0x02; // the first frame starts a binary message
        assert_eq!(first_error(&s, Role::Server, &limits), Some(ProtocolError::TooManyFragments));
    }

    #[test]
    fn idle_decoder_holds_no_heap_memory() {
        let mut decoder = Decoder::new(Role::Server);
        let mut s = Vec::new();
        frame(&mut s, OpCode::Binary, false, &[1; 10]);
        frame(&mut s, OpCode::Continuation, true, &[2; 10]);
        let mut rest = &mut s[..];
        while !rest.is_empty() {
            let consumed = decoder.decode(rest, &Limits::default()).unwrap().consumed;
            rest = &mut rest[consumed..];
        }
        assert!(decoder.spill.is_some(), "the message was assembled in the spill");
        decoder.release_buffers();
        assert!(decoder.spill.is_none() && decoder.is_idle());
    }
}
