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
//! The context's keys manager has one job: its `getKey` callback
//! ([`configured_key`]) hands xmlsec the configured key the context was made
//! for and never looks at the message, so the `KeyInfo` of a message (a
//! certificate the sender chose) is never read as a key. The callback also
//! answers xmlsec's key-type requirement itself, from the type read once when
//! the key was loaded: xmlsec 1.2 with OpenSSL 3 reads an RSA key's modulus,
//! exponent and private exponent into 2,048-byte buffers to tell a public key
//! from a private one, 6-8 % of a whole ACS check (`docs/performance-log.md`,
//! twentieth pass). The algorithm, usage and size requirements are still
//! checked by xmlsec. The signature is verified where it sits, in the document we
//! parsed first (no serialization, no second parse), and the Reference's
//! pre-digest buffer (the exact bytes its digest was computed over) must
//! start with the signed element's own start tag and `ID`: the element the
//! ACS goes on to read, in that same parse, is the one that was digested.

use super::xml::{self, El, DS};
use base64::Engine as _;
use libxml::tree::Document;
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

/// One IdP public key, loaded into xmlsec once, with its type as xmlsec
/// tells it (`xmlSecKeyGetType`, read at load: public for an RSA key loaded
/// from a SubjectPublicKeyInfo; xmlsec 1.2 calls every EC key both public
/// and private).
struct IdpKey {
    key: NonNull<ffi::xmlSecKey>,
    kind: ffi::xmlSecKeyDataType,
}

/// One configured certificate: its key, and its DER in base64 (standard
/// alphabet, padded) to recognise it in a message's `KeyInfo`.
struct IdpCert {
    key: IdpKey,
    base64: String,
}

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
        unsafe { ffi::xmlSecKeyDestroy(self.key.as_ptr()) }
    }
}

/// The connection's signing keys, in configuration order: the only keys a
/// response's signature is verified against.
pub(crate) struct IdpKeys {
    keys: Vec<IdpCert>,
    manager: KeysManager,
}

/// An xmlsec keys manager with no key store whose `getKey` is
/// [`configured_key`]: what a signature context needs to ask us for its key.
struct KeysManager(NonNull<ffi::xmlSecKeysMngr>);

// SAFETY: the manager is never changed after `KeysManager::new`: contexts
// only keep its address and read its `getKey` field; it is destroyed once,
// by `Drop`, after every context using it (they borrow the `IdpKeys`).
unsafe impl Send for KeysManager {}
// SAFETY: as above: shared references only ever read it.
unsafe impl Sync for KeysManager {}

impl KeysManager {
    fn new() -> Result<Self, String> {
        // SAFETY: xmlsec is initialized (`xml::init`); the manager is ours.
        let manager = NonNull::new(unsafe { ffi::xmlSecKeysMngrCreate() })
            .ok_or_else(|| "xmlsec cannot create a keys manager".to_owned())?;
        // SAFETY: a fresh manager we own; no store is adopted, so the default
        // `getKey` would find nothing anyway.
        unsafe { (*manager.as_ptr()).getKey = Some(configured_key) };
        Ok(Self(manager))
    }
}

impl Drop for KeysManager {
    fn drop(&mut self) {
        // SAFETY: our manager, destroyed once, after every context using it.
        unsafe { ffi::xmlSecKeysMngrDestroy(self.0.as_ptr()) }
    }
}

/// The `getKey` callback of [`KeysManager`]: a duplicate of the configured
/// key whose [`IdpKey`] the context carries in `keyInfoReadCtx.userData`
/// (set by [`Context::new`]), or null (xmlsec then fails with "key not
/// found") when there is none or its type is not the one required.
///
/// `_key_info` (the message's `KeyInfo`, possibly null) is never read. The
/// key-type requirement (public, for a verification) is answered here from
/// the type read at load, and cleared so that xmlsec does not compute the
/// type again; xmlsec still checks the requirement's algorithm, usage and
/// size against the key.
unsafe extern "C" fn configured_key(
    _key_info: *mut ffi::xmlNode,
    ctx: *mut ffi::xmlSecKeyInfoCtx,
) -> *mut ffi::xmlSecKey {
    // SAFETY: xmlsec passes its live key-info context, or null.
    let Some(ctx) = (unsafe { ctx.as_mut() }) else {
        return null_mut();
    };
    // SAFETY: `userData` is null or the `IdpKey` that `Context::new` set,
    // borrowed for the whole verification (xmlsec itself never touches it).
    let Some(key) = (unsafe { ctx.userData.cast::<IdpKey>().as_ref() }) else {
        return null_mut();
    };
    let required = ctx.keyReq.keyType;
    if required != ffi::xmlSecKeyDataTypeUnknown && required & key.kind == 0 {
        return null_mut();
    }
    ctx.keyReq.keyType = ffi::xmlSecKeyDataTypeUnknown;
    // SAFETY: a live, loaded key, only read; the context takes ownership of
    // the duplicate (`signKey`, destroyed with the context).
    unsafe { ffi::xmlSecKeyDuplicate(key.key.as_ptr()) }
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
            // SAFETY: a live key we own, only read.
            let kind = unsafe { ffi::xmlSecKeyGetType(key.as_ptr()) };
            let key = IdpKey { key, kind };
            if kind & ffi::xmlSecKeyDataTypePublic == 0 {
                return Err("an IdP certificate's key is not a public key to xmlsec".to_owned());
            }
            keys.push(IdpCert {
                key,
                base64: base64::engine::general_purpose::STANDARD.encode(der),
            });
        }
        Ok(Self {
            keys,
            manager: KeysManager::new()?,
        })
    }

    /// The position of the configured certificate that the signature's
    /// `KeyInfo` carries (`ds:X509Data/ds:X509Certificate`, compared byte
    /// for byte in base64 without white space), when several are configured.
    ///
    /// Only the order of the attempts depends on it: the message's
    /// certificate is never a key, and every configured key is still tried.
    fn named_by(&self, sig: &El<'_>) -> Option<usize> {
        if self.keys.len() < 2 {
            return None;
        }
        let info = xml::child(sig, DS, "KeyInfo")?;
        xml::children(&info, DS, "X509Data")
            .iter()
            .flat_map(|data| xml::children(data, DS, "X509Certificate"))
            .find_map(|cert| {
                let text: String = xml::text(&cert).split_whitespace().collect();
                self.keys.iter().position(|k| k.base64 == text)
            })
    }
}

/// A signature context of one verification; destroyed (with its key
/// duplicate) when dropped.
struct Context(NonNull<ffi::xmlSecDSigCtx>);

impl Context {
    /// A context that verifies with `key` alone, through `manager`'s
    /// [`configured_key`]; both must outlive it (the caller borrows them
    /// from one `IdpKeys` for the verification).
    fn new(manager: &KeysManager, key: &IdpKey) -> Result<Self, &'static str> {
        // SAFETY: xmlsec is initialized; the manager only answers `getKey`
        // with the key set below, never with one from the message.
        let ctx = NonNull::new(unsafe { ffi::xmlSecDSigCtxCreate(manager.0.as_ptr()) }).ok_or("xmlsec context")?;
        let ctx = Self(ctx);
        // SAFETY: the context is ours and fresh. `userData` is ours alone
        // (xmlsec never reads it); `configured_key` reads the key through it
        // and the context takes ownership of the duplicate it returns
        // (`xmlSecDSigCtxDestroy` destroys `signKey`).
        unsafe {
            let c = &mut *ctx.0.as_ptr();
            c.keyInfoReadCtx.userData = std::ptr::from_ref(key).cast_mut().cast();
            c.flags |= ffi::XMLSEC_DSIG_FLAGS_STORE_SIGNEDINFO_REFERENCES;
            // Only `#id` references (also checked before, by `check_signature`).
            c.enabledReferenceUris = ffi::xmlSecTransformUriTypeSameDocument;
            // A bare-name `#id` is resolved by the document's ID table
            // (`xmlGetID`, the element owning the attribute, the subtree
            // without comments) instead of by evaluating the XPointer
            // `id('id')` in a new XPath context (a context registers every
            // XPath function in a fresh hash table: about 3 % of an ACS).
            // With the ID checked to be an NCName and registered for the
            // signed element's own `ID` attribute (`verify_in_place`), the
            // XPointer selects exactly that element with the same node-set
            // type, so the same bytes are digested; an `#xpointer(...)` URI
            // would still go through XPointer, and `check_signature` refuses
            // any URI but `#<ID>` before. (xmlsec names the flag after the
            // Visa 3-D Secure messages whose numeric ids XPointer refuses.)
            c.flags |= ffi::XMLSEC_DSIG_FLAGS_USE_VISA3D_HACK;
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

    /// Whether the signature's one (verified) Reference digested the element
    /// `qname` with `ID="id"`: its pre-digest buffer (the exact bytes the
    /// digest was computed over, the canonical form of the referenced
    /// element) starts with that element's start tag.
    fn digested(&self, qname: &str, id: &str) -> Result<(), &'static str> {
        if canonical_start_tag_is(self.pre_digest()?, qname, id) {
            Ok(())
        } else {
            Err("the signature digested another element than the one read")
        }
    }

    /// The pre-digest buffer of the signature's one verified Reference.
    fn pre_digest(&self) -> Result<&[u8], &'static str> {
        // SAFETY: the context is ours and was verified with
        // `XMLSEC_DSIG_FLAGS_STORE_SIGNEDINFO_REFERENCES`, so its list holds
        // the reference contexts of SignedInfo, alive until it is destroyed
        // (the slice borrows the context).
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
            Ok(std::slice::from_raw_parts(data, size))
        }
    }
}

/// Whether `c14n`, a canonical XML serialization, starts with the start tag
/// of the element `qname` that has the attribute `ID="id"` (in no namespace).
///
/// Canonical XML writes every attribute as ` name="value"` with a `"`
/// inside a value escaped as `&quot;`, so the start tag splits into its
/// attributes exactly; an element without attributes ends at once with `>`.
fn canonical_start_tag_is(c14n: &[u8], qname: &str, id: &str) -> bool {
    let Some(mut rest) = c14n.strip_prefix(b"<").and_then(|r| r.strip_prefix(qname.as_bytes())) else {
        return false;
    };
    let mut found = false;
    loop {
        match rest.split_first() {
            Some((b'>', _)) => return found,
            Some((b' ', after)) => {
                let Some(eq) = after.iter().position(|b| *b == b'=') else {
                    return false;
                };
                let (name, value) = after.split_at(eq);
                let Some(value) = value.strip_prefix(b"=\"") else {
                    return false;
                };
                let Some(close) = value.iter().position(|b| *b == b'"') else {
                    return false;
                };
                let (value, tail) = value.split_at(close);
                if name == b"ID" {
                    if found || value != id.as_bytes() {
                        return false;
                    }
                    found = true;
                }
                rest = tail.get(1..).unwrap_or_default();
            }
            _ => return false,
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
/// `doc` against `keys` and checks that what it digested is `signed`.
///
/// Keys are tried in configuration order, except that a key whose
/// certificate is exactly the one in the signature's `KeyInfo` is tried
/// first: that only orders the attempts (a `KeyInfo` certificate is never a
/// key), so a message naming the right certificate costs one verification.
///
/// The caller has checked the signature's placement, algorithms and
/// transforms, that its one Reference is `#` + `id`, that `id` is the
/// `ID` attribute of `signed` (no namespace), and that no other element
/// carries that id. `id` is registered as the document's one ID here so
/// xmlsec resolves the Reference to `signed`; it must be an NCName, else
/// `#id` could be read as an XPointer expression. After verification, the
/// Reference's pre-digest buffer must start with `signed`'s own start tag
/// (`ID` included): what the caller goes on to read, `signed` in this
/// document, is then by construction what was digested (the subtree of the
/// element with that ID, without comments (refused beforehand) and without
/// the enveloped `sig`).
pub(crate) fn verify_in_place(
    doc: &Document,
    signed: &El<'_>,
    id: &str,
    sig: &El<'_>,
    keys: &IdpKeys,
) -> Result<(), &'static str> {
    let id_c = CString::new(id).map_err(|_| "the signed element's ID has a NUL")?;
    // SAFETY: a NUL-terminated string, only read.
    if unsafe { libxml::bindings::xmlValidateNCName(id_c.as_ptr().cast(), 0) } != 0 {
        return Err("the signed element's ID is not an NCName");
    }
    let name = c"ID";
    // SAFETY: `signed` is an element of `doc`, which this thread owns for the
    // call (`El` and `Document` are `!Send`); `xmlHasNsProp` with a null
    // namespace finds the attribute `ID` in no namespace, and `xmlAddID`
    // records it in the document's ID table (freed with the document). It
    // returns null when the id is already registered, which for a fresh
    // parse means a duplicate.
    unsafe {
        let attr = libxml::bindings::xmlHasNsProp(signed.ptr(), name.as_ptr().cast(), null());
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
    let qname = match signed.prefix() {
        Some(prefix) => format!("{prefix}:{}", signed.name()),
        None => signed.name().into_owned(),
    };
    let first = keys.named_by(sig);
    let order = first
        .into_iter()
        .chain((0..keys.keys.len()).filter(|i| Some(*i) != first));
    for key in order.filter_map(|i| keys.keys.get(i)) {
        let ctx = Context::new(&keys.manager, &key.key)?;
        if ctx.verify(sig.ptr().cast::<ffi::xmlNode>()) {
            return ctx.digested(&qname, id);
        }
    }
    Err("no configured certificate verifies the signature")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::saml::xml;

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
    fn verify(vendor: &str, certs: &[Vec<u8>]) -> Result<(), &'static str> {
        verify_text(&fixture(vendor, "assertion.xml"), certs)
    }

    fn verify_text(text: &str, certs: &[Vec<u8>]) -> Result<(), &'static str> {
        let keys = IdpKeys::load(certs).unwrap();
        let doc = xml::parse_strict(text).unwrap();
        let root = El::root(&doc).unwrap();
        let signed = xml::descendants(&root, DS, "Signature")
            .into_iter()
            .map(|s| s.parent().unwrap())
            .last()
            .unwrap();
        let sig = xml::child(&signed, DS, "Signature").unwrap();
        let id = xml::attr(&signed, "ID").unwrap();
        verify_in_place(&doc, &signed, &id, &sig, &keys)
    }

    /// Which configured certificate `keys` would try first for the capture's signature.
    fn named_first(text: &str, certs: &[Vec<u8>]) -> Option<usize> {
        let keys = IdpKeys::load(certs).unwrap();
        let doc = xml::parse_strict(text).unwrap();
        let root = El::root(&doc).unwrap();
        let sig = xml::descendants(&root, DS, "Signature").into_iter().last().unwrap();
        keys.named_by(&sig)
    }

    #[test]
    fn verifies_in_place_against_the_configured_keys_only() {
        for vendor in ["adfs", "google", "jumpcloud", "keycloak", "okta", "ping"] {
            let right = metadata_cert(vendor);
            verify(vendor, std::slice::from_ref(&right)).unwrap_or_else(|e| panic!("{vendor}: {e}"));
            // A key of another type first (xmlsec refuses it for the method), another RSA key next.
            let three = [other_cert(true), other_cert(false), right];
            assert_eq!(verify(vendor, &three), Ok(()), "{vendor}");
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
        let root = El::root(&doc).unwrap();
        let sig = xml::child(&root, DS, "Signature").unwrap();
        assert_eq!(
            verify_in_place(&doc, &root, "xpointer(/)", &sig, &keys).err(),
            Some("the signed element's ID is not an NCName")
        );
    }

    #[test]
    fn the_keyinfo_certificate_is_tried_first_but_never_trusted() {
        for vendor in ["adfs", "google", "jumpcloud", "keycloak", "okta", "ping"] {
            let text = fixture(vendor, "assertion.xml");
            let right = metadata_cert(vendor);
            let (ec, rsa) = (other_cert(true), other_cert(false));
            let three = [ec.clone(), rsa.clone(), right.clone()];
            // One configured certificate: nothing to order.
            assert_eq!(named_first(&text, std::slice::from_ref(&right)), None, "{vendor}");
            let in_key_info = {
                let doc = xml::parse_strict(&text).unwrap();
                let root = El::root(&doc).unwrap();
                let sig = xml::descendants(&root, DS, "Signature").into_iter().last().unwrap();
                xml::descendants(&sig, DS, "X509Certificate")
                    .first()
                    .map(xml::text)
                    .filter(|t| text.contains(t.as_str()))
            };
            assert_eq!(named_first(&text, &three), in_key_info.as_ref().map(|_| 2), "{vendor}");
            let Some(in_key_info) = in_key_info else {
                continue;
            };
            // KeyInfo is outside SignedInfo: naming another configured
            // certificate there changes the order, not the outcome.
            let renamed = text.replace(&in_key_info, &base64::engine::general_purpose::STANDARD.encode(&rsa));
            assert_eq!(named_first(&renamed, &three), Some(1), "{vendor}");
            assert_eq!(verify_text(&renamed, &three), Ok(()), "{vendor}");
            // Named and configured, but not the signer's: still refused.
            assert_eq!(
                verify_text(&renamed, &[ec.clone(), rsa.clone()]).err(),
                Some("no configured certificate verifies the signature"),
                "{vendor}"
            );
            // The untouched message names the signer's certificate; with
            // it not configured, naming it changes nothing.
            assert_eq!(
                verify_text(&text, &[ec, rsa]).err(),
                Some("no configured certificate verifies the signature"),
                "{vendor}"
            );
        }
    }

    #[test]
    fn the_digested_element_must_be_the_read_one() {
        let tag = br#"<saml:Assertion xmlns:saml="urn:a" ID="_a1" IssueInstant="2024-01-01T00:00:00Z"><saml:Issuer>x</saml:Issuer></saml:Assertion>"#;
        assert!(canonical_start_tag_is(tag, "saml:Assertion", "_a1"));
        // Another element, another prefix, another id, an id only deeper down.
        assert!(!canonical_start_tag_is(tag, "saml:Response", "_a1"));
        assert!(!canonical_start_tag_is(tag, "Assertion", "_a1"));
        assert!(!canonical_start_tag_is(tag, "saml:Assertio", "_a1"));
        assert!(!canonical_start_tag_is(tag, "saml:Assertion", "_a"));
        assert!(!canonical_start_tag_is(tag, "saml:Assertion", "_a10"));
        let deeper = br#"<saml:Assertion xmlns:saml="urn:a"><saml:Issuer ID="_a1">x</saml:Issuer></saml:Assertion>"#;
        assert!(!canonical_start_tag_is(deeper, "saml:Assertion", "_a1"));
        // Look-alikes: a namespaced ID, the id inside another value, two IDs.
        for tag in [
            &br#"<saml:Assertion xmlns:saml="urn:a" saml:ID="_a1">"#[..],
            br#"<saml:Assertion xmlns:saml="urn:a" Name="x&quot; ID=&quot;_a1">"#,
            br#"<saml:Assertion xID="_a1">"#,
            br#"<saml:Assertion ID="_a1" ID="_a1">"#,
            br#"<saml:Assertion ID="_a1""#,
            br#"<saml:Assertion  ID="_a1">"#,
            b"",
        ] {
            assert!(
                !canonical_start_tag_is(tag, "saml:Assertion", "_a1"),
                "{}",
                String::from_utf8_lossy(tag)
            );
        }
        assert!(canonical_start_tag_is(br#"<Assertion ID="_a1">"#, "Assertion", "_a1"));
    }

    #[test]
    fn the_reference_resolved_by_the_id_table_digests_what_its_xpointer_selects() {
        for vendor in ["adfs", "google", "jumpcloud", "keycloak", "okta", "ping"] {
            let keys = IdpKeys::load(&[metadata_cert(vendor)]).unwrap();
            let text = fixture(vendor, "assertion.xml");
            // What one verification digested, its Reference resolved by the
            // document's ID table or by XPointer (each in a parse of its own:
            // verifying registers the ID in the document).
            let digested = |by_id_table: bool| {
                let doc = xml::parse_strict(&text).unwrap();
                let root = El::root(&doc).unwrap();
                let sig = xml::descendants(&root, DS, "Signature").into_iter().last().unwrap();
                let signed = sig.parent().unwrap();
                let id = xml::attr(&signed, "ID").unwrap();
                verify_in_place(&doc, &signed, &id, &sig, &keys).unwrap_or_else(|e| panic!("{vendor}: {e}"));
                let ctx = Context::new(&keys.manager, &keys.keys[0].key).unwrap();
                if !by_id_table {
                    // SAFETY: our fresh context; only its flags change.
                    unsafe { (*ctx.0.as_ptr()).flags &= !ffi::XMLSEC_DSIG_FLAGS_USE_VISA3D_HACK };
                }
                assert!(ctx.verify(sig.ptr().cast::<ffi::xmlNode>()), "{vendor}");
                // The Reference's first transform is the one that resolved it.
                // SAFETY: the context was verified with the references kept
                // (as in `pre_digest`); the transform and its class name are
                // xmlsec's, alive with the context, only read.
                let resolver = unsafe {
                    let list = &mut (*ctx.0.as_ptr()).signedInfoReferences as *mut ffi::xmlSecPtrList;
                    let reference = ffi::xmlSecPtrListGetItem(list, 0).cast::<ffi::xmlSecDSigReferenceCtx>();
                    let first = (*reference).transformCtx.first;
                    std::ffi::CStr::from_ptr((*(*first).id).name.cast())
                        .to_string_lossy()
                        .into_owned()
                };
                let expected = if by_id_table { "Visa3DHackTransform" } else { "xpointer" };
                assert_eq!(resolver, expected, "{vendor}");
                let qname = match signed.prefix() {
                    Some(prefix) => format!("{prefix}:{}", signed.name()),
                    None => signed.name().into_owned(),
                };
                let bytes = ctx.pre_digest().map(<[u8]>::to_vec).unwrap();
                assert!(canonical_start_tag_is(&bytes, &qname, &id), "{vendor}");
                bytes
            };
            let (by_id_table, by_xpointer) = (digested(true), digested(false));
            assert_eq!(
                String::from_utf8_lossy(&by_id_table),
                String::from_utf8_lossy(&by_xpointer),
                "{vendor}"
            );
        }
    }

    #[test]
    fn the_key_callback_hands_out_the_configured_key_for_the_type_it_was_loaded_as() {
        let keys = IdpKeys::load(&[metadata_cert("okta"), other_cert(true)]).unwrap();
        // An RSA key loaded from a certificate is a public key to xmlsec
        // (xmlsec 1.2 calls an EC key both, whatever it holds).
        assert_eq!(keys.keys[0].key.kind, ffi::xmlSecKeyDataTypePublic);
        for cert in &keys.keys {
            let key = &cert.key;
            // SAFETY: a key-info context as `xmlSecKeyInfoCtxInitialize`
            // starts it (all zero), only read and written by the callback.
            let mut ctx: ffi::xmlSecKeyInfoCtx = unsafe { std::mem::zeroed() };
            // No key carried: none handed out.
            ctx.keyReq.keyType = ffi::xmlSecKeyDataTypePublic;
            assert!(unsafe { configured_key(null_mut(), &mut ctx) }.is_null());
            ctx.userData = std::ptr::from_ref(key).cast_mut().cast();
            // Each requirement is answered as xmlsec answers it for this
            // key: a duplicate and the requirement cleared when the key's
            // type has it, else nothing and the requirement left as it was.
            for required in [ffi::xmlSecKeyDataTypePublic, ffi::xmlSecKeyDataTypePrivate] {
                ctx.keyReq.keyType = required;
                let dup = unsafe { configured_key(null_mut(), &mut ctx) };
                if key.kind & required == 0 {
                    assert!(dup.is_null(), "{required}");
                    assert_eq!(ctx.keyReq.keyType, required);
                    continue;
                }
                assert!(!dup.is_null(), "{required}");
                assert_ne!(dup, key.key.as_ptr());
                assert_eq!(ctx.keyReq.keyType, ffi::xmlSecKeyDataTypeUnknown);
                // SAFETY: the duplicate is ours to read and destroy.
                unsafe {
                    assert_eq!(ffi::xmlSecKeyGetType(dup), key.kind);
                    ffi::xmlSecKeyDestroy(dup);
                }
            }
        }
    }
}
