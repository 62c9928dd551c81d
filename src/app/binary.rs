//! The `emitws.v2` binary envelope (PROTOCOL.md §10): one binary frame, a
//! small header (type, id, event name) and the payload's raw bytes, read
//! borrowed from the frame and written into a reused buffer.
//!
//! ```text
//! type     1 byte        0 event, 1 request, 2 reply, 3 error reply, 4 event
//!                        with a room position; 5-255 reserved (ignored)
//! id       LEB128        types 1-3: 1..=2^53-1, shortest form, 1 to 8 bytes
//! name     1 + N bytes   types 0, 1 and 4: N (1..=255), then N bytes of UTF-8
//! position 1 + P bytes   type 4: P (1..=255), then P bytes of UTF-8: the JSON
//!                        {"room","offset","epoch"} of a JSON event's fourth element
//! payload  the rest      raw bytes (type 3: the error body's JSON)
//! ```
//!
//! Only `std` and [`super::envelope::MAX_ID`]: the fuzz harness compiles
//! this file on its own (`fuzz/binary_check.rs`).

use super::envelope::MAX_ID;

/// The subprotocol whose binary frames are envelopes.
pub const PROTOCOL_V2: &str = "emitws.v2";

/// Binary envelope types: those of the JSON envelopes (PROTOCOL.md §2).
pub(crate) const EVENT: u8 = 0;
pub(crate) const REQUEST: u8 = 1;
pub(crate) const REPLY: u8 = 2;
pub(crate) const ERROR: u8 = 3;
/// An event broadcast to a room with history, with its place in the room's
/// stream (PROTOCOL.md §13): server to client only.
pub(crate) const EVENT_AT: u8 = 4;

/// The longest event name a binary header carries (its length is one byte).
pub const MAX_BINARY_NAME: usize = 255;

/// The longest position a type-4 header carries (its length is one byte).
pub(crate) const MAX_POSITION: usize = 255;

/// The most bytes an id takes: 2^53 - 1 needs 53 bits, 7 per byte.
const MAX_ID_BYTES: usize = 8;

/// One incoming binary envelope, borrowing from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryEnvelope<'a> {
    Event {
        event: &'a str,
        payload: &'a [u8],
    },
    Request {
        id: u64,
        event: &'a str,
        payload: &'a [u8],
    },
    Reply {
        id: u64,
        payload: &'a [u8],
    },
    /// `body`: the error body's JSON text, as sent (not checked here).
    Error {
        id: u64,
        body: &'a [u8],
    },
    /// `position`: the JSON `{"room","offset","epoch"}`, as sent (not checked here).
    EventAt {
        event: &'a str,
        position: &'a str,
        payload: &'a [u8],
    },
    /// A type from a later version: ignored.
    Unknown,
}

/// Why a binary frame was refused, and the request id if one could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadHeader {
    pub id: Option<u64>,
    pub message: &'static str,
}

/// Parses one binary frame.
pub(crate) fn parse(frame: &[u8]) -> Result<BinaryEnvelope<'_>, BadHeader> {
    let bad = |id, message| BadHeader { id, message };
    let Some((&kind, rest)) = frame.split_first() else {
        return Err(bad(None, "empty binary frame: the envelope type is missing"));
    };
    if kind == EVENT_AT {
        return parse_event_at(rest);
    }
    if kind > ERROR {
        return Ok(BinaryEnvelope::Unknown);
    }
    let (id, rest) = match kind {
        EVENT => (None, rest),
        _ => match read_id(rest) {
            Some((id, rest)) => (Some(id), rest),
            None => return Err(bad(None, "bad id: a LEB128 integer in 1..=2^53-1, in its shortest form")),
        },
    };
    let request_id = id.filter(|_| kind == REQUEST);
    let (event, payload) = match kind {
        EVENT | REQUEST => read_name(rest).map_err(|message| bad(request_id, message))?,
        _ => ("", rest),
    };
    let id_or_zero = id.unwrap_or(0);
    Ok(match kind {
        EVENT => BinaryEnvelope::Event { event, payload },
        REQUEST => BinaryEnvelope::Request { id: id_or_zero, event, payload },
        REPLY => BinaryEnvelope::Reply { id: id_or_zero, payload },
        _ => BinaryEnvelope::Error { id: id_or_zero, body: payload },
    })
}

/// A type-4 envelope's name, position and payload (`rest`: after the type).
fn parse_event_at(rest: &[u8]) -> Result<BinaryEnvelope<'_>, BadHeader> {
    let bad = |message| BadHeader { id: None, message };
    let (event, rest) = read_name(rest).map_err(bad)?;
    let Some((&len, rest)) = rest.split_first() else {
        return Err(bad("the position's length is missing"));
    };
    let len = usize::from(len);
    if len == 0 || rest.len() < len {
        return Err(bad("the position is empty or longer than the frame"));
    }
    let Ok(position) = std::str::from_utf8(&rest[..len]) else {
        return Err(bad("the position is not UTF-8"));
    };
    Ok(BinaryEnvelope::EventAt { event, position, payload: &rest[len..] })
}

/// An event name (its length byte, then 1 to 255 bytes of UTF-8) at the
/// start of `bytes`, and the bytes after it.
fn read_name(bytes: &[u8]) -> Result<(&str, &[u8]), &'static str> {
    let Some((&len, rest)) = bytes.split_first() else {
        return Err("the event name's length is missing");
    };
    let len = usize::from(len);
    if len == 0 || rest.len() < len {
        return Err("the event name is empty or longer than the frame");
    }
    let Ok(event) = std::str::from_utf8(&rest[..len]) else {
        return Err("the event name is not UTF-8");
    };
    Ok((event, &rest[len..]))
}

/// The id of a binary request, read from the header alone (to answer a
/// frame refused before parsing: too large, over the rate).
pub(crate) fn peek_request_id(frame: &[u8]) -> Option<u64> {
    match frame.split_first()? {
        (&REQUEST, rest) => read_id(rest).map(|(id, _)| id),
        _ => None,
    }
}

/// The id of a binary reply or error reply, to tell answers to the server's calls.
pub(crate) fn peek_answer_id(frame: &[u8]) -> Option<u64> {
    match frame.split_first()? {
        (&(REPLY | ERROR), rest) => read_id(rest).map(|(id, _)| id),
        _ => None,
    }
}

/// An id at the start of `bytes` (LEB128: 7 bits a byte, low bits first, the
/// high bit set on every byte but the last) and the bytes after it. Refused:
/// 0, above [`MAX_ID`], more than 8 bytes, a trailing zero byte (a longer
/// form than needed: each id has one encoding), a truncated one.
pub(crate) fn read_id(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut id = 0u64;
    for (at, &byte) in bytes.iter().enumerate().take(MAX_ID_BYTES) {
        id |= u64::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            let shortest = at == 0 || byte != 0;
            return (shortest && (1..=MAX_ID).contains(&id)).then_some((id, &bytes[at + 1..]));
        }
    }
    None
}

/// Appends `id` in LEB128.
pub(crate) fn write_id(out: &mut Vec<u8>, mut id: u64) {
    while id >= 0x80 {
        out.push((id as u8 & 0x7f) | 0x80);
        id >>= 7;
    }
    out.push(id as u8);
}

/// Whether `event` fits a binary header: 1 to [`MAX_BINARY_NAME`] bytes.
pub(crate) fn fits(event: &str) -> bool {
    (1..=MAX_BINARY_NAME).contains(&event.len())
}

/// Appends a header: the type, the id (for types 1-3) and the name (types
/// 0-1; the caller checked it [`fits`]). The payload follows.
pub(crate) fn write_header(out: &mut Vec<u8>, kind: u8, id: Option<u64>, event: Option<&str>) {
    out.push(kind);
    if let Some(id) = id {
        write_id(out, id);
    }
    if let Some(event) = event {
        debug_assert!(fits(event), "a binary header's name is 1 to 255 bytes");
        out.push(event.len() as u8);
        out.extend_from_slice(event.as_bytes());
    }
}

/// Appends a type-4 envelope: `event` (which [`fits`]) at `position` (the
/// JSON `{"room","offset","epoch"}`, 1 to [`MAX_POSITION`] bytes), then `payload`.
pub(crate) fn write_event_at(out: &mut Vec<u8>, event: &str, position: &str, payload: &[u8]) {
    debug_assert!((1..=MAX_POSITION).contains(&position.len()), "a position is 1 to 255 bytes");
    out.reserve(3 + event.len() + position.len() + payload.len());
    write_header(out, EVENT_AT, None, Some(event));
    out.push(position.len() as u8);
    out.extend_from_slice(position.as_bytes());
    out.extend_from_slice(payload);
}

/// Appends a whole envelope: its header, then `payload`.
pub(crate) fn write(out: &mut Vec<u8>, kind: u8, id: Option<u64>, event: Option<&str>, payload: &[u8]) {
    out.reserve(1 + MAX_ID_BYTES + 1 + event.map_or(0, str::len) + payload.len());
    write_header(out, kind, id, event);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, id: Option<u64>, event: Option<&str>, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, kind, id, event, payload);
        out
    }

    #[test]
    fn the_documented_example_reads_borrowed() {
        // PROTOCOL.md §10: request 300 to "/up" with bytes DE AD BE EF.
        let bytes = [0x01, 0xac, 0x02, 0x03, b'/', b'u', b'p', 0xde, 0xad, 0xbe, 0xef];
        assert_eq!(frame(REQUEST, Some(300), Some("/up"), &[0xde, 0xad, 0xbe, 0xef]), bytes);
        let Ok(BinaryEnvelope::Request { id: 300, event: "/up", payload }) = parse(&bytes) else { panic!() };
        assert!(std::ptr::eq(payload.as_ptr(), bytes[7..].as_ptr()), "the payload is borrowed");
        assert_eq!(parse(&[0x00, 0x02, b'/', b'x']), Ok(BinaryEnvelope::Event { event: "/x", payload: &[] }));
        assert_eq!(parse(&[0x02, 0x05, 0xff]), Ok(BinaryEnvelope::Reply { id: 5, payload: &[0xff] }));
        assert_eq!(parse(&[0x03, 0x05, b'{', b'}']), Ok(BinaryEnvelope::Error { id: 5, body: b"{}" }));
        assert_eq!(parse(&[0x05, 0xff]), Ok(BinaryEnvelope::Unknown));
        assert_eq!(parse(&[0xff]), Ok(BinaryEnvelope::Unknown));
    }

    #[test]
    fn an_event_with_a_position_reads_borrowed_and_writes_back() {
        let position = r##"{"room":"#r","offset":3,"epoch":"ab"}"##;
        let mut bytes = vec![0x04, 0x02, b'/', b'x', position.len() as u8];
        bytes.extend_from_slice(position.as_bytes());
        bytes.extend_from_slice(&[0xde, 0xad]);
        let mut written = Vec::new();
        write_event_at(&mut written, "/x", position, &[0xde, 0xad]);
        assert_eq!(written, bytes);
        assert_eq!(parse(&bytes), Ok(BinaryEnvelope::EventAt { event: "/x", position, payload: &[0xde, 0xad] }));
        assert!(parse(&[0x04, 0x02, b'/', b'x']).is_err(), "no position length");
        assert!(parse(&[0x04, 0x02, b'/', b'x', 0x00]).is_err(), "an empty position");
        assert!(parse(&[0x04, 0x02, b'/', b'x', 0x03, b'{']).is_err(), "a position past the end");
        assert!(parse(&[0x04, 0x02, b'/', b'x', 0x01, 0xc3]).is_err(), "a position not UTF-8");
        assert!(parse(&[0x04, 0x00]).is_err(), "an empty name");
        assert_eq!(parse(&[0x04, 0x02, b'/']).unwrap_err().id, None, "an event has no id");
    }

    #[test]
    fn ids_have_one_encoding_in_range() {
        for id in [1, 127, 128, 16_383, 16_384, 1 << 35, MAX_ID] {
            let mut out = Vec::new();
            write_id(&mut out, id);
            assert!(out.len() <= MAX_ID_BYTES);
            assert_eq!(read_id(&out), Some((id, &[][..])), "{id}");
        }
        assert_eq!(read_id(&[0x00]), None, "0 is no id");
        assert_eq!(read_id(&[0x81, 0x00]), None, "1 written long");
        assert_eq!(read_id(&[0x80]), None, "truncated");
        assert_eq!(read_id(&[]), None);
        let mut too_big = Vec::new();
        write_id(&mut too_big, MAX_ID + 1);
        assert_eq!(read_id(&too_big), None);
        assert_eq!(read_id(&[0xff; 9]), None, "more than 8 bytes");
    }

    #[test]
    fn bad_headers_keep_a_request_id_when_readable() {
        assert_eq!(parse(&[]).unwrap_err().id, None);
        assert_eq!(parse(&[0x01]).unwrap_err().id, None);
        assert_eq!(parse(&[0x01, 0x80]).unwrap_err().id, None);
        assert_eq!(parse(&[0x01, 0x07]).unwrap_err().id, Some(7), "no name length");
        assert_eq!(parse(&[0x01, 0x07, 0x00]).unwrap_err().id, Some(7), "empty name");
        assert_eq!(parse(&[0x01, 0x07, 0x05, b'/']).unwrap_err().id, Some(7), "name past the end");
        assert_eq!(parse(&[0x01, 0x07, 0x01, 0xc3]).unwrap_err().id, Some(7), "not UTF-8");
        assert_eq!(parse(&[0x00, 0x05, b'/']).unwrap_err().id, None, "an event has no id");
        assert_eq!(parse(&[0x02, 0x00]).unwrap_err().id, None, "a reply's bad id");
        assert_eq!(peek_request_id(&[0x01, 0x07]), Some(7));
        assert_eq!(peek_request_id(&[0x02, 0x07]), None);
        assert_eq!(peek_answer_id(&[0x03, 0x07]), Some(7));
        assert_eq!(peek_answer_id(&[0x01, 0x07]), None);
    }
}
