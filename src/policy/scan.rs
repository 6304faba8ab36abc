//! Finding bytes in header values eight at a time: the classic word-at-a-time tests, shared by
//! every scan on the hot path (the `;` that ends a cookie value, CR/LF/NUL in a request header,
//! bytes a JSON string must escape).
//!
//! A scan skips the whole 8-byte words in which no byte it looks for can be ([`skip_words`]),
//! then looks at the rest byte by byte; the word tests are exact (never a miss), so the byte
//! loop decides.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// `b` in every byte of a word.
const fn splat(b: u8) -> u64 {
    LO * b as u64
}

/// Whether some byte of `w` is below `n` (for `n` at most 0x80): `(w - n..) & !w & 0x80..` has
/// a byte's high bit set exactly when one is (which byte may be off; whether any is, is not).
pub fn has_byte_below(w: u64, n: u8) -> bool {
    w.wrapping_sub(splat(n)) & !w & HI != 0
}

/// Whether some byte of `w` is `b` (it is a zero byte of `w ^ b..`).
pub fn has_byte(w: u64, b: u8) -> bool {
    has_byte_below(w ^ splat(b), 1)
}

/// Whether some byte of `w` is 0x80 or above (not ASCII).
pub fn has_high_byte(w: u64) -> bool {
    w & HI != 0
}

/// The length of the leading whole 8-byte words of `s` (read little-endian) for which `hit` is
/// false: a byte that `hit` tells of is at this offset or after it.
#[inline]
pub fn skip_words(s: &[u8], hit: impl Fn(u64) -> bool) -> usize {
    let mut at = 0;
    for word in s.chunks_exact(8) {
        // (Always 8 bytes; a 0 would only stop the skip early.)
        let w = <[u8; 8]>::try_from(word).map_or(0, u64::from_le_bytes);
        if hit(w) {
            break;
        }
        at += 8;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(bytes: [u8; 8]) -> u64 {
        u64::from_le_bytes(bytes)
    }

    /// Every byte value at every place of a word, among neighbours of every kind.
    #[test]
    fn the_word_tests_are_exact() {
        for fill in [0u8, 0x01, b'a', 0x7f, 0x80, 0xff] {
            for at in 0..8 {
                for b in 0..=255u8 {
                    let mut bytes = [fill; 8];
                    bytes[at] = b;
                    let w = word(bytes);
                    for n in [1u8, 0x20, 0x80] {
                        assert_eq!(has_byte_below(w, n), bytes.iter().any(|&x| x < n));
                    }
                    for t in [0u8, b';', b'"', b'\\', b'\r', 0xff] {
                        assert_eq!(has_byte(w, t), bytes.contains(&t), "{bytes:?} {t}");
                    }
                    assert_eq!(has_high_byte(w), bytes.iter().any(|&x| x >= 0x80));
                }
            }
        }
    }

    #[test]
    fn whole_words_without_a_hit_are_skipped() {
        for len in 0..40 {
            for at in 0..=len {
                let mut s = vec![b'a'; len];
                if at < len {
                    s[at] = b';';
                }
                let skipped = skip_words(&s, |w| has_byte(w, b';'));
                assert_eq!(skipped, (at / 8 * 8).min(len / 8 * 8), "len {len} at {at}");
            }
        }
    }
}
