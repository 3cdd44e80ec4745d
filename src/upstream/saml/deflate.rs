//! Raw DEFLATE (RFC 1951) for the HTTP-Redirect binding's messages.
//!
//! An AuthnRequest or LogoutRequest is under a few kilobytes, and all the
//! binding needs is a valid DEFLATE stream of it. A general compressor
//! prepares for any input: miniz_oxide's, even reused from one message to
//! the next, clears about 370 KB of tables and buffers before each one
//! (its `reset`), which evicts most of the core's cache on every
//! `/authorize`. This encoder keeps only an 8 KB table of recent positions
//! and writes one block with the fixed Huffman codes of §3.2.6: greedy
//! LZ77 matches of 3 to 258 bytes up to 32 KiB back, everything else a
//! literal. Inputs of any length are valid; they are simply compressed
//! less well than by a full compressor.

/// Positions remembered per 3-byte prefix hash: the most recent only.
const HASH_BITS: u32 = 11;
/// The farthest back a match may point (§3.2.5: distances up to 32,768).
const WINDOW: usize = 32_768;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;

/// Lengths 3..=258: the first length of each code 257..=285 and its extra bits.
const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// Distances 1..=32768: the first distance of each code 0..=29 and its extra bits.
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
];

/// `input` as one final DEFLATE block with the fixed Huffman codes.
pub(crate) fn deflate(input: &[u8]) -> Vec<u8> {
    let mut out = Bits::with_capacity(input.len() / 2 + 16);
    // BFINAL = 1, BTYPE = 01 (fixed Huffman codes).
    out.put(1, 1);
    out.put(1, 2);
    let mut recent = [0u32; 1 << HASH_BITS];
    let mut i = 0;
    while i < input.len() {
        if let Some((length, distance)) = longest_here(input, i, &mut recent) {
            out.length(length);
            out.distance(distance);
            // The positions the match covers join the table too, so a
            // repeat of any part of it is found later.
            for p in i + 1..(i + length).min(input.len().saturating_sub(MIN_MATCH - 1)) {
                if let Some(slot) = hash_at(input, p).and_then(|h| recent.get_mut(h)) {
                    *slot = position_mark(p);
                }
            }
            i += length;
        } else {
            out.literal(input.get(i).copied().unwrap_or_default());
            i += 1;
        }
    }
    // End of block.
    out.symbol(256);
    out.finish()
}

/// The table's mark for position `p` (0 means empty).
fn position_mark(p: usize) -> u32 {
    u32::try_from(p + 1).unwrap_or(0)
}

/// The hash of the three bytes at `p`, if there are three.
fn hash_at(input: &[u8], p: usize) -> Option<usize> {
    let [b0, b1, b2] = <[u8; MIN_MATCH]>::try_from(input.get(p..p + MIN_MATCH)?).ok()?;
    let v = u32::from(b0) << 16 | u32::from(b1) << 8 | u32::from(b2);
    Some((v.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize)
}

/// The match at `i` with the most recent earlier position of the same
/// 3-byte hash (length, distance), recording `i` in the table.
fn longest_here(input: &[u8], i: usize, recent: &mut [u32; 1 << HASH_BITS]) -> Option<(usize, usize)> {
    let slot = recent.get_mut(hash_at(input, i)?)?;
    let mark = std::mem::replace(slot, position_mark(i));
    let candidate = usize::try_from(mark).ok()?.checked_sub(1)?;
    let distance = i - candidate;
    if distance == 0 || distance > WINDOW {
        return None;
    }
    let limit = (input.len() - i).min(MAX_MATCH);
    let length = input
        .get(candidate..)?
        .iter()
        .zip(input.get(i..i + limit)?)
        .take_while(|(a, b)| a == b)
        .count();
    (length >= MIN_MATCH).then_some((length, distance))
}

/// The length code (minus 257) of each length 3..=258, at `length - 3`.
#[allow(clippy::indexing_slicing)] // evaluated by the compiler: an index out of range fails the build
const LENGTH_CODE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut k = 0;
    while k < 29 {
        let mut length = LENGTH_BASE[k] as usize;
        let end = if k == 28 { 259 } else { LENGTH_BASE[k + 1] as usize };
        while length < end {
            table[length - MIN_MATCH] = k as u8;
            length += 1;
        }
        k += 1;
    }
    table
};

/// The distance code of distance `d + 1` at `d` for `d` < 256, and at
/// `256 + (d >> 7)` for farther ones.
#[allow(clippy::indexing_slicing)] // evaluated by the compiler: an index out of range fails the build
const DIST_CODE: [u8; 512] = {
    let mut table = [0u8; 512];
    let mut k = 0;
    while k < 30 {
        let mut d = DIST_BASE[k] as usize - 1;
        let end = if k == 29 { WINDOW } else { DIST_BASE[k + 1] as usize - 1 };
        while d < end {
            if d < 256 {
                table[d] = k as u8;
            } else {
                table[256 + (d >> 7)] = k as u8;
            }
            d += 1;
        }
        k += 1;
    }
    table
};

/// The fixed literal/length code of each symbol 0..=287 (§3.2.6), bit
/// reversed as it is written (a Huffman code goes out most significant bit
/// first), and its length.
#[allow(clippy::indexing_slicing)] // evaluated by the compiler: an index out of range fails the build
const FIXED_CODES: [(u16, u8); 288] = {
    let mut table = [(0u16, 0u8); 288];
    let mut s = 0u32;
    while s < 288 {
        let (code, n) = match s {
            0..=143 => (0x30 + s, 8),
            144..=255 => (0x190 + (s - 144), 9),
            256..=279 => (s - 256, 7),
            _ => (0xc0 + (s - 280), 8),
        };
        table[s as usize] = ((code.reverse_bits() >> (32 - n)) as u16, n as u8);
        s += 1;
    }
    table
};

/// A little-endian bit writer (§3.1.1: data elements from the least
/// significant bit; Huffman codes from their most significant bit).
struct Bits {
    out: Vec<u8>,
    acc: u64,
    used: u32,
}

impl Bits {
    fn with_capacity(n: usize) -> Self {
        Self {
            out: Vec::with_capacity(n),
            acc: 0,
            used: 0,
        }
    }

    /// The `n` low bits of `value`, least significant first (`n` ≤ 32).
    fn put(&mut self, value: u32, n: u32) {
        self.acc |= u64::from(value & ((1u32 << n) - 1)) << self.used;
        self.used += n;
        while self.used >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.used -= 8;
        }
    }

    /// A literal/length symbol 0..=287 in the fixed code (§3.2.6).
    fn symbol(&mut self, s: u16) {
        let (code, n) = FIXED_CODES.get(usize::from(s)).copied().unwrap_or((0, 7));
        self.put(u32::from(code), u32::from(n));
    }

    fn literal(&mut self, byte: u8) {
        self.symbol(u16::from(byte));
    }

    /// A match length 3..=258: its code and extra bits.
    fn length(&mut self, length: usize) {
        let length = u16::try_from(length).unwrap_or(MAX_MATCH as u16);
        let k = usize::from(
            LENGTH_CODE
                .get(usize::from(length).saturating_sub(MIN_MATCH))
                .copied()
                .unwrap_or(28),
        );
        let (base, extra) = (
            LENGTH_BASE.get(k).copied().unwrap_or(3),
            LENGTH_EXTRA.get(k).copied().unwrap_or(0),
        );
        self.symbol(257 + k as u16);
        self.put(u32::from(length.saturating_sub(base)), u32::from(extra));
    }

    /// A distance 1..=32768: its 5-bit code and extra bits.
    fn distance(&mut self, distance: usize) {
        let distance = u32::try_from(distance).unwrap_or(WINDOW as u32);
        // zlib's split: distances up to 256 by themselves, farther ones by
        // their 128s (every code from 16 on spans a multiple of 128).
        let d = distance.saturating_sub(1) as usize;
        let k = usize::from(
            if d < 256 {
                DIST_CODE.get(d)
            } else {
                DIST_CODE.get(256 + (d >> 7))
            }
            .copied()
            .unwrap_or(29),
        );
        let (base, extra) = (
            DIST_BASE.get(k).copied().unwrap_or(1),
            DIST_EXTRA.get(k).copied().unwrap_or(0),
        );
        // The 5-bit distance code, most significant bit first.
        self.put((k as u32).reverse_bits() >> 27, 5);
        self.put(distance.saturating_sub(u32::from(base)), u32::from(extra));
    }

    /// The bytes, the last one padded with zero bits.
    fn finish(mut self) -> Vec<u8> {
        if self.used > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::deflate;
    use std::io::Read as _;

    /// flate2 (miniz_oxide's inflater): an implementation independent of this encoder.
    fn inflate(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(raw).read_to_end(&mut out).unwrap();
        out
    }

    /// A deterministic stream of pseudo-random bytes.
    fn noise(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn every_input_inflates_back_to_itself() {
        let xml = br#"<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_4b8f2c1e" Version="2.0" IssueInstant="2026-12-02T10:00:00Z" Destination="https://idp.example.test/sso" AssertionConsumerServiceURL="https://sso.example.test/saml/acme/okta/acs" ProtocolBinding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"><saml:Issuer>https://sso.example.test/saml/acme/okta</saml:Issuer><samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress" AllowCreate="true"/></samlp:AuthnRequest>"#;
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(2_000).collect();
        // Words from a small vocabulary: matches of every length and many distances.
        let words: Vec<u8> = noise(60_000, 7)
            .chunks(3)
            .flat_map(|c| {
                let word = [
                    "a",
                    "saml",
                    "Assertion",
                    "x",
                    "urn:oasis:names:tc",
                    "  ",
                    "\u{e9}t\u{e9}",
                ][usize::from(c[0]) % 7]
                    .repeat(1 + usize::from(c[1]) % 40);
                word.into_bytes()
            })
            .collect();
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"a".to_vec(),
            b"ab".to_vec(),
            b"abc".to_vec(),
            b"abcabc".to_vec(),
            vec![b'a'; 1_000],
            vec![0u8; 100_000],
            xml.to_vec(),
            xml.repeat(200),
            all_bytes,
            noise(100_000, 1),
            words,
        ];
        for input in &inputs {
            assert_eq!(inflate(&deflate(input)), *input, "{} bytes", input.len());
        }
        // Every length 3..=258 at near distances, the length classes at the far ones.
        let far = [3usize, 4, 10, 11, 130, 257, 258];
        for distance in [1usize, 2, 5, 100, 1_025, 24_577, 32_768] {
            for length in (3..=258usize).filter(|l| distance < 2_000 || far.contains(l)) {
                let mut input = noise(distance, length as u32);
                let start = input.len() - distance;
                for k in 0..length {
                    input.push(input[start + k]);
                }
                input.push(b'!');
                assert_eq!(inflate(&deflate(&input)), input, "length {length} distance {distance}");
            }
        }
    }

    #[test]
    fn xml_is_compressed() {
        let xml =
            br#"<samlp:AuthnRequest ID="_1" Version="2.0"><saml:Issuer>https://sp</saml:Issuer></samlp:AuthnRequest>"#
                .repeat(8);
        assert!(deflate(&xml).len() < xml.len() / 2);
        // Incompressible input grows by at most an eighth (9-bit literals).
        let noise = noise(10_000, 3);
        assert!(deflate(&noise).len() <= noise.len() * 9 / 8 + 8);
    }
}
