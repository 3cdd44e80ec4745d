//! XML Encryption of assertions: RSA-OAEP key transport, AES-GCM or AES-CBC content.
//!
//! Written on OpenSSL directly rather than samael's helpers, which accept
//! RSA 1.5 and leave the CBC padding in the plaintext.

use super::xml::{self, El, DS, XENC};
use base64::Engine as _;
use openssl::pkey::{PKey, Private};
use openssl::symm::{Cipher, Crypter, Mode};

const XENC11: &str = "http://www.w3.org/2009/xmlenc11#";
const RSA_OAEP_MGF1P: &str = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p";
const RSA_OAEP_11: &str = "http://www.w3.org/2009/xmlenc11#rsa-oaep";
const RSA_1_5: &str = "http://www.w3.org/2001/04/xmlenc#rsa-1_5";

/// Why an EncryptedAssertion was not decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecryptError {
    /// RSA 1.5 key transport (Bleichenbacher-prone): refused.
    Rsa15Refused,
    /// An algorithm we do not support.
    Unsupported(String),
    /// The structure is not what XML Encryption prescribes.
    Malformed(&'static str),
    /// The key does not decrypt it (wrong key or tampered ciphertext).
    Failed,
}

fn b64(node: &El<'_>) -> Result<Vec<u8>, DecryptError> {
    let value = xml::child(node, XENC, "CipherData")
        .and_then(|cd| xml::child(&cd, XENC, "CipherValue"))
        .ok_or(DecryptError::Malformed("CipherValue missing"))?;
    let text: String = xml::text(&value).split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|_| DecryptError::Malformed("CipherValue is not base64"))
}

fn digest_for(uri: &str) -> Option<openssl::hash::MessageDigest> {
    use openssl::hash::MessageDigest;
    match uri {
        "http://www.w3.org/2000/09/xmldsig#sha1" | "http://www.w3.org/2009/xmlenc11#mgf1sha1" => {
            Some(MessageDigest::sha1())
        }
        "http://www.w3.org/2001/04/xmlenc#sha256" | "http://www.w3.org/2009/xmlenc11#mgf1sha256" => {
            Some(MessageDigest::sha256())
        }
        "http://www.w3.org/2001/04/xmldsig-more#sha384" | "http://www.w3.org/2009/xmlenc11#mgf1sha384" => {
            Some(MessageDigest::sha384())
        }
        "http://www.w3.org/2001/04/xmlenc#sha512" | "http://www.w3.org/2009/xmlenc11#mgf1sha512" => {
            Some(MessageDigest::sha512())
        }
        _ => None,
    }
}

/// Unwraps the content-encryption key from an `EncryptedKey`.
fn unwrap_key(ek: &El<'_>, key: &PKey<Private>) -> Result<Vec<u8>, DecryptError> {
    let method = xml::child(ek, XENC, "EncryptionMethod")
        .ok_or(DecryptError::Malformed("EncryptedKey has no EncryptionMethod"))?;
    let alg = xml::attr(&method, "Algorithm").unwrap_or_default();
    if alg == RSA_1_5 {
        return Err(DecryptError::Rsa15Refused);
    }
    if alg != RSA_OAEP_MGF1P && alg != RSA_OAEP_11 {
        return Err(DecryptError::Unsupported(alg));
    }
    // OAEP digest (SHA-1 unless DigestMethod says otherwise) and MGF1 digest
    // (SHA-1, or xenc11:MGF for the 1.1 identifier).
    let oaep_md = match xml::child(&method, DS, "DigestMethod") {
        Some(dm) => {
            let uri = xml::attr(&dm, "Algorithm").unwrap_or_default();
            digest_for(&uri).ok_or(DecryptError::Unsupported(uri))?
        }
        None => openssl::hash::MessageDigest::sha1(),
    };
    let mgf_md = match (alg == RSA_OAEP_11)
        .then(|| xml::child(&method, XENC11, "MGF"))
        .flatten()
    {
        Some(mgf) => {
            let uri = xml::attr(&mgf, "Algorithm").unwrap_or_default();
            digest_for(&uri).ok_or(DecryptError::Unsupported(uri))?
        }
        None => openssl::hash::MessageDigest::sha1(),
    };
    let wrapped = b64(ek)?;
    let mut dec = openssl::encrypt::Decrypter::new(key).map_err(|_| DecryptError::Failed)?;
    dec.set_rsa_padding(openssl::rsa::Padding::PKCS1_OAEP)
        .and_then(|_| dec.set_rsa_oaep_md(oaep_md))
        .and_then(|_| dec.set_rsa_mgf1_md(mgf_md))
        .map_err(|_| DecryptError::Failed)?;
    let len = dec.decrypt_len(&wrapped).map_err(|_| DecryptError::Failed)?;
    let mut out = vec![0u8; len];
    let n = dec.decrypt(&wrapped, &mut out).map_err(|_| DecryptError::Failed)?;
    out.truncate(n);
    Ok(out)
}

fn content_cipher(alg: &str) -> Option<(Cipher, bool)> {
    match alg {
        "http://www.w3.org/2001/04/xmlenc#aes128-cbc" => Some((Cipher::aes_128_cbc(), false)),
        "http://www.w3.org/2001/04/xmlenc#aes192-cbc" => Some((Cipher::aes_192_cbc(), false)),
        "http://www.w3.org/2001/04/xmlenc#aes256-cbc" => Some((Cipher::aes_256_cbc(), false)),
        "http://www.w3.org/2009/xmlenc11#aes128-gcm" => Some((Cipher::aes_128_gcm(), true)),
        "http://www.w3.org/2009/xmlenc11#aes192-gcm" => Some((Cipher::aes_192_gcm(), true)),
        "http://www.w3.org/2009/xmlenc11#aes256-gcm" => Some((Cipher::aes_256_gcm(), true)),
        _ => None,
    }
}

fn decrypt_content(cipher: Cipher, gcm: bool, key: &[u8], data: &[u8]) -> Result<Vec<u8>, DecryptError> {
    if key.len() != cipher.key_len() {
        return Err(DecryptError::Failed);
    }
    let iv_len = if gcm { 12 } else { cipher.iv_len().unwrap_or(16) };
    let tag_len = if gcm { 16 } else { 0 };
    if data.len() < iv_len + tag_len {
        return Err(DecryptError::Malformed("ciphertext too short"));
    }
    let (iv, rest) = data.split_at(iv_len);
    let (body, tag) = rest.split_at(rest.len() - tag_len);
    let mut c = Crypter::new(cipher, Mode::Decrypt, key, Some(iv)).map_err(|_| DecryptError::Failed)?;
    c.pad(false);
    if gcm {
        c.set_tag(tag).map_err(|_| DecryptError::Failed)?;
    }
    let mut out = vec![0u8; body.len() + cipher.block_size()];
    let n = c.update(body, &mut out).map_err(|_| DecryptError::Failed)?;
    let m = c
        .finalize(out.get_mut(n..).ok_or(DecryptError::Failed)?)
        .map_err(|_| DecryptError::Failed)?;
    out.truncate(n + m);
    if !gcm {
        // XML Encryption padding: the last byte is the pad length (1..=block).
        let pad = usize::from(*out.last().ok_or(DecryptError::Failed)?);
        if pad == 0 || pad > cipher.block_size() || pad > out.len() {
            return Err(DecryptError::Failed);
        }
        out.truncate(out.len() - pad);
    }
    Ok(out)
}

/// Decrypts a `saml:EncryptedAssertion` element into the assertion's XML text.
pub(crate) fn decrypt_assertion(encrypted_assertion: &El<'_>, key: &PKey<Private>) -> Result<String, DecryptError> {
    let ed = xml::child(encrypted_assertion, XENC, "EncryptedData")
        .ok_or(DecryptError::Malformed("EncryptedData missing"))?;
    let method = xml::child(&ed, XENC, "EncryptionMethod")
        .and_then(|m| xml::attr(&m, "Algorithm"))
        .ok_or(DecryptError::Malformed("EncryptedData has no EncryptionMethod"))?;
    let (cipher, gcm) = content_cipher(&method).ok_or(DecryptError::Unsupported(method))?;
    // The EncryptedKey sits in EncryptedData's KeyInfo, or beside EncryptedData.
    let ek = xml::child(&ed, DS, "KeyInfo")
        .and_then(|ki| xml::child(&ki, XENC, "EncryptedKey"))
        .or_else(|| xml::child(encrypted_assertion, XENC, "EncryptedKey"))
        .ok_or(DecryptError::Malformed("EncryptedKey missing"))?;
    let cek = unwrap_key(&ek, key)?;
    let plain = decrypt_content(cipher, gcm, &cek, &b64(&ed)?)?;
    String::from_utf8(plain).map_err(|_| DecryptError::Malformed("plaintext is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::encrypt::Encrypter;
    use openssl::rsa::{Padding, Rsa};
    use openssl::symm::encrypt_aead;

    const AES256_CBC: &str = "http://www.w3.org/2001/04/xmlenc#aes256-cbc";
    const AES128_GCM: &str = "http://www.w3.org/2009/xmlenc11#aes128-gcm";
    const PLAIN: &str = "<saml:Assertion xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"_a\"/>";

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    /// Encrypts PLAIN to `key` as an IdP would, returning the EncryptedAssertion XML.
    fn encrypted(key: &PKey<Private>, data_alg: &str, key_alg: &str, tamper: bool) -> String {
        let gcm = data_alg == AES128_GCM;
        let cek: Vec<u8> = (0..if gcm { 16 } else { 32 }).map(|i| i as u8 * 7).collect();
        let mut body = if gcm {
            let iv = [9u8; 12];
            let mut tag = [0u8; 16];
            let ct = encrypt_aead(Cipher::aes_128_gcm(), &cek, Some(&iv), &[], PLAIN.as_bytes(), &mut tag).unwrap();
            [iv.to_vec(), ct, tag.to_vec()].concat()
        } else {
            let iv = [3u8; 16];
            // PKCS#7 padding is one valid XML Encryption padding.
            let ct = openssl::symm::encrypt(Cipher::aes_256_cbc(), &cek, Some(&iv), PLAIN.as_bytes()).unwrap();
            [iv.to_vec(), ct].concat()
        };
        if tamper {
            let n = body.len() / 2;
            body[n] ^= 1;
        }
        let mut enc = Encrypter::new(key).unwrap();
        let padding = if key_alg == RSA_1_5 {
            Padding::PKCS1
        } else {
            Padding::PKCS1_OAEP
        };
        enc.set_rsa_padding(padding).unwrap();
        let mut wrapped = vec![0u8; enc.encrypt_len(&cek).unwrap()];
        let n = enc.encrypt(&cek, &mut wrapped).unwrap();
        wrapped.truncate(n);
        format!(
            "<saml:EncryptedAssertion xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\"><xenc:EncryptedData xmlns:xenc=\"{XENC}\"><xenc:EncryptionMethod Algorithm=\"{data_alg}\"/><ds:KeyInfo xmlns:ds=\"{DS}\"><xenc:EncryptedKey><xenc:EncryptionMethod Algorithm=\"{key_alg}\"/><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedKey></ds:KeyInfo><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedData></saml:EncryptedAssertion>",
            b64(&wrapped),
            b64(&body)
        )
    }

    fn run(xml_text: &str, key: &PKey<Private>) -> Result<String, DecryptError> {
        let doc = xml::parse_strict(xml_text).unwrap();
        decrypt_assertion(&El::root(&doc).unwrap(), key)
    }

    fn key() -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
    }

    #[test]
    fn cbc_and_gcm_decrypt_and_strip_padding() {
        let k = key();
        assert_eq!(
            run(&encrypted(&k, AES256_CBC, RSA_OAEP_MGF1P, false), &k).unwrap(),
            PLAIN
        );
        assert_eq!(
            run(&encrypted(&k, AES128_GCM, RSA_OAEP_MGF1P, false), &k).unwrap(),
            PLAIN
        );
    }

    #[test]
    fn tampered_gcm_and_wrong_key_fail() {
        let k = key();
        assert_eq!(
            run(&encrypted(&k, AES128_GCM, RSA_OAEP_MGF1P, true), &k),
            Err(DecryptError::Failed)
        );
        let other = key();
        assert_eq!(
            run(&encrypted(&k, AES256_CBC, RSA_OAEP_MGF1P, false), &other),
            Err(DecryptError::Failed)
        );
    }

    #[test]
    fn rsa_1_5_and_unknown_ciphers_are_refused() {
        let k = key();
        assert_eq!(
            run(&encrypted(&k, AES256_CBC, RSA_1_5, false), &k),
            Err(DecryptError::Rsa15Refused)
        );
        let tdes = encrypted(&k, AES256_CBC, RSA_OAEP_MGF1P, false)
            .replace(AES256_CBC, "http://www.w3.org/2001/04/xmlenc#tripledes-cbc");
        assert!(matches!(run(&tdes, &k), Err(DecryptError::Unsupported(_))));
    }
}
