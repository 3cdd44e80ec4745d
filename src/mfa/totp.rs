//! TOTP (RFC 6238) over HOTP (RFC 4226): HMAC through OpenSSL, dynamic
//! truncation, a 30-second step, 6 digits, and a window of one step either
//! side for clock drift. Base32 (RFC 4648, no padding) for the shared secret,
//! and the `otpauth://` URI authenticator apps read from the QR code.

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use subtle::ConstantTimeEq;

/// Seconds per time step (RFC 6238 §4.1, `X`; the default every app uses).
pub const STEP_SECS: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps accepted before and after the current one (clock drift, typing time).
pub const WINDOW: i64 = 1;
/// Bytes of a generated secret (160 bits, RFC 4226 §4 R6's recommendation).
pub const SECRET_BYTES: usize = 20;

/// The HMAC hash of a TOTP. Enrolments use SHA-1 (what authenticator apps
/// implement); SHA-256 and SHA-512 are here for RFC 6238's test vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-1.
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl Algorithm {
    fn digest(self) -> MessageDigest {
        match self {
            Self::Sha1 => MessageDigest::sha1(),
            Self::Sha256 => MessageDigest::sha256(),
            Self::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// The HOTP value (RFC 4226 §5.3) of `counter` under `key`, `digits` long;
/// `None` only if OpenSSL fails.
pub fn hotp(alg: Algorithm, key: &[u8], counter: u64, digits: u32) -> Option<u32> {
    let pkey = PKey::hmac(key).ok()?;
    let mut signer = Signer::new(alg.digest(), &pkey).ok()?;
    signer.update(&counter.to_be_bytes()).ok()?;
    let mac = signer.sign_to_vec().ok()?;
    // Dynamic truncation: the low nibble of the last byte is the offset.
    let offset = usize::from(mac.last()? & 0x0f);
    let bytes: [u8; 4] = mac.get(offset..offset + 4)?.try_into().ok()?;
    let binary = u32::from_be_bytes(bytes) & 0x7fff_ffff;
    Some(binary % 10u32.checked_pow(digits)?)
}

/// The time step of Unix time `unix` (RFC 6238 §4.2, `T0` = 0); `None`
/// before 1970.
pub fn step_of(unix: i64) -> Option<u64> {
    u64::try_from(unix.div_euclid(STEP_SECS)).ok()
}

/// The code of time step `step`, zero-padded to `digits`.
pub fn code_at(alg: Algorithm, key: &[u8], step: u64, digits: u32) -> Option<String> {
    let value = hotp(alg, key, step, digits)?;
    Some(format!("{value:0width$}", width = usize::try_from(digits).ok()?))
}

/// The time step whose code `presented` is, within [`WINDOW`] of `now`
/// (Unix seconds), or `None`. Every candidate is computed and compared in
/// constant time, so the answer's timing does not tell which step matched.
pub fn matching_step(key: &[u8], presented: &str, now: i64) -> Option<u64> {
    let current = step_of(now)?;
    if presented.len() != usize::try_from(DIGITS).ok()? || !presented.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut found = None;
    for delta in -WINDOW..=WINDOW {
        let Some(step) = current.checked_add_signed(delta) else {
            continue;
        };
        let Some(expected) = code_at(Algorithm::Sha1, key, step, DIGITS) else {
            continue;
        };
        if bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
            found = found.or(Some(step));
        }
    }
    found
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (what `otpauth://` URIs carry).
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.extend(BASE32.get(((buffer >> bits) & 31) as usize).map(|&c| char::from(c)));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.extend(
            BASE32
                .get(((buffer << (5 - bits)) & 31) as usize)
                .map(|&c| char::from(c)),
        );
    }
    out
}

/// Decodes RFC 4648 base32, ignoring case, spaces and padding; `None` for
/// any other character.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !matches!(c, b' ' | b'=' | b'-')) {
        let value = BASE32.iter().position(|&a| a == c.to_ascii_uppercase())?;
        buffer = (buffer << 5) | u32::try_from(value).ok()?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
        buffer &= (1 << bits) - 1;
    }
    Some(out)
}

/// The `otpauth://totp/…` URI (Google Authenticator's key URI format) of a
/// secret: the label `issuer:account`, the secret in base32, and the
/// parameters spelled out so every app uses SHA-1, 6 digits, 30 s.
pub fn otpauth_uri(issuer: &str, account: &str, secret_b32: &str) -> String {
    let enc = |s: &str| {
        url::form_urlencoded::byte_serialize(s.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED20: &[u8] = b"12345678901234567890";
    const SEED32: &[u8] = b"12345678901234567890123456789012";
    const SEED64: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    /// RFC 6238 Appendix B: every (time, algorithm, code) row.
    #[test]
    fn rfc6238_test_vectors() {
        let rows: &[(i64, &str, &str, &str)] = &[
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for &(t, sha1, sha256, sha512) in rows {
            let step = step_of(t).unwrap();
            assert_eq!(code_at(Algorithm::Sha1, SEED20, step, 8).unwrap(), sha1, "SHA1 at {t}");
            assert_eq!(
                code_at(Algorithm::Sha256, SEED32, step, 8).unwrap(),
                sha256,
                "SHA256 at {t}"
            );
            assert_eq!(
                code_at(Algorithm::Sha512, SEED64, step, 8).unwrap(),
                sha512,
                "SHA512 at {t}"
            );
        }
    }

    /// RFC 4226 Appendix D: HOTP values for counters 0..9.
    #[test]
    fn rfc4226_test_vectors() {
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, want) in expected.iter().enumerate() {
            assert_eq!(hotp(Algorithm::Sha1, SEED20, counter as u64, 6).unwrap(), *want);
        }
    }

    #[test]
    fn the_window_is_one_step_either_side() {
        let now = 1_111_111_111;
        let step = step_of(now).unwrap();
        for (delta, accepted) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let s = step.checked_add_signed(delta).unwrap();
            let code = code_at(Algorithm::Sha1, SEED20, s, DIGITS).unwrap();
            let got = matching_step(SEED20, &code, now);
            assert_eq!(got.is_some(), accepted, "delta {delta}");
            if accepted {
                assert_eq!(got, Some(s));
            }
        }
    }

    #[test]
    fn malformed_codes_never_match() {
        let now = 59;
        let code = code_at(Algorithm::Sha1, SEED20, step_of(now).unwrap(), DIGITS).unwrap();
        assert!(matching_step(SEED20, &code, now).is_some());
        for bad in ["", "12345", "1234567", "12345a", " 123456", &format!("{code} ")] {
            assert!(matching_step(SEED20, bad, now).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn base32_round_trips_and_matches_rfc4648() {
        assert_eq!(base32_encode(b""), "");
        assert_eq!(base32_encode(b"f"), "MY");
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_decode("mzxw6ytboi======").unwrap(), b"foobar");
        assert_eq!(base32_decode("MZXW 6YTB OI").unwrap(), b"foobar");
        assert!(base32_decode("MZXW1").is_none());
        let secret: Vec<u8> = (0u8..20).collect();
        let enc = base32_encode(&secret);
        assert_eq!(enc.len(), 32);
        assert_eq!(base32_decode(&enc).unwrap(), secret);
    }

    #[test]
    fn the_otpauth_uri_names_issuer_account_and_parameters() {
        let uri = otpauth_uri("Acme Corp", "jane@acme.example", "JBSWY3DPEHPK3PXP");
        assert_eq!(
            uri,
            "otpauth://totp/Acme%20Corp:jane%40acme.example?secret=JBSWY3DPEHPK3PXP&issuer=Acme%20Corp&algorithm=SHA1&digits=6&period=30"
        );
    }
}
