//! UTF-8 validation, whole and incremental, on simdutf8 (measured 2× faster
//! than std on ASCII and 6× on mixed text; docs/BENCHMARKS.md).

use simdutf8::compat::from_utf8 as validate;

use super::ProtocolError;

/// Views `bytes` as a string, or reports invalid UTF-8.
pub(crate) fn text(bytes: &[u8]) -> Result<&str, ProtocolError> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8)
}

/// Validates a byte stream chunk by chunk, failing at the first chunk that
/// makes the stream invalid, even in the middle of a character.
///
/// Holds at most the three leading bytes of a character split across chunks.
///
/// ```
/// use emitws::proto::Utf8Validator;
/// let mut v = Utf8Validator::default();
/// let euro = "€".as_bytes(); // three bytes
/// v.feed(&euro[..1]).unwrap();
/// v.feed(&euro[1..]).unwrap();
/// v.finish().unwrap();
/// assert!(v.feed(&[0xff]).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

impl Utf8Validator {
    /// Validates the next chunk of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ProtocolError> {
        if self.partial_len > 0 {
            let have = self.partial_len as usize;
            let width = char_width(self.partial[0]);
            let take = (width - have).min(bytes.len());
            self.partial[have..have + take].copy_from_slice(&bytes[..take]);
            match validate(&self.partial[..have + take]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_some() => return Err(ProtocolError::InvalidUtf8),
                Err(_) => {
                    self.partial_len = (have + take) as u8;
                    return Ok(());
                }
            }
            bytes = &bytes[take..];
        }
        match validate(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(ProtocolError::InvalidUtf8),
            Err(e) => {
                let rest = &bytes[e.valid_up_to()..];
                self.partial[..rest.len()].copy_from_slice(rest);
                self.partial_len = rest.len() as u8;
                Ok(())
            }
        }
    }

    /// Checks that the stream did not end in the middle of a character.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match self.partial_len {
            0 => Ok(()),
            _ => Err(ProtocolError::InvalidUtf8),
        }
    }
}

/// The encoded length of a character from its (valid) leading byte.
fn char_width(lead: u8) -> usize {
    match lead {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_is_valid(chunks: &[&[u8]]) -> bool {
        let mut v = Utf8Validator::default();
        chunks.iter().all(|c| v.feed(c).is_ok()) && v.finish().is_ok()
    }

    #[test]
    fn every_split_of_valid_text_is_accepted() {
        let text = "κόσμε a€𝄞z".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert!(stream_is_valid(&[&text[..i], &text[i..j], &text[j..]]), "{i} {j}");
            }
        }
    }

    #[test]
    fn fails_at_the_first_bad_byte_even_mid_character() {
        let mut v = Utf8Validator::default();
        v.feed(&[0xce, 0xba, 0xe1]).unwrap();
        // 0xe1 0x80 is still a valid prefix; 0xe1 0x80 0xc0 is not.
        v.feed(&[0x80]).unwrap();
        assert_eq!(v.feed(&[0xc0]), Err(ProtocolError::InvalidUtf8));
        // A prefix that can never start a valid character fails at once.
        let mut v = Utf8Validator::default();
        assert!(v.feed(&[0xf4, 0x90]).is_err());
        let mut v = Utf8Validator::default();
        assert!(v.feed(&[0xed, 0xa0]).is_err()); // surrogate
    }

    #[test]
    fn truncated_character_fails_at_finish() {
        let mut v = Utf8Validator::default();
        v.feed(&[0xf0, 0x9d]).unwrap();
        assert!(v.finish().is_err());
    }

    #[test]
    fn matches_std_on_every_byte_split_of_random_input() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (seed % 12) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    [0x41, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0xff, 0xed][(seed % 12) as usize]
                })
                .collect();
            let expected = std::str::from_utf8(&bytes).is_ok();
            for split in 0..=len {
                assert_eq!(stream_is_valid(&[&bytes[..split], &bytes[split..]]), expected, "{bytes:x?}");
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(stream_is_valid(&singles), expected);
        }
    }
}
