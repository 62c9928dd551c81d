//! The `binary` target's check, part of harness.rs (see there): the
//! `emitws.v2` binary envelope decoder (`src/app/binary.rs`) against a
//! model written here from PROTOCOL.md §10 alone.

/// The binary envelope codec, compiled from its own source with the JSON
/// one (it needs only `envelope::MAX_ID`), in envelope_check.rs.
use super::envelope_check::app::binary::{self, BinaryEnvelope};

/// What PROTOCOL.md §10 says a frame is: `Ok((type, id, name, position,
/// payload))` (type `None` for a reserved type, ignored; a position for type
/// 4 only), or `Err(id)`: refused, with the request id when one could be read.
type Model<'a> = Result<(Option<u8>, Option<u64>, Option<&'a str>, Option<&'a str>, &'a [u8]), Option<u64>>;

fn model(frame: &[u8]) -> Model<'_> {
    let Some((&kind, mut rest)) = frame.split_first() else { return Err(None) };
    if kind > 4 {
        return Ok((None, None, None, None, &[]));
    }
    let mut id = None;
    if kind != 0 && kind != 4 {
        // LEB128 read in full width, then checked: at most 8 bytes, the
        // shortest form (re-encoding gives back as many bytes), 1..=2^53-1.
        let Some(end) = rest.iter().position(|b| b & 0x80 == 0) else { return Err(None) };
        let value = rest[..=end].iter().rev().fold(0u128, |value, b| value << 7 | u128::from(b & 0x7f));
        let shortest_len = (128 - value.leading_zeros() as usize).div_ceil(7).max(1);
        if end >= 8 || shortest_len != end + 1 || value == 0 || value > (1 << 53) - 1 {
            return Err(None);
        }
        id = Some(value as u64);
        rest = &rest[end + 1..];
    }
    let request_id = if kind == 1 { id } else { None };
    // A length byte (1..=255), then as many bytes of UTF-8.
    fn text<'a>(rest: &mut &'a [u8], request_id: Option<u64>) -> Result<&'a str, Option<u64>> {
        let Some((&len, after)) = rest.split_first() else { return Err(request_id) };
        let len = usize::from(len);
        if len == 0 || len > after.len() {
            return Err(request_id);
        }
        let text = std::str::from_utf8(&after[..len]).map_err(|_| request_id)?;
        *rest = &after[len..];
        Ok(text)
    }
    let name = if kind <= 1 || kind == 4 { Some(text(&mut rest, request_id)?) } else { None };
    let position = if kind == 4 { Some(text(&mut rest, request_id)?) } else { None };
    Ok((Some(kind), id, name, position, rest))
}

/// Checks `binary::parse` against [`model`] on one frame: the same verdict,
/// type, id, name and payload (borrowed from the frame), the same id on a
/// refusal; the `peek_*` helpers agree with it; an accepted envelope written
/// back with `binary::write` gives the frame byte for byte (each envelope has
/// one encoding).
pub fn check_binary(frame: &[u8]) {
    let ours = binary::parse(frame);
    let reference = model(frame);
    match (&ours, &reference) {
        (Ok(BinaryEnvelope::Unknown), Ok((None, ..))) => {}
        (Ok(envelope), Ok((Some(kind), id, name, position, payload))) => {
            let (our_kind, our_id, our_name, our_position, our_payload) = match *envelope {
                BinaryEnvelope::Event { event, payload } => (0, None, Some(event), None, payload),
                BinaryEnvelope::Request { id, event, payload } => (1, Some(id), Some(event), None, payload),
                BinaryEnvelope::Reply { id, payload } => (2, Some(id), None, None, payload),
                BinaryEnvelope::Error { id, body } => (3, Some(id), None, None, body),
                BinaryEnvelope::EventAt { event, position, payload } => (4, None, Some(event), Some(position), payload),
                BinaryEnvelope::Unknown => unreachable!("matched above"),
            };
            let ours = (our_kind, our_id, our_name, our_position, our_payload);
            assert_eq!(ours, (*kind, *id, *name, *position, *payload), "{frame:02x?}");
            assert!(std::ptr::eq(our_payload.as_ptr_range().end, frame.as_ptr_range().end), "the payload is borrowed");
            let mut written = Vec::new();
            match (our_name, our_position) {
                (Some(name), Some(position)) => binary::write_event_at(&mut written, name, position, our_payload),
                _ => binary::write(&mut written, our_kind, our_id, our_name, our_payload),
            }
            assert_eq!(written, frame, "an accepted frame written back");
        }
        (Err(bad), Err(id)) => {
            assert_eq!(bad.id, *id, "the refusal's id, {frame:02x?}");
            assert!(!bad.message.is_empty());
        }
        _ => panic!("parse {ours:?} but the model says {reference:?} for {frame:02x?}"),
    }
    let readable_id = |kinds: &[u8]| {
        let (&kind, rest) = frame.split_first()?;
        kinds.contains(&kind).then(|| model(&[&[2u8][..], rest].concat()).ok().and_then(|(_, id, ..)| id))?
    };
    assert_eq!(binary::peek_request_id(frame), readable_id(&[1]), "peek_request_id {frame:02x?}");
    assert_eq!(binary::peek_answer_id(frame), readable_id(&[2, 3]), "peek_answer_id {frame:02x?}");
}
