//! The `envelope` target's check, part of harness.rs (see there), apart so
//! that the decoder and handshake checks build without the event layer.

use serde_json::value::RawValue;

/// The event layer's envelope parsers, compiled from their own source: the
/// modules are private to the crate, and these files need nothing else of
/// it (`binary`, the emitws.v2 one, is binary_check.rs's).
#[path = "../src/app"]
pub(crate) mod app {
    pub mod binary;
    pub mod envelope;
    pub mod limits;
}
use app::envelope::{self, Envelope, MAX_ID};

/// Checks `app::envelope::parse` (the hand scanner and its serde fallback)
/// against serde_json's reading of the same text, differentially.
///
/// The reference reads the text with `serde_json::from_str::<Vec<&RawValue>>`
/// (one JSON array, nothing but whitespace around it, serde_json's nesting
/// limit) and then applies PROTOCOL.md §2 to the elements, written here
/// independently of the parser:
/// - not such an array, or an empty one: refused;
/// - element 0 must read as a `u64` (serde_json's rule: `0`, `3`, not `1.0`
///   or `-1`); a type above 3 is accepted as `Unknown`, whatever follows;
/// - an id (types 1-3, element 1) must be a JSON integer in 1..=2^53-1
///   written plainly: only digits (serde_json already refuses a leading zero),
///   so `1.0`, `1e3` and `-1` are refused although serde_json reads them as
///   numbers. A bad or missing id is refused without an id;
/// - a name (types 0-1, the element after the id) must read as a JSON string
///   whose characters are all visible ASCII (0x21-0x7e) other than `"` and
///   `\`, and whose text on the wire is exactly that string in quotes: a name
///   written with any escape (`"\/ping"`, `"\u0041"`) is refused by design
///   (names are matched literally). The empty name passes here (the length
///   and the leading `/` are the router's rules). A bad name is refused with
///   the request's id (none for an event);
/// - data (error body for type 3) is the next element's raw text, exactly as
///   serde_json delimits it, or none; later elements are ignored.
///
/// When serde_json cannot read the text at all, the parser may still report a
/// request id (to answer a truncated or oversized request): exactly when the
/// text starts with JSON whitespace, `[`, `1`, `,` and a plain id as above
/// that is not continued by more of a number (`.`, `e`, `E`).
///
/// Everything else must agree exactly: accepted or refused, the envelope type,
/// id, name and data text; a refusal's id and a non-empty message.
pub fn check_envelope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let ours = match envelope::parse(text) {
        Ok(envelope) => Ok(EnvelopeSummary::of(envelope)),
        Err(malformed) => {
            assert!(!malformed.message.is_empty(), "a refusal without a message: {text:?}");
            Err(malformed.id)
        }
    };
    assert_eq!(ours, model_envelope(text), "the envelope parser disagrees with serde_json on {text:?}");
}

/// What an accepted envelope says: type, id, name and the data's raw text.
#[derive(Debug, PartialEq, Eq)]
pub struct EnvelopeSummary {
    kind: u64,
    id: Option<u64>,
    name: Option<String>,
    data: Option<String>,
}

impl EnvelopeSummary {
    fn of(envelope: Envelope<'_>) -> EnvelopeSummary {
        let raw = |data: Option<&RawValue>| data.map(|data| data.get().to_owned());
        let (kind, id, name, data) = match envelope {
            Envelope::Event { event, data } => (0, None, Some(event.to_owned()), raw(data)),
            Envelope::Request { id, event, data } => (1, Some(id), Some(event.to_owned()), raw(data)),
            Envelope::Reply { id, data } => (2, Some(id), None, raw(data)),
            Envelope::Error { id, error } => (3, Some(id), None, raw(error)),
            Envelope::Unknown => (4, None, None, None),
        };
        EnvelopeSummary { kind, id, name, data }
    }
}

/// The reference reading described at [`check_envelope`]: the summary, or the
/// refusal's id.
pub fn model_envelope(text: &str) -> Result<EnvelopeSummary, Option<u64>> {
    let Ok(elements) = serde_json::from_str::<Vec<&RawValue>>(text) else { return Err(model_peek_id(text)) };
    let raw = |index: usize| elements.get(index).map(|raw| raw.get());
    let kind = raw(0).ok_or(None)?;
    let kind = serde_json::from_str::<u64>(kind).map_err(|_| None)?;
    if kind > 3 {
        return Ok(EnvelopeSummary { kind: 4, id: None, name: None, data: None });
    }
    let id = match kind {
        0 => None,
        _ => Some(raw(1).and_then(model_id).ok_or(None)?),
    };
    let mut next = if kind == 0 { 1 } else { 2 };
    let name = match kind {
        0 | 1 => {
            let name = raw(next).and_then(model_name).ok_or(id)?;
            next += 1;
            Some(name)
        }
        _ => None,
    };
    Ok(EnvelopeSummary { kind, id, name, data: raw(next).map(str::to_owned) })
}

/// An id as PROTOCOL.md §2 writes it: digits only, read by serde_json, 1..=2^53-1.
fn model_id(raw: &str) -> Option<u64> {
    let plain = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    let id = serde_json::from_str::<u64>(raw).ok().filter(|id| plain && (1..=MAX_ID).contains(id))?;
    Some(id)
}

/// A name: a JSON string of visible ASCII without `"` or `\`, written with no escape.
fn model_name(raw: &str) -> Option<String> {
    let name = serde_json::from_str::<String>(raw).ok()?;
    let visible = name.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    (visible && raw == format!("\"{name}\"")).then_some(name)
}

/// The id of a request that serde_json cannot read: `[1,<plain id>` after JSON
/// whitespace, the id not continued by more of a number.
fn model_peek_id(text: &str) -> Option<u64> {
    let mut rest = text;
    for token in ["[", "1", ","] {
        rest = rest.trim_start_matches([' ', '\t', '\n', '\r']).strip_prefix(token)?;
    }
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\r']);
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let continued = rest[end..].starts_with(['.', 'e', 'E']);
    model_id(&rest[..end]).filter(|_| !continued)
}
