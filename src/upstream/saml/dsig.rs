//! XML-DSig verification with the IdP's keys loaded once per connector.
//!
//! samael loads every configured certificate into a fresh xmlsec key on
//! every call (`XmlSecKey::from_memory(.., CertDer)`), and with OpenSSL 3
//! decoding and checking that public key cost several times the RSA
//! verification itself. Here each certificate's public key is loaded into an
//! `xmlSecKey` once, when the connector is built (connectors are cached per
//! stored revision), and every verification gets its own `xmlSecDSigCtx`
//! holding its own duplicate of that key (`xmlSecKeyDuplicate`: a new
//! `xmlSecKey` sharing the `EVP_PKEY` by reference count). Nothing mutable is
//! shared between calls, so verifications run concurrently on the blocking
//! pool without a lock.
//!
//! The context has no keys manager, so the `KeyInfo` of a message (a
//! certificate the sender chose) is never read as a key: xmlsec only uses the
//! key we set. The signature is verified where it sits, in the document we
//! parsed first (no serialization, no second parse), and what comes back is
//! xmlsec's pre-digest buffer of its one Reference: the exact bytes the digest
//! was computed over, i.e. the canonical form of the signed element without
//! its enveloped signature.

use libxml::tree::{Document, Node};
use std::ffi::CString;
use std::ptr::{null, null_mut, NonNull};

/// The bindgen'd xmlsec declarations `build.rs` generates from the installed
/// headers (with the flags `xmlsec1-config` reports).
#[allow(
    dead_code,
    non_snake_case,
    non_camel_case_types,
    non_upper_case_globals,
    improper_ctypes,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/xmlsec_bindings.rs"));
}

#[cfg(xmlsec_dynamic)]
use ffi::xmlSecCryptoAppKeyLoadMemory as key_load_memory;
#[cfg(not(xmlsec_dynamic))]
use ffi::xmlSecOpenSSLAppKeyLoadMemory as key_load_memory;

/// One IdP public key, loaded into xmlsec once.
struct IdpKey(NonNull<ffi::xmlSecKey>);

// SAFETY: the key is never changed after it is loaded: it is only read by
// `xmlSecKeyDuplicate` (which copies its fields and takes a reference on the
// `EVP_PKEY`, an atomic count) and destroyed once, by `Drop`, when the last
// owner lets go. OpenSSL 3 keys are safe to share for concurrent read-only
// use; every verification works on its own duplicate.
unsafe impl Send for IdpKey {}
// SAFETY: as above: shared references only ever read the key.
unsafe impl Sync for IdpKey {}

impl Drop for IdpKey {
    fn drop(&mut self) {
        // SAFETY: we own this key (loaded by us, never handed to a context).
        unsafe { ffi::xmlSecKeyDestroy(self.0.as_ptr()) }
    }
}

/// The connection's signing keys, in configuration order: the only keys a
/// response's signature is verified against.
pub(crate) struct IdpKeys {
    keys: Vec<IdpKey>,
}

impl std::fmt::Debug for IdpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdpKeys({})", self.keys.len())
    }
}

impl IdpKeys {
    /// Loads the public key of each certificate (DER) into xmlsec.
    ///
    /// Only the key is loaded, not the certificate: a certificate in the key
    /// would be copied (re-encoded and decoded) by every duplicate, which is
    /// the very cost this avoids; xmlsec does not look at it anyway when the
    /// key is set on the context.
    pub(crate) fn load(certificates_der: &[Vec<u8>]) -> Result<Self, String> {
        super::xml::init();
        let mut keys = Vec::with_capacity(certificates_der.len());
        for der in certificates_der {
            let spki = openssl::x509::X509::from_der(der)
                .and_then(|c| c.public_key())
                .and_then(|k| k.public_key_to_der())
                .map_err(|_| "an IdP certificate's public key cannot be read".to_owned())?;
            let len = spki
                .len()
                .try_into()
                .map_err(|_| "an IdP public key is too large".to_owned())?;
            // SAFETY: xmlsec is initialized (`xml::init`); the buffer is
            // valid for `len` bytes for the call, which copies what it
            // needs; no password or callbacks are passed. A DER buffer that
            // is not a private key is read as a public key (SubjectPublicKeyInfo).
            let key = unsafe {
                key_load_memory(
                    spki.as_ptr(),
                    len,
                    ffi::xmlSecKeyDataFormat_xmlSecKeyDataFormatDer,
                    null(),
                    null_mut(),
                    null_mut(),
                )
            };
            let key = NonNull::new(key).ok_or_else(|| "xmlsec cannot load an IdP public key".to_owned())?;
            keys.push(IdpKey(key));
        }
        Ok(Self { keys })
    }
}

/// A signature context of one verification; destroyed (with its key
/// duplicate) when dropped.
struct Context(NonNull<ffi::xmlSecDSigCtx>);

impl Context {
    fn new(key: &IdpKey) -> Result<Self, &'static str> {
        // SAFETY: xmlsec is initialized; a null keys manager means no key is
        // ever looked up from the message.
        let ctx = NonNull::new(unsafe { ffi::xmlSecDSigCtxCreate(null_mut()) }).ok_or("xmlsec context")?;
        let ctx = Self(ctx);
        // SAFETY: `key` is a live, loaded key only read here.
        let dup = unsafe { ffi::xmlSecKeyDuplicate(key.0.as_ptr()) };
        if dup.is_null() {
            return Err("xmlsec key duplicate");
        }
        // SAFETY: the context is ours and fresh; it takes ownership of `dup`
        // (`xmlSecDSigCtxDestroy` destroys `signKey`).
        unsafe {
            let c = &mut *ctx.0.as_ptr();
            c.signKey = dup;
            c.flags |= ffi::XMLSEC_DSIG_FLAGS_STORE_SIGNEDINFO_REFERENCES;
            // Only `#id` references (also checked before, by `check_signature`).
            c.enabledReferenceUris = ffi::xmlSecTransformUriTypeSameDocument;
        }
        Ok(ctx)
    }

    /// Verifies `sig`; `Ok(true)` when the signature and its reference hold.
    fn verify(&self, sig: *mut ffi::xmlNode) -> bool {
        // SAFETY: `sig` is a `ds:Signature` element of a live document this
        // thread owns; the context is ours.
        let rc = unsafe { ffi::xmlSecDSigCtxVerify(self.0.as_ptr(), sig) };
        // SAFETY: reading a field of our context.
        rc == 0 && unsafe { (*self.0.as_ptr()).status } == ffi::xmlSecDSigStatus_xmlSecDSigStatusSucceeded
    }

    /// The pre-digest bytes of the signature's one (verified) Reference.
    fn pre_digest(&self) -> Result<String, &'static str> {
        // SAFETY: the context is ours and was verified with
        // `XMLSEC_DSIG_FLAGS_STORE_SIGNEDINFO_REFERENCES`, so its list holds
        // the reference contexts of SignedInfo, alive until it is destroyed;
        // the buffer is copied before that.
        unsafe {
            let list = &mut (*self.0.as_ptr()).signedInfoReferences as *mut ffi::xmlSecPtrList;
            if ffi::xmlSecPtrListGetSize(list) != 1 {
                return Err("the signature does not have exactly one verified Reference");
            }
            let reference = ffi::xmlSecPtrListGetItem(list, 0).cast::<ffi::xmlSecDSigReferenceCtx>();
            if reference.is_null() || (*reference).status != ffi::xmlSecDSigStatus_xmlSecDSigStatusSucceeded {
                return Err("the Reference was not verified");
            }
            let buffer = ffi::xmlSecDSigReferenceCtxGetPreDigestBuffer(reference);
            if buffer.is_null() {
                return Err("no pre-digest buffer");
            }
            let (data, size) = (ffi::xmlSecBufferGetData(buffer), ffi::xmlSecBufferGetSize(buffer));
            let size = usize::try_from(size).map_err(|_| "pre-digest size")?;
            if data.is_null() || size == 0 {
                return Err("empty pre-digest buffer");
            }
            let bytes = std::slice::from_raw_parts(data, size);
            String::from_utf8(bytes.to_vec()).map_err(|_| "the signed bytes are not UTF-8")
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: our context, destroyed once; it frees its key duplicate.
        unsafe { ffi::xmlSecDSigCtxDestroy(self.0.as_ptr()) }
    }
}

/// Verifies the signature `sig`, a direct child of `signed`, in place in
/// `doc` against `keys` (in order, the first that verifies wins) and returns
/// the bytes it signs (the pre-digest buffer of its one Reference).
///
/// The caller has checked the signature's placement, algorithms and
/// transforms, that its one Reference is `#` + `id`, that `id` is the
/// `ID` attribute of `signed` (no namespace), and that no other element
/// carries that id. `id` is registered as the document's one ID here so
/// xmlsec resolves the Reference to `signed`; it must be an NCName, else
/// `#id` could be read as an XPointer expression.
pub(crate) fn verify_in_place(
    doc: &Document,
    signed: &Node,
    id: &str,
    sig: &Node,
    keys: &IdpKeys,
) -> Result<String, &'static str> {
    let id_c = CString::new(id).map_err(|_| "the signed element's ID has a NUL")?;
    // SAFETY: a NUL-terminated string, only read.
    if unsafe { libxml::bindings::xmlValidateNCName(id_c.as_ptr().cast(), 0) } != 0 {
        return Err("the signed element's ID is not an NCName");
    }
    let name = c"ID";
    // SAFETY: `signed` is an element of `doc`, which this thread owns for the
    // call (`Node` is `!Send`); `xmlHasNsProp` with a null namespace finds the
    // attribute `ID` in no namespace, and `xmlAddID` records it in the
    // document's ID table (freed with the document). It returns null when
    // the id is already registered, which for a fresh parse means a duplicate.
    unsafe {
        let attr = libxml::bindings::xmlHasNsProp(signed.node_ptr(), name.as_ptr().cast(), null());
        if attr.is_null() {
            return Err("the signed element has no ID attribute");
        }
        let found = libxml::bindings::xmlGetID(doc.doc_ptr(), id_c.as_ptr().cast());
        if found.is_null() {
            if libxml::bindings::xmlAddID(null_mut(), doc.doc_ptr(), id_c.as_ptr().cast(), attr).is_null() {
                return Err("the signed element's ID cannot be registered");
            }
        } else if found != attr {
            return Err("the signed element's ID is registered for another attribute");
        }
    }
    for key in &keys.keys {
        let ctx = Context::new(key)?;
        if ctx.verify(sig.node_ptr().cast::<ffi::xmlNode>()) {
            return ctx.pre_digest();
        }
    }
    Err("no configured certificate verifies the signature")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::saml::xml::{self, DS};
    use base64::Engine as _;

    fn fixture(vendor: &str, file: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/saml-vendors/assertions")
            .join(vendor)
            .join(file);
        std::fs::read_to_string(path).unwrap()
    }

    /// The capture's metadata signing certificate (DER).
    fn metadata_cert(vendor: &str) -> Vec<u8> {
        let meta = fixture(vendor, "metadata.xml");
        let start = meta.find("X509Certificate>").unwrap() + "X509Certificate>".len();
        let b64: String = meta[start..meta[start..].find('<').unwrap() + start]
            .split_whitespace()
            .collect();
        base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
    }

    fn other_cert(ec: bool) -> Vec<u8> {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, x509};
        let key = if ec {
            let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
            PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap()
        } else {
            PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap()
        };
        let mut b = x509::X509Builder::new().unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::from_unix(86_400).unwrap()).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build().to_der().unwrap()
    }

    /// Verifies the capture's one signed element (the Assertion's when both are signed).
    fn verify(vendor: &str, certs: &[Vec<u8>]) -> Result<String, &'static str> {
        let keys = IdpKeys::load(certs).unwrap();
        let text = fixture(vendor, "assertion.xml");
        let doc = xml::parse_strict(&text).unwrap();
        let root = doc.get_root_element().unwrap();
        let signed = xml::descendants(&root, DS, "Signature")
            .into_iter()
            .map(|s| s.get_parent().unwrap())
            .last()
            .unwrap();
        let sig = xml::child(&signed, DS, "Signature").unwrap();
        let id = xml::attr(&signed, "ID").unwrap();
        verify_in_place(&doc, &signed, &id, &sig, &keys)
    }

    #[test]
    fn verifies_in_place_against_the_configured_keys_only() {
        for vendor in ["adfs", "google", "jumpcloud", "keycloak", "okta", "ping"] {
            let right = metadata_cert(vendor);
            let signed = verify(vendor, std::slice::from_ref(&right)).unwrap_or_else(|e| panic!("{vendor}: {e}"));
            assert!(
                signed.contains("Assertion") && !signed.contains("SignatureValue"),
                "{vendor}: {signed}"
            );
            // A key of another type first (xmlsec refuses it for the method), another RSA key next.
            let three = [other_cert(true), other_cert(false), right];
            assert_eq!(verify(vendor, &three).unwrap(), signed, "{vendor}");
            // The message's KeyInfo certificate is never used.
            assert_eq!(
                verify(vendor, &[other_cert(false)]).err(),
                Some("no configured certificate verifies the signature"),
                "{vendor}"
            );
        }
    }

    #[test]
    fn refuses_ids_that_are_not_ncnames() {
        let keys = IdpKeys::load(&[metadata_cert("google")]).unwrap();
        let doc = xml::parse_strict(&format!(r#"<a ID="xpointer(/)"><ds:Signature xmlns:ds="{DS}"/></a>"#)).unwrap();
        let root = doc.get_root_element().unwrap();
        let sig = xml::child(&root, DS, "Signature").unwrap();
        assert_eq!(
            verify_in_place(&doc, &root, "xpointer(/)", &sig, &keys).err(),
            Some("the signed element's ID is not an NCName")
        );
    }
}
