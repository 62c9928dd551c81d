//! The `emitws.v1` envelope: parsed borrowed from the frame, written straight
//! into a reused buffer.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::limits::is_name_byte;

/// Envelope types on the wire.
pub(crate) const EVENT: u64 = 0;
pub(crate) const REQUEST: u64 = 1;
pub(crate) const REPLY: u64 = 2;
pub(crate) const ERROR: u64 = 3;

/// The largest id: JavaScript's `Number.MAX_SAFE_INTEGER`.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// One incoming envelope, borrowing from the message text.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Envelope<'a> {
    Event {
        event: &'a str,
        data: Option<&'a RawValue>,
    },
    Request {
        id: u64,
        event: &'a str,
        data: Option<&'a RawValue>,
    },
    Reply {
        id: u64,
        data: Option<&'a RawValue>,
    },
    Error {
        id: u64,
        error: Option<&'a RawValue>,
    },
    /// A type from a later version: ignored.
    Unknown,
}

/// The error codes the server itself writes (`[3,id,{"code":..}]` and
/// `@error`), and the close code each stands for under
/// [`Policy::Close`](super::Policy::Close).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// Text that is not JSON at all: `bad_request` on the wire, close 1007.
    NotJson,
    /// Anything else refused as input (valid JSON that is no envelope, a bad
    /// id or name, a binary frame, too deep, a duplicate request id).
    BadRequest,
    TooLarge,
    RateLimited,
    Unauthorized,
    NoHandler,
    Internal,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotJson | ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NoHandler => "no_handler",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Why an envelope was refused, and the request id if one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

impl Malformed {
    fn new(id: Option<u64>, message: impl Into<String>) -> Malformed {
        Malformed { id, code: ErrorCode::BadRequest, message: message.into() }
    }
}

/// Parses one text message.
pub(crate) fn parse(text: &str) -> Result<Envelope<'_>, Malformed> {
    if let Some(envelope) = parse_compact(text) {
        return Ok(envelope);
    }
    match serde_json::from_str::<Parsed<'_>>(text) {
        Ok(Parsed(result)) => result,
        // The envelope reader stops at the first element of the wrong type,
        // so whether the text is JSON at all takes a second look.
        Err(e) => Err(match serde_json::from_str::<IgnoredAny>(text) {
            Err(syntax) => Malformed {
                id: peek_request_id(text),
                code: ErrorCode::NotJson,
                message: format!("malformed JSON: {syntax}"),
            },
            Ok(_) => Malformed::new(peek_request_id(text), format!("malformed envelope: {e}")),
        }),
    }
}

/// The shape every client writes, without whitespace: `[0,"name"(,data)]`
/// or `[1,id,"name"(,data)]`, read byte by byte (`split_once` and the serde
/// machinery cost more than the whole scan on short envelopes); `None` for
/// anything else (the full parser then decides, and explains refusals).
fn parse_compact(text: &str) -> Option<Envelope<'_>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let (id, rest) = match inner.as_bytes().get(..2)? {
        b"0," => (None, &inner[2..]),
        b"1," => {
            let (id, rest) = read_id(&inner[2..])?;
            (Some(id), rest.strip_prefix(',')?)
        }
        _ => return None,
    };
    let rest = rest.strip_prefix('"')?;
    let end = rest.bytes().position(|b| !is_name_byte(b))?;
    if rest.as_bytes()[end] != b'"' {
        return None;
    }
    let (event, rest) = (&rest[..end], &rest[end + 1..]);
    let data = match rest {
        "" => None,
        // One JSON value exactly: more elements go to the full parser.
        _ => Some(serde_json::from_str::<&RawValue>(rest.strip_prefix(',')?).ok()?),
    };
    Some(match id {
        Some(id) => Envelope::Request { id, event, data },
        None => Envelope::Event { event, data },
    })
}

/// The id of a request envelope read from its first bytes only (`[1,<id>,`),
/// for answering envelopes refused before parsing (too large, too deep).
pub(crate) fn peek_request_id(text: &str) -> Option<u64> {
    peek_id(text, |kind| kind == b'1')
}

/// The id of a reply or error envelope (`[2,<id>` or `[3,<id>`) read from its
/// first bytes only, to tell answers to the server's calls before parsing.
pub(crate) fn peek_answer_id(text: &str) -> Option<u64> {
    peek_id(text, |kind| kind == b'2' || kind == b'3')
}

fn peek_id(text: &str, kind: impl Fn(u8) -> bool) -> Option<u64> {
    // JSON's whitespace only: `str::trim_start` would also skip Unicode spaces.
    const WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];
    let rest = text.trim_start_matches(WHITESPACE).strip_prefix('[')?;
    let rest = rest.trim_start_matches(WHITESPACE).strip_prefix(|c: char| c.is_ascii() && kind(c as u8))?;
    let rest = rest.trim_start_matches(WHITESPACE).strip_prefix(',')?;
    let (id, after) = read_id(rest.trim_start_matches(WHITESPACE))?;
    // `5.5` and `5e3` start like an id but are none.
    (!after.starts_with(['.', 'e', 'E'])).then_some(id)
}

/// A JSON number that is a positive safe integer, written plainly.
fn parse_id(json: &str) -> Option<u64> {
    match read_id(json)? {
        (id, "") => Some(id),
        _ => None,
    }
}

/// The id [`parse_id`] accepts at the start of `text`, and the text after it.
fn read_id(text: &str) -> Option<(u64, &str)> {
    let bytes = text.as_bytes();
    let (mut id, mut len) = (0u64, 0);
    while let Some(&digit @ b'0'..=b'9') = bytes.get(len) {
        // MAX_ID has 16 digits: a 17th means too large, and 16 cannot overflow.
        if len == 16 {
            return None;
        }
        id = id * 10 + u64::from(digit - b'0');
        len += 1;
    }
    let plain = len > 0 && bytes[0] != b'0' && id <= MAX_ID;
    plain.then_some((id, &text[len..]))
}

/// An event name: a JSON string of name bytes, which need no escapes and so
/// are borrowed as is. Names are matched literally: one written with an
/// escape is refused, not decoded.
fn event_name(raw: Option<&RawValue>) -> Result<&str, &'static str> {
    let raw = raw.ok_or("the event name is missing")?;
    let inner =
        raw.get().strip_prefix('"').and_then(|s| s.strip_suffix('"')).ok_or("the event name must be a string")?;
    if inner.contains('\\') {
        return Err("event names may not contain JSON escapes (names are matched literally)");
    }
    match inner.bytes().all(is_name_byte) {
        true => Ok(inner),
        false => Err("event names are strings of visible ASCII without quotes or backslashes"),
    }
}

struct Parsed<'a>(Result<Envelope<'a>, Malformed>);

impl<'de> Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an emitws.v1 envelope (a JSON array)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed<'de>, A::Error> {
        let Some(kind) = seq.next_element::<u64>()? else {
            return Err(de::Error::custom("empty envelope"));
        };
        let result = if kind > ERROR {
            Ok(Envelope::Unknown)
        } else {
            let kind_has_id = kind != EVENT;
            let id = if kind_has_id {
                let raw = seq.next_element::<&RawValue>()?;
                match raw.and_then(|raw| parse_id(raw.get())) {
                    Some(id) => Some(id),
                    None => {
                        drain(&mut seq)?;
                        return Ok(Parsed(Err(Malformed::new(None, "the id must be an integer in 1..=2^53-1"))));
                    }
                }
            } else {
                None
            };
            read_rest(kind, id, &mut seq)?
        };
        drain(&mut seq)?;
        Ok(Parsed(result))
    }
}

/// Reads what follows the type (and id) of an envelope.
fn read_rest<'de, A: SeqAccess<'de>>(
    kind: u64,
    id: Option<u64>,
    seq: &mut A,
) -> Result<Result<Envelope<'de>, Malformed>, A::Error> {
    let id_or_zero = id.unwrap_or(0);
    Ok(match kind {
        EVENT | REQUEST => {
            let event = match event_name(seq.next_element::<&RawValue>()?) {
                Ok(event) => event,
                Err(message) => return Ok(Err(Malformed::new(id, message))),
            };
            let data = seq.next_element::<&RawValue>()?;
            match id {
                Some(id) => Ok(Envelope::Request { id, event, data }),
                None => Ok(Envelope::Event { event, data }),
            }
        }
        REPLY => Ok(Envelope::Reply { id: id_or_zero, data: seq.next_element::<&RawValue>()? }),
        _ => Ok(Envelope::Error { id: id_or_zero, error: seq.next_element::<&RawValue>()? }),
    })
}

/// Skips elements a later version may add.
fn drain<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The deepest nesting of arrays and objects in `text` (strings skipped).
pub(crate) fn depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Writes `[0,"event",data]`.
pub(crate) fn write_event<T: Serialize + ?Sized>(out: &mut Vec<u8>, event: &str, data: &T) -> serde_json::Result<()> {
    write_event_elements(out, event, data)?;
    out.push(b']');
    Ok(())
}

/// Writes `[0,"name",data,{"room":"#r","offset":n,"epoch":"e"}]`: a broadcast
/// to a room with history, at its place in the room's stream (PROTOCOL.md §13).
pub(crate) fn write_room_event<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    event: &str,
    data: &T,
    room: &str,
    offset: u64,
    epoch: &str,
) -> serde_json::Result<()> {
    write_event_elements(out, event, data)?;
    out.push(b',');
    write_position(out, room, offset, epoch)?;
    out.push(b']');
    Ok(())
}

/// Writes `{"room":"#r","offset":n,"epoch":"e"}`: a broadcast's place in a
/// room's stream (PROTOCOL.md §13), a room event's fourth element.
pub(crate) fn write_position(out: &mut Vec<u8>, room: &str, offset: u64, epoch: &str) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"room\":");
    serde_json::to_writer(&mut *out, room)?;
    out.extend_from_slice(b",\"offset\":");
    write_id(out, offset);
    out.extend_from_slice(b",\"epoch\":");
    serde_json::to_writer(&mut *out, epoch)?;
    out.push(b'}');
    Ok(())
}

/// Writes `[0,"name",data` (an event without its closing bracket).
fn write_event_elements<T: Serialize + ?Sized>(out: &mut Vec<u8>, event: &str, data: &T) -> serde_json::Result<()> {
    out.extend_from_slice(b"[0,");
    serde_json::to_writer(&mut *out, event)?;
    out.push(b',');
    serde_json::to_writer(&mut *out, data)
}

/// Writes `[1,id,"name",data]`.
pub(crate) fn write_request(out: &mut Vec<u8>, id: u64, name: &str, data: &RawValue) -> serde_json::Result<()> {
    out.extend_from_slice(b"[1,");
    write_id(out, id);
    out.push(b',');
    serde_json::to_writer(&mut *out, name)?;
    out.push(b',');
    out.extend_from_slice(data.get().as_bytes());
    out.push(b']');
    Ok(())
}

/// Writes `[2,id,data]`.
pub(crate) fn write_reply<T: Serialize + ?Sized>(out: &mut Vec<u8>, id: u64, data: &T) -> serde_json::Result<()> {
    out.extend_from_slice(b"[2,");
    write_id(out, id);
    out.push(b',');
    serde_json::to_writer(&mut *out, data)?;
    out.push(b']');
    Ok(())
}

/// Writes `[3,id,{"code":..,"message":..}]`.
pub(crate) fn write_error(out: &mut Vec<u8>, id: u64, code: &str, message: &str) {
    out.extend_from_slice(b"[3,");
    write_id(out, id);
    out.push(b',');
    write_error_body(out, code, message);
    out.push(b']');
}

/// Writes `{"code":..,"message":..}`.
pub(crate) fn write_error_body(out: &mut Vec<u8>, code: &str, message: &str) {
    #[derive(Serialize)]
    struct Body<'a> {
        code: &'a str,
        message: &'a str,
    }
    // Two strings cannot fail to serialize.
    let _ = serde_json::to_writer(&mut *out, &Body { code, message });
}

fn write_id(out: &mut Vec<u8>, id: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).expect("raw JSON")
    }

    #[test]
    fn parses_each_envelope_type_borrowed() {
        let text = r#"[1, 7, "/chat/say", {"text": "hi"}]"#;
        let Ok(Envelope::Request { id: 7, event, data: Some(data) }) = parse(text) else { panic!("{:?}", parse(text)) };
        assert_eq!(event, "/chat/say");
        assert_eq!(data.get(), r#"{"text": "hi"}"#);
        assert!(std::ptr::eq(event.as_ptr(), text[8..].as_ptr()), "the name is borrowed from the text");
        assert!(matches!(parse(r#"[0,"/ping"]"#), Ok(Envelope::Event { event: "/ping", data: None })));
        assert!(matches!(parse(r#"[2,3,null]"#), Ok(Envelope::Reply { id: 3, data: Some(d) }) if d.get() == "null"));
        assert!(matches!(parse(r#"[3,3,{"code":"x","message":"y"}]"#), Ok(Envelope::Error { id: 3, .. })));
        assert!(matches!(parse(r#"[9,"later",{}]"#), Ok(Envelope::Unknown)));
        let extra = parse(r#"[0,"/a",1,"extra"]"#);
        assert!(matches!(extra, Ok(Envelope::Event { event: "/a", data: Some(d) }) if d.get() == "1"));
    }

    #[test]
    fn refuses_bad_ids_and_names_keeping_the_id_when_readable() {
        for bad in
            ["0", "-1", "1.5", "1e3", "9007199254740992", "10000000000000000", "99999999999999999999", "\"7\"", "01"]
        {
            let text = format!("[1,{bad},\"/x\"]");
            assert_eq!(parse(&text).unwrap_err().id, None, "{text}");
        }
        assert!(parse("[1,9007199254740991,\"/x\"]").is_ok());
        assert_eq!(parse(r#"[1,5,"/a\"b"]"#).unwrap_err().id, Some(5));
        assert_eq!(parse(r#"[1,5,42]"#).unwrap_err().id, Some(5));
        assert_eq!(parse(r#"[1,5,"/a b"]"#).unwrap_err().id, Some(5));
        assert!(parse("[0,\"/\u{e9}\"]").is_err(), "names are ASCII");
        assert_eq!(parse(r#"[1,5,"/x",{"#).unwrap_err().id, Some(5), "peeked from the prefix");
        for junk in ["", "{}", "[]", "[\"0\"]", "nope", "[0,\"/x\"] trailing"] {
            assert!(parse(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn only_text_that_is_not_json_is_classed_not_json() {
        for text in ["nope", "[0,\"/x\"", "[0,\"/x\"] x", "[\"0\",{", ""] {
            assert_eq!(parse(text).unwrap_err().code, ErrorCode::NotJson, "{text}");
        }
        for text in ["{}", "5", "[]", "[\"0\",1]", "[-1,\"/x\"]", "[1,0,\"/x\"]", r#"[0,"\/x"]"#] {
            assert_eq!(parse(text).unwrap_err().code, ErrorCode::BadRequest, "{text}");
        }
        assert_eq!((ErrorCode::NotJson.as_str(), ErrorCode::BadRequest.as_str()), ("bad_request", "bad_request"));
        assert!(parse(r#"[0,"\/x"]"#).unwrap_err().message.contains("escapes"));
    }

    #[test]
    fn peeks_answer_ids() {
        assert_eq!(peek_answer_id("[2,7,true]"), Some(7));
        assert_eq!(peek_answer_id(" [ 3 , 8 ,{}]"), Some(8));
        assert_eq!(peek_answer_id("[2,7]"), Some(7));
        assert_eq!(peek_answer_id("[1,7,\"/x\"]"), None);
        assert_eq!(peek_request_id("[2,7,true]"), None);
        assert_eq!(peek_answer_id("[20,7]"), None);
    }

    #[test]
    fn the_compact_reader_agrees_with_the_full_parser() {
        let texts = [
            r#"[1,7,"/echo","abc"]"#,
            r#"[1,7,"/echo"]"#,
            r#"[0,"/e",{"a":[1,2]}]"#,
            r#"[0,"/e"]"#,
            r#"[0,"/e",1,2]"#,
            r#"[0,"/e",[1]"#,
            r#"[0,"/e"]]"#,
            r#"[0,"/e",1]]"#,
            r#"[0,"/a\"b",1]"#,
            r#"[1,0,"/e"]"#,
            r#"[1,01,"/e"]"#,
            r#"[1,9007199254740992,"/e"]"#,
            r#"[1, 7,"/e"]"#,
            r#"[1,7,"/e", 1 ]"#,
            r#"[1,7,"/e",]"#,
            r#"[1,7,/e]"#,
            r#"[0,"/e"x]"#,
            r#"[2,7,1]"#,
            "[0,\"/\u{1}\"]",
        ];
        for text in texts {
            let full = match serde_json::from_str::<Parsed<'_>>(text) {
                Ok(Parsed(result)) => result.ok(),
                Err(_) => None,
            };
            if let Some(compact) = parse_compact(text) {
                assert_eq!(Some(format!("{compact:?}")), full.map(|e| format!("{e:?}")), "{text}");
            }
        }
        assert!(parse_compact(r#"[1,7,"/echo","abc"]"#).is_some(), "the common case takes the short way");
        assert!(parse_compact(r#"[0,"/e",{"a":[1,2]}]"#).is_some());
    }

    #[test]
    fn depth_skips_strings() {
        assert_eq!(depth(r#"[0,"/x",{"a":[1,{"b":"[[[["}]}]"#), 4);
        assert_eq!(depth(r#"[0,"\"[",1]"#), 1);
    }

    #[test]
    fn writes_envelopes() {
        let mut out = Vec::new();
        write_event(&mut out, "/a\"b", &serde_json::json!({"x": 1})).unwrap();
        assert_eq!(out, br#"[0,"/a\"b",{"x":1}]"#);
        out.clear();
        write_reply(&mut out, 9_007_199_254_740_991, &true).unwrap();
        assert_eq!(out, b"[2,9007199254740991,true]");
        out.clear();
        write_error(&mut out, 10, "no_handler", "no \"handler\"");
        assert_eq!(out, br#"[3,10,{"code":"no_handler","message":"no \"handler\""}]"#);
        out.clear();
        write_request(&mut out, 1, "@challenge", raw(r#"{"c":"n"}"#)).unwrap();
        assert_eq!(out, br#"[1,1,"@challenge",{"c":"n"}]"#);
        out.clear();
        write_room_event(&mut out, "/said", raw(r#"{"t":"é\"x"}"#), "#lobby\"é", 42, "c3a91e07").unwrap();
        let expected = r##"[0,"/said",{"t":"é\"x"},{"room":"#lobby\"é","offset":42,"epoch":"c3a91e07"}]"##;
        assert_eq!(out, expected.as_bytes());
        // The fourth element is one more element: the envelope reads as the same event.
        let text = String::from_utf8(out).unwrap();
        assert!(
            matches!(parse(&text), Ok(Envelope::Event { event: "/said", data: Some(d) }) if d.get() == r#"{"t":"é\"x"}"#)
        );
    }
}
