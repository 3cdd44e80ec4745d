//! The per-connection SP key pair: signs AuthnRequests, decrypts assertions.

use crate::secret::Secret;
use base64::Engine as _;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// A generated SP key pair with its self-signed certificate (PEM).
pub(crate) struct SpKeys {
    /// The private key, PKCS#8 PEM.
    pub private_key_pem: Secret,
    /// The self-signed certificate, PEM.
    pub certificate_pem: String,
}

/// [`generate`] on tokio's blocking pool, for request paths (creating a
/// connection, rotating its SP certificate). An RSA 2048 key takes tens to
/// hundreds of milliseconds of CPU (prime search is random); on an async
/// worker that stalls every request queued behind it, and a few admins
/// creating connections at once held the workers long enough for other
/// requests' store operations to hit their response timeout (503s, found
/// creating 2,000 tenants with `portcullis-load --tenants 2000`). The
/// failure's detail is logged here; callers answer a fixed message.
pub(crate) async fn generate_off_worker(common_name: String, now_unix: i64) -> Result<SpKeys, KeyGenerationFailed> {
    let outcome = tokio::task::spawn_blocking(move || generate(&common_name, now_unix)).await;
    match outcome {
        Ok(Ok(keys)) => Ok(keys),
        Ok(Err(e)) => {
            tracing::error!(reason = "saml.sp_key_generation_failed", detail = %e, "could not generate an SP key pair");
            Err(KeyGenerationFailed)
        }
        Err(e) => {
            tracing::error!(reason = "saml.sp_key_generation_failed", detail = %e, "SP key generation task failed");
            Err(KeyGenerationFailed)
        }
    }
}

/// The SP key pair could not be generated (the detail is logged).
#[derive(Debug)]
pub(crate) struct KeyGenerationFailed;

/// Generates an RSA 2048 key and a ten-year self-signed certificate starting at `now_unix`.
/// Validity dates do not matter to SAML peers (they pin the key), but they must be sane.
/// Private: request paths go through [`generate_off_worker`].
fn generate(common_name: &str, now_unix: i64) -> Result<SpKeys, openssl::error::ErrorStack> {
    let rsa = Rsa::generate(2048)?;
    let key = PKey::from_rsa(rsa)?;
    let mut name = X509NameBuilder::new()?;
    // A CN is limited to 64 characters.
    let cn: String = common_name.chars().take(64).collect();
    name.append_entry_by_text("CN", &cn)?;
    let name = name.build();
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    let not_before = Asn1Time::from_unix(now_unix - 60)?;
    let not_after = Asn1Time::from_unix(now_unix + 10 * 365 * 24 * 3600)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.sign(&key, MessageDigest::sha256())?;
    let cert = builder.build();
    let pem = key.private_key_to_pem_pkcs8()?;
    Ok(SpKeys {
        private_key_pem: Secret::new(String::from_utf8_lossy(&pem).into_owned()),
        certificate_pem: String::from_utf8_lossy(&cert.to_pem()?).into_owned(),
    })
}

/// The parsed SP key material of a connection.
pub(crate) struct SpKeyMaterial {
    /// The private key.
    pub key: PKey<Private>,
    /// The private key as DER (what xmlsec loads for signing).
    pub key_der: Vec<u8>,
    /// The certificate, base64 DER (for metadata and KeyInfo).
    pub certificate_b64: String,
}

/// Parses stored PEM key material.
pub(crate) fn load(private_key_pem: &Secret, certificate_pem: &str) -> Result<SpKeyMaterial, String> {
    let key = PKey::private_key_from_pem(private_key_pem.expose().as_bytes())
        .map_err(|_| "the SP private key is not valid PEM".to_owned())?;
    let key_der = key
        .private_key_to_der()
        .map_err(|_| "the SP private key cannot be encoded".to_owned())?;
    let cert =
        X509::from_pem(certificate_pem.as_bytes()).map_err(|_| "the SP certificate is not valid PEM".to_owned())?;
    let der = cert
        .to_der()
        .map_err(|_| "the SP certificate cannot be encoded".to_owned())?;
    Ok(SpKeyMaterial {
        key,
        key_der,
        certificate_b64: base64::engine::general_purpose::STANDARD.encode(der),
    })
}

/// The admin API's description of a certificate: `use`, `not_after`
/// (RFC 3339), `fingerprint_sha256` (lowercase hex SHA-256 of the DER) and,
/// during an SP key rotation, `state`.
pub(crate) fn describe(cert: &X509, usage: &str, state: Option<&str>) -> serde_json::Value {
    let not_after = Asn1Time::from_unix(0)
        .ok()
        .and_then(|epoch| epoch.diff(cert.not_after()).ok())
        .and_then(|d| {
            chrono::DateTime::<chrono::Utc>::from_timestamp(i64::from(d.days) * 86_400 + i64::from(d.secs), 0)
        })
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let fingerprint = cert.digest(MessageDigest::sha256()).map(hex::encode).ok();
    let mut v = serde_json::json!({
        "use": usage,
        "not_after": not_after,
        "fingerprint_sha256": fingerprint,
    });
    if let (Some(state), Some(o)) = (state, v.as_object_mut()) {
        o.insert("state".into(), serde_json::json!(state));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;
    use std::task::Poll;

    /// On a single-threaded runtime, the generation is handed to the
    /// blocking pool: its future is pending at once, so the worker that polls
    /// it goes on with other tasks. Generated inline, as it was, the future is
    /// ready on its first poll, having held the worker for the whole key.
    #[tokio::test(flavor = "current_thread")]
    async fn sp_keys_are_generated_off_the_async_worker() {
        let mut keys = std::pin::pin!(generate_off_worker("acme/okta".into(), 1_700_000_000));
        let first = std::future::poll_fn(|cx| Poll::Ready(keys.as_mut().poll(cx).is_pending())).await;
        assert!(first, "the key was generated on the async worker");
        let keys = keys.await.expect("generated");
        let material = load(&keys.private_key_pem, &keys.certificate_pem).expect("usable");
        assert_eq!(material.key.bits(), 2048);
        let cert = X509::from_pem(keys.certificate_pem.as_bytes()).expect("certificate");
        assert!(cert.public_key().expect("key").public_eq(&material.key));
    }
}
