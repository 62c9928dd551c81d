//! Payload masking (RFC 6455 §5.3): every payload byte XOR-ed with a 4-byte key.
//!
//! This module holds most of the crate's `unsafe` code (the rest: the two
//! zlib output calls in deflate.rs); the crate root denies it everywhere else.
//! The word-at-a-time path is always available; on x86_64 an AVX2 path is
//! picked at run time when the CPU has it. Both are tested against the
//! byte-at-a-time reference at every length and alignment.
#![allow(unsafe_code)]

/// XORs `buf` with `key`, as if `buf` began at byte `offset` of the payload.
///
/// Applying the same key twice restores the input, so this both masks and
/// unmasks. `offset` lets a payload split across reads be unmasked piece by piece.
///
/// ```
/// let mut data = *b"Hello";
/// emitws::proto::apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
/// assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
/// ```
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    #[cfg(target_arch = "x86_64")]
    if buf.len() >= 64 && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked on the line above.
        unsafe { avx2::apply(buf, key) };
        return;
    }
    apply_words(buf, key);
}

/// Byte at a time: the reference the fast paths are tested against, and
/// their unaligned head and tail.
fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(i + offset) & 3];
    }
}

/// Masking keys for a client: xorshift64*, a generator fast enough to draw a
/// fresh key for every frame without a system call (RFC 6455 §5.3 asks for
/// keys a proxy cannot predict; a 64-bit state seeded from the OS CSPRNG gives
/// that, while the core stays free of I/O: the caller brings the seed).
///
/// ```
/// use emitws::proto::MaskRng;
/// let mut rng = MaskRng::from_seed(0x1234_5678_9abc_def0);
/// assert_ne!(rng.next_key(), rng.next_key());
/// ```
#[derive(Clone, Debug)]
pub struct MaskRng(u64);

impl MaskRng {
    /// A generator started from `seed` (any value; zero is remapped, as
    /// xorshift would stay at zero forever).
    pub fn from_seed(seed: u64) -> MaskRng {
        MaskRng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A fresh masking key.
    pub fn next_key(&mut self) -> [u8; 4] {
        ((self.next_u64() >> 32) as u32).to_ne_bytes()
    }
}

/// The key as seen from `offset` bytes into the payload.
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut word = u32::from_le_bytes(key);
    word = word.rotate_right(8 * (offset & 3) as u32);
    word.to_le_bytes()
}

/// Eight bytes per step over the aligned middle of `buf`.
#[inline]
fn apply_words(buf: &mut [u8], key: [u8; 4]) {
    // SAFETY: every bit pattern is a valid u64, so reinterpreting the aligned
    // middle of a byte slice as words is sound.
    let (head, words, tail) = unsafe { buf.align_to_mut::<u64>() };
    apply_mask_scalar(head, key, 0);
    let key = rotate(key, head.len());
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    for word in words.iter_mut() {
        *word ^= wide;
    }
    apply_mask_scalar(tail, key, 0);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn apply(buf: &mut [u8], key: [u8; 4]) {
        let wide = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let mut blocks = buf.chunks_exact_mut(32);
        for block in &mut blocks {
            let ptr = block.as_mut_ptr() as *mut __m256i;
            // SAFETY: `block` is exactly 32 writable bytes; the unaligned
            // load and store forms have no alignment requirement.
            unsafe { _mm256_storeu_si256(ptr, _mm256_xor_si256(_mm256_loadu_si256(ptr), wide)) };
        }
        // Whole blocks were 32 bytes, a multiple of 4, so the key phase is unchanged.
        super::apply_words(blocks.into_remainder(), key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_paths_match_reference_at_every_length_alignment_and_offset() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let source: Vec<u8> = (0..600u32).map(|i| (i * 7 + 3) as u8).collect();
        for align in 0..8 {
            for len in (0..300).chain([511, 512, 513, 599 - align]) {
                for offset in 0..4 {
                    let mut expected = source[align..align + len].to_vec();
                    apply_mask_scalar(&mut expected, key, offset);
                    let mut fast = source.clone();
                    apply_mask(&mut fast[align..align + len], key, offset);
                    assert_eq!(&fast[align..align + len], &expected[..], "len {len} align {align} offset {offset}");
                    let mut words = source.clone();
                    apply_words(&mut words[align..align + len], rotate(key, offset));
                    assert_eq!(&words[align..align + len], &expected[..]);
                }
            }
        }
    }

    #[test]
    fn split_unmasking_equals_whole() {
        let key = [1, 2, 3, 4];
        let mut whole: Vec<u8> = (0..100).collect();
        let mut split = whole.clone();
        apply_mask(&mut whole, key, 0);
        let (a, b) = split.split_at_mut(37);
        apply_mask(a, key, 0);
        apply_mask(b, key, 37);
        assert_eq!(whole, split);
    }
}
