//! Binary payloads where no binary frame can go: to sockets that speak
//! `emitws.v1`, which get the bytes base64'd in JSON (PROTOCOL.md §10), and
//! between the nodes of a cluster, whose messages are JSON text.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::binary;
use super::envelope::{self, MAX_ID};
use crate::runtime::SharedFrame;

/// The envelope type of a binary event in the JSON text nodes exchange and
/// a cluster's store keeps: `[64,"event",{"base64":"…"}]`, with the
/// broadcast's place in a room's stream as a fourth element when it has one
/// (`{"room","offset","epoch"}`, PROTOCOL.md §13). Never sent to a client (a
/// node turns it into the two frames of [`event_frames`]); a node that
/// predates binary envelopes delivers it as is, and clients ignore a type
/// they do not know (PROTOCOL.md §2).
const TRANSPORT: &str = "[64,";

/// The epoch the longest position is checked with: an epoch is 16 hex
/// digits (`history::new_epoch`).
const LONGEST_EPOCH: &str = "0123456789abcdef";

/// Appends `{"base64":"<payload in base64, RFC 4648, padded>"}`: binary data
/// as an `emitws.v1` socket gets it.
pub(crate) fn write_base64(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(b"{\"base64\":\"");
    let start = out.len();
    // 4 bytes per 3, padded: no overflow short of usize::MAX / 4 * 3.
    out.resize(start + payload.len().div_ceil(3) * 4, 0);
    let written = STANDARD.encode_slice(payload, &mut out[start..]).expect("sized for padded base64");
    out.truncate(start + written);
    out.extend_from_slice(b"\"}");
}

/// Writes `[2,id,{"base64":"…"}]`: a binary reply to an `emitws.v1` socket.
pub(crate) fn write_reply(out: &mut Vec<u8>, id: u64, payload: &[u8]) {
    out.extend_from_slice(b"[2,");
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.push(b',');
    write_base64(out, payload);
    out.push(b']');
}

/// Writes `[0,"event",{"base64":"…"}]`: a binary event to an `emitws.v1` socket.
pub(crate) fn write_event(out: &mut Vec<u8>, event: &str, payload: &[u8]) {
    write_event_text(out, "[0,", event, payload);
}

/// The bytes of a `{"base64":"…"}` value; `None` for anything else.
pub(crate) fn read_base64(json: &str) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Base64<'a> {
        #[serde(borrow)]
        base64: std::borrow::Cow<'a, str>,
    }
    let value: Base64<'_> = serde_json::from_str(json).ok()?;
    STANDARD.decode(value.base64.as_bytes()).ok()
}

/// Writes `[0,"event",{"base64":"…"}]` (`kind` 0) or the node-to-node form (`kind` 64).
fn write_event_text(out: &mut Vec<u8>, kind: &str, event: &str, payload: &[u8]) {
    out.extend_from_slice(kind.as_bytes());
    // A string always serializes.
    let _ = serde_json::to_writer(&mut *out, event);
    out.push(b',');
    write_base64(out, payload);
    out.push(b']');
}

/// A binary event's two frames: the `emitws.v2` binary envelope, and the
/// `emitws.v1` text envelope `[0,"event",{"base64":"…"}]`. The caller
/// checked that the name [fits](binary::fits).
pub(crate) fn event_frames(event: &str, payload: &[u8]) -> (SharedFrame, SharedFrame) {
    let mut frame = Vec::new();
    binary::write(&mut frame, binary::EVENT, None, Some(event), payload);
    let mut text = Vec::new();
    write_event(&mut text, event, payload);
    (SharedFrame::binary(&frame), SharedFrame::text(&utf8(text)))
}

/// The text other nodes get for a binary event (see [`TRANSPORT`]).
pub(crate) fn transport(event: &str, payload: &[u8]) -> SharedFrame {
    let mut text = Vec::new();
    write_event_text(&mut text, TRANSPORT, event, payload);
    SharedFrame::text(&utf8(text))
}

/// The two frames of a binary event another node sent in its
/// [`transport`] form; `None` for any other text (or a name that does not
/// fit a binary header, which a node never sends).
///
/// One with a position becomes an `emitws.v2` type-4 envelope and
/// `[0,"event",{"base64":"…"},{position}]`; a position too long for a
/// type-4 header (which this server never writes: see [`position_fits`])
/// leaves it out of the binary frame.
pub(crate) fn from_transport(text: &str) -> Option<(SharedFrame, SharedFrame)> {
    /// `[64, event, data, position?]`.
    #[derive(Deserialize)]
    struct Transport<'a>(
        #[allow(dead_code)] u8,
        #[serde(borrow)] std::borrow::Cow<'a, str>,
        #[serde(borrow)] &'a RawValue,
        #[serde(borrow, default)] Option<&'a RawValue>,
    );
    let rest = text.strip_prefix(TRANSPORT)?;
    let Transport(_, event, data, position) = serde_json::from_str(text).ok()?;
    let payload = read_base64(data.get())?;
    if !binary::fits(&event) {
        return None;
    }
    let mut frame = Vec::new();
    match position.map(RawValue::get).filter(|p| (1..=binary::MAX_POSITION).contains(&p.len())) {
        Some(position) => binary::write_event_at(&mut frame, &event, position, &payload),
        None => binary::write(&mut frame, binary::EVENT, None, Some(&event), &payload),
    }
    Some((SharedFrame::binary(&frame), SharedFrame::text(&format!("[0,{rest}"))))
}

/// A binary broadcast to `room` at `offset` of `epoch`: the text a room's
/// stream keeps (the [`TRANSPORT`] form with the position), the `emitws.v2`
/// type-4 envelope and the `emitws.v1` text
/// `[0,"event",{"base64":"…"},{"room","offset","epoch"}]`. The caller
/// checked that the name [fits](binary::fits) and the position
/// [fits](position_fits).
pub(crate) fn room_event_frames(
    event: &str,
    payload: &[u8],
    room: &str,
    offset: u64,
    epoch: &str,
) -> (SharedFrame, SharedFrame, SharedFrame) {
    let mut position = Vec::new();
    // A room name and an epoch always serialize.
    let _ = envelope::write_position(&mut position, room, offset, epoch);
    let position = utf8(position);
    let mut frame = Vec::new();
    binary::write_event_at(&mut frame, event, &position, payload);
    let mut text = Vec::new();
    write_event_text(&mut text, TRANSPORT, event, payload);
    text.pop(); // the closing `]`: the position follows
    text.push(b',');
    text.extend_from_slice(position.as_bytes());
    text.push(b']');
    let kept = utf8(text);
    let v1 = format!("[0,{}", &kept[TRANSPORT.len()..]);
    (SharedFrame::text(&kept), SharedFrame::binary(&frame), SharedFrame::text(&v1))
}

/// Whether a position in `room` fits a type-4 header at any offset (up to
/// 2^53 - 1) and epoch: a room name needing many JSON escapes may not, and
/// its binary broadcasts then go unnumbered.
pub(crate) fn position_fits(room: &str) -> bool {
    let mut longest = Vec::new();
    envelope::write_position(&mut longest, room, MAX_ID, LONGEST_EPOCH).is_ok() && longest.len() <= binary::MAX_POSITION
}

/// A direct message kept for an away socket, or a room's broadcast kept
/// in its stream (always text: the cluster's store keeps text), as the
/// socket gets it on its return: a binary event's
/// [`transport`] form becomes the frame of the socket's protocol (`v2`:
/// `emitws.v2`); JSON goes as it is.
pub(crate) fn as_delivered(kept: &SharedFrame, v2: bool) -> SharedFrame {
    // Checked first: a JSON message (the most kept) is not read again.
    let is_transport = kept.payload().starts_with(TRANSPORT.as_bytes());
    let transport = is_transport.then(|| std::str::from_utf8(kept.payload()).ok().and_then(from_transport)).flatten();
    match transport {
        Some((frame, _)) if v2 => frame,
        Some((_, v1)) => v1,
        None => kept.clone(),
    }
}

/// JSON text written by this module: UTF-8 by construction.
fn utf8(text: Vec<u8>) -> String {
    String::from_utf8(text).expect("JSON text is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_padded() {
        for payload in [&b""[..], b"a", b"ab", b"abc", &[0, 255, 128, 7]] {
            let mut out = Vec::new();
            write_base64(&mut out, payload);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(read_base64(&text).as_deref(), Some(payload), "{text}");
        }
        let mut out = Vec::new();
        write_base64(&mut out, b"ab");
        assert_eq!(out, b"{\"base64\":\"YWI=\"}");
        assert_eq!(read_base64("{\"base64\":\"!\"}"), None);
        assert_eq!(read_base64("\"YWI=\""), None);
    }

    #[test]
    fn the_transport_form_gives_back_both_frames() {
        let (binary, text) = event_frames("/blob", &[1, 2, 3]);
        let sent = transport("/blob", &[1, 2, 3]);
        let sent = std::str::from_utf8(sent.payload()).unwrap();
        assert!(sent.starts_with("[64,\"/blob\",{\"base64\":"), "{sent}");
        let (binary2, text2) = from_transport(sent).expect("a transport form");
        assert_eq!((binary.payload(), text.payload()), (binary2.payload(), text2.payload()));
        assert_eq!(text.payload(), b"[0,\"/blob\",{\"base64\":\"AQID\"}]");
        assert!(from_transport("[0,\"/blob\",{\"base64\":\"AQID\"}]").is_none());
        assert!(from_transport("[64,\"/blob\",{\"base64\":\"%%\"}]").is_none());
    }

    #[test]
    fn a_room_event_is_kept_as_text_and_delivered_with_its_position() {
        let (kept, binary, v1) = room_event_frames("/blob", &[1, 2, 3], "#r", 7, "ab");
        let position = r##"{"room":"#r","offset":7,"epoch":"ab"}"##;
        assert_eq!(kept.payload(), format!("[64,\"/blob\",{{\"base64\":\"AQID\"}},{position}]").as_bytes());
        assert_eq!(v1.payload(), format!("[0,\"/blob\",{{\"base64\":\"AQID\"}},{position}]").as_bytes());
        let mut expected = vec![4, 5];
        expected.extend_from_slice(b"/blob");
        expected.push(position.len() as u8);
        expected.extend_from_slice(position.as_bytes());
        expected.extend_from_slice(&[1, 2, 3]);
        assert_eq!(binary.payload(), expected);
        assert_eq!(as_delivered(&kept, true).payload(), binary.payload());
        assert_eq!(as_delivered(&kept, false).payload(), v1.payload());
        // As the cluster's script writes it: the transport form, its `]` replaced by the position.
        let sent = transport("/blob", &[1, 2, 3]);
        let scripted =
            format!("{},{position}]", std::str::from_utf8(&sent.payload()[..sent.payload().len() - 1]).unwrap());
        assert_eq!(scripted.as_bytes(), kept.payload());
        let long = format!("[64,\"/b\",{{\"base64\":\"AQID\"}},{{\"room\":\"{}\"}}]", "r".repeat(300));
        let (binary, _) = from_transport(&long).expect("a transport form");
        assert_eq!(binary.payload()[0], 0, "a position too long is left out of the binary frame");
    }

    #[test]
    fn a_position_fits_unless_the_room_needs_many_escapes() {
        assert!(position_fits(&format!("#{}", "r".repeat(127))));
        assert!(position_fits(&format!("#{}", "\"".repeat(60))));
        assert!(!position_fits(&format!("#{}", "\u{1}".repeat(127))));
    }

    #[test]
    fn a_kept_message_is_delivered_in_the_sockets_protocol() {
        let (binary, text) = event_frames("/blob", &[1, 2, 3]);
        let kept = transport("/blob", &[1, 2, 3]);
        assert_eq!(as_delivered(&kept, true).payload(), binary.payload());
        assert_eq!(as_delivered(&kept, false).payload(), text.payload());
        let json = SharedFrame::text("[0,\"/x\",1]");
        assert_eq!(as_delivered(&json, true).payload(), json.payload());
    }
}
