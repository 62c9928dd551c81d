//! Frame headers (RFC 6455 §5.2): parsing and encoding, without touching payloads.

use super::ProtocolError;

/// The 4-bit frame opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: the next fragment of a message.
    Continuation,
    /// 0x1: the first frame of a UTF-8 text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
    /// Any other value: reserved, and a protocol error when received.
    Reserved(u8),
}

impl OpCode {
    /// Decodes the low four bits of `byte`.
    pub fn from_bits(byte: u8) -> OpCode {
        match byte & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            other => OpCode::Reserved(other),
        }
    }

    /// The wire value.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xa,
            OpCode::Reserved(bits) => bits & 0x0f,
        }
    }

    /// Close, ping and pong (and reserved control opcodes 0xB–0xF).
    pub fn is_control(self) -> bool {
        self.bits() & 0x08 != 0
    }
}

/// The longest possible header: 2 bytes, an 8-byte length and a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final fragment of its message.
    pub fin: bool,
    /// RSV1..RSV3 as the three low bits (RSV1 = 0b100).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a header, and
    /// `Ok(Some((header, header_len)))` otherwise. Only rules visible in the
    /// header itself are checked here: reserved opcodes, control frame length
    /// and fragmentation, the 64-bit length's top bit and minimal length
    /// encoding. Masking and RSV rules depend on the connection and are left to
    /// the caller.
    ///
    /// ```
    /// use emitws::proto::{FrameHeader, OpCode};
    /// let (header, len) = FrameHeader::parse(&[0x81, 0x05]).unwrap().unwrap();
    /// assert_eq!((header.opcode, header.payload_len, len), (OpCode::Text, 5, 2));
    /// assert!(FrameHeader::parse(&[0x81]).unwrap().is_none());
    /// ```
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let [first, second, ..] = *buf else { return Ok(None) };
        let opcode = OpCode::from_bits(first);
        let fin = first & 0x80 != 0;
        if let OpCode::Reserved(bits) = opcode {
            return Err(ProtocolError::ReservedOpcode(bits));
        }
        let short_len = second & 0x7f;
        if opcode.is_control() {
            if short_len > 125 {
                return Err(ProtocolError::ControlFrameTooLong);
            }
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
        }
        let masked = second & 0x80 != 0;
        let len_bytes = match short_len {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(None);
        }
        let payload_len = match short_len {
            126 => {
                let len = u16::from_be_bytes([buf[2], buf[3]]) as u64;
                if len < 126 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                len
            }
            127 => {
                let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                if len <= u16::MAX as u64 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                len
            }
            len => len as u64,
        };
        let mask = masked.then(|| {
            let at = 2 + len_bytes;
            [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
        });
        let header = FrameHeader { fin, rsv: (first >> 4) & 0x07, opcode, mask, payload_len };
        Ok(Some((header, header_len)))
    }

    /// Writes the header into `out`, returning its length.
    ///
    /// ```
    /// use emitws::proto::{FrameHeader, OpCode};
    /// let header = FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask: None, payload_len: 300 };
    /// let mut out = [0; 14];
    /// let len = header.encode(&mut out);
    /// assert_eq!(&out[..len], &[0x82, 126, 0x01, 0x2c]);
    /// ```
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (self.fin as u8) << 7 | (self.rsv & 0x07) << 4 | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut len = match self.payload_len {
            0..=125 => {
                out[1] = mask_bit | self.payload_len as u8;
                2
            }
            126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
                4
            }
            _ => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        len
    }
}

/// Appends a whole frame (header, then payload, masked with `mask` if given) to `out`.
///
/// ```
/// use emitws::proto::{encode_frame, OpCode};
/// let mut out = Vec::new();
/// encode_frame(&mut out, OpCode::Text, true, None, b"hi");
/// assert_eq!(out, [0x81, 0x02, b'h', b'i']);
/// ```
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) {
    encode_frame_with_rsv(out, opcode, fin, 0, mask, payload)
}

/// [`encode_frame`] with RSV bits, for extensions that claim them.
pub fn encode_frame_with_rsv(
    out: &mut Vec<u8>,
    opcode: OpCode,
    fin: bool,
    rsv: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let header = FrameHeader { fin, rsv, opcode, mask, payload_len: payload.len() as u64 };
    let mut head = [0; MAX_HEADER_LEN];
    let head_len = header.encode(&mut head);
    out.reserve(head_len + payload.len());
    out.extend_from_slice(&head[..head_len]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        super::apply_mask(&mut out[start..], key, 0);
    }
}

/// The payload of a close frame: the code, then the reason.
///
/// Returns the bytes to pass as the payload of an [`OpCode::Close`] frame; the
/// reason is truncated at a character boundary to fit in 123 bytes.
pub fn close_payload(code: super::CloseCode, reason: &str) -> ([u8; 125], usize) {
    let mut reason_len = reason.len().min(123);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1;
    }
    let mut payload = [0; 125];
    payload[..2].copy_from_slice(&code.0.to_be_bytes());
    payload[2..2 + reason_len].copy_from_slice(&reason.as_bytes()[..reason_len]);
    (payload, 2 + reason_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(header: FrameHeader) {
        let mut out = [0; MAX_HEADER_LEN];
        let len = header.encode(&mut out);
        assert_eq!(FrameHeader::parse(&out[..len]), Ok(Some((header, len))));
        for partial in 0..len {
            assert_eq!(FrameHeader::parse(&out[..partial]), Ok(None), "prefix {partial}");
        }
    }

    #[test]
    fn all_three_length_forms_roundtrip_masked_and_unmasked() {
        for len in [0, 1, 125, 126, 127, 0xffff, 0x10000, 1 << 40, (1 << 63) - 1] {
            for mask in [None, Some([9, 8, 7, 6])] {
                roundtrip(FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask, payload_len: len });
            }
        }
    }

    #[test]
    fn rejects_header_level_violations() {
        assert_eq!(FrameHeader::parse(&[0x83, 0]), Err(ProtocolError::ReservedOpcode(3)));
        assert_eq!(FrameHeader::parse(&[0x8b, 0]), Err(ProtocolError::ReservedOpcode(0xb)));
        assert_eq!(FrameHeader::parse(&[0x89, 126]), Err(ProtocolError::ControlFrameTooLong));
        assert_eq!(FrameHeader::parse(&[0x09, 0]), Err(ProtocolError::FragmentedControlFrame));
        assert_eq!(FrameHeader::parse(&[0x82, 126, 0, 125]), Err(ProtocolError::NonMinimalLength));
        let mut long = [0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        assert_eq!(FrameHeader::parse(&long), Err(ProtocolError::NonMinimalLength));
        long[2] = 0x80;
        assert_eq!(FrameHeader::parse(&long), Err(ProtocolError::LengthOverflow));
    }

    #[test]
    fn close_payload_truncates_reason_at_char_boundary() {
        let reason = "é".repeat(100);
        let (payload, len) = close_payload(super::super::CloseCode::NORMAL, &reason);
        assert_eq!(len, 2 + 122);
        assert!(std::str::from_utf8(&payload[2..len]).is_ok());
    }
}
