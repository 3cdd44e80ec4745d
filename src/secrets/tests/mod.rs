use super::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

fn key_b64(byte: u8) -> String {
    STANDARD.encode([byte; KEY_LEN])
}

fn cipher(text: &str) -> Cipher {
    Cipher::new(Arc::new(StaticKeys::parse(text, "test").unwrap()))
}

fn one() -> Cipher {
    cipher(&format!("k1 = {}\n", key_b64(1)))
}

#[test]
fn an_envelope_opens_for_its_context_only() {
    let c = one();
    let sealed = c
        .seal(b"the client secret", "t:acme:config/connection:okta#client_secret")
        .unwrap();
    assert!(sealed.starts_with("pcx1.k1."), "{sealed}");
    assert!(!sealed.contains("client secret"));
    assert_eq!(
        c.open(&sealed, "t:acme:config/connection:okta#client_secret").unwrap(),
        b"the client secret"
    );
    // Another tenant, connection or field: refused.
    for other in [
        "t:evil:config/connection:okta#client_secret",
        "t:acme:config/connection:other#client_secret",
        "t:acme:config/connection:okta#sp_private_key_pem",
    ] {
        assert_eq!(c.open(&sealed, other).unwrap_err(), SecretsError::Refused, "{other}");
        assert_eq!(SecretsError::Refused.code(), "secrets.refused");
    }
}

#[test]
fn every_seal_uses_a_fresh_nonce() {
    let c = one();
    let a = c.seal(b"x", "ctx").unwrap();
    let b = c.seal(b"x", "ctx").unwrap();
    assert_ne!(a, b);
    let nonce = |s: &str| s.split('.').nth(2).unwrap().to_owned();
    assert_ne!(nonce(&a), nonce(&b));
    assert_eq!(URL_SAFE_NO_PAD.decode(nonce(&a)).unwrap().len(), 12);
}

#[test]
fn a_tampered_envelope_is_refused() {
    let c = one();
    let sealed = c.seal(b"secret value", "ctx").unwrap();
    let parts: Vec<&str> = sealed.split('.').collect();
    // Flip one bit of the ciphertext, of the tag, and of the nonce.
    let mut body = URL_SAFE_NO_PAD.decode(parts[3]).unwrap();
    let n = body.len();
    for i in [0, n - 1] {
        let mut b = body.clone();
        b[i] ^= 1;
        let forged = format!("pcx1.k1.{}.{}", parts[2], URL_SAFE_NO_PAD.encode(&b));
        assert_eq!(c.open(&forged, "ctx").unwrap_err(), SecretsError::Refused);
    }
    let mut nonce = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    nonce[0] ^= 1;
    let forged = format!("pcx1.k1.{}.{}", URL_SAFE_NO_PAD.encode(&nonce), parts[3]);
    assert_eq!(c.open(&forged, "ctx").unwrap_err(), SecretsError::Refused);
    // Truncated below the tag, extra parts, wrong version: malformed.
    body.truncate(8);
    let short = format!("pcx1.k1.{}.{}", parts[2], URL_SAFE_NO_PAD.encode(&body));
    assert_eq!(c.open(&short, "ctx").unwrap_err().code(), "secrets.malformed");
    assert_eq!(
        c.open(&format!("{sealed}.x"), "ctx").unwrap_err().code(),
        "secrets.malformed"
    );
    assert_eq!(
        c.open(&sealed.replacen("pcx1", "pcx2", 1), "ctx").unwrap_err().code(),
        "secrets.malformed"
    );
}

#[test]
fn an_unknown_key_id_is_a_clear_error() {
    let sealed = one().seal(b"v", "ctx").unwrap();
    let other = cipher(&format!("k2 = {}\n", key_b64(2)));
    let e = other.open(&sealed, "ctx").unwrap_err();
    assert_eq!(e, SecretsError::UnknownKey("k1".into()));
    assert_eq!(e.code(), "secrets.unknown_key");
    assert!(e.to_string().contains("\"k1\""), "{e}");
}

#[test]
fn a_relabelled_key_id_or_another_key_with_the_same_id_is_refused() {
    let two = cipher(&format!("k1 = {}\nk2 = {}\ncurrent = k1\n", key_b64(1), key_b64(2)));
    let sealed = two.seal(b"v", "ctx").unwrap();
    let relabelled = sealed.replacen("pcx1.k1.", "pcx1.k2.", 1);
    assert_eq!(two.open(&relabelled, "ctx").unwrap_err(), SecretsError::Refused);
    let same_id_other_key = cipher(&format!("k1 = {}\n", key_b64(9)));
    assert_eq!(
        same_id_other_key.open(&sealed, "ctx").unwrap_err(),
        SecretsError::Refused
    );
}

#[test]
fn rotation_seals_under_the_current_key_and_opens_with_any() {
    let before = cipher(&format!("k1 = {}\n", key_b64(1)));
    let old = before.seal(b"old", "ctx").unwrap();
    let after = cipher(&format!(
        "# rotated\nk1 = {}\nk2 = {}\ncurrent = k2\n",
        key_b64(1),
        key_b64(2)
    ));
    assert_eq!(after.current_id(), "k2");
    assert_eq!(after.open(&old, "ctx").unwrap(), b"old");
    let new = after.seal(b"new", "ctx").unwrap();
    assert_eq!(envelope_key_id(&new), Some("k2"));
    assert_eq!(envelope_key_id(&old), Some("k1"));
}

#[test]
fn key_files_are_checked() {
    let err = |text: &str| StaticKeys::parse(text, "keys").unwrap_err().to_string();
    assert!(err("").contains("holds no key"));
    assert!(err(&format!("a = {}\nb = {}\n", key_b64(1), key_b64(2))).contains("no `current"));
    assert!(err(&format!("a = {}\ncurrent = b\n", key_b64(1))).contains("names no key"));
    assert!(err("a = c2hvcnQ=\n").contains("must be 32 bytes"));
    assert!(err("a = not base64!\n").contains("not base64"));
    assert!(err(&format!("a.b = {}\n", key_b64(1))).contains("must be 1 to 32 characters"));
    assert!(err(&format!("a = {}\na = {}\n", key_b64(1), key_b64(2))).contains("appears twice"));
    assert!(err("just a line\n").contains("line 1"));
    // `openssl rand -base64 32` output, with comments and blank lines.
    let ok = StaticKeys::parse(&format!("# keys\n\nk-2026_a = {}\n", key_b64(7)), "keys").unwrap();
    assert_eq!(ok.current().id(), "k-2026_a");
    assert!(!format!("{ok:?}").contains(&key_b64(7)));
}

#[test]
fn the_environment_key_and_the_choice_of_source() {
    let k = StaticKeys::from_env(&format!("prod1:{}", key_b64(3))).unwrap();
    assert_eq!(k.current().id(), "prod1");
    let k = StaticKeys::from_env(&key_b64(3)).unwrap();
    assert_eq!(k.current().id(), "env");
    assert!(matches!(
        choose(None, None, false, true, false),
        Err(SecretsError::NoKey)
    ));
    assert!(matches!(
        choose(None, None, false, true, true),
        Ok(KeyChoice::Plaintext)
    ));
    let Ok(KeyChoice::Keys(dev)) = choose(None, None, true, true, false) else {
        panic!("dev mode derives its key");
    };
    assert_eq!(dev.current().id(), DEV_KEY_ID);
    let Ok(KeyChoice::Keys(mem)) = choose(None, None, false, false, false) else {
        panic!("the memory store takes a per-process key");
    };
    assert_eq!(mem.current().id(), "ephemeral");
    assert!(matches!(
        choose(Some(Path::new("x")), Some("y"), false, true, false),
        Err(SecretsError::Config(_))
    ));
}
