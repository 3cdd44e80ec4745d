//! Strict XML parsing and namespace-aware navigation over libxml2 (the
//! same parser xmlsec verifies with, so what we read is what was verified).

use libxml::parser::{Parser, ParserOptions};
use libxml::tree::Document;

/// SAML 2.0 protocol namespace.
pub(crate) const SAMLP: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
/// SAML 2.0 assertion namespace.
pub(crate) const SAML: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
/// SAML 2.0 metadata namespace.
pub(crate) const MD: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
/// XML Signature namespace.
pub(crate) const DS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// XML Encryption namespace.
pub(crate) const XENC: &str = "http://www.w3.org/2001/04/xmlenc#";

/// Initializes libxml2 and xmlsec once per process, before any parsing.
///
/// samael initializes xmlsec lazily under its own mutex, the first time a key
/// is loaded; libxml2 2.9 initializes itself lazily on first parse, and
/// xmlsec's init registers global libxml2 I/O callbacks. Both are documented
/// as safe only when no other thread uses the libraries meanwhile, so every
/// entry point (parsing, verifying, signing) passes through this `Once` first.
/// After it, each call uses its own documents, keys and contexts, which
/// libxml2 and xmlsec support concurrently: no global lock on validation.
pub(crate) fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        use samael::crypto::CryptoProvider as _;
        // Loading a key runs samael's xmlsec init; a throwaway certificate
        // loads cleanly, and "<a/>" has no signature, so nothing is verified.
        let cert = throwaway_certificate_der().unwrap_or_default();
        let _ = samael::crypto::XmlSec::verify_signed_xml("<a/>", &samael::crypto::CertificateDer::from(cert), None);
        // xmlsec's init installs its default (stderr) error callback: replace it after.
        xmlsec_errors::route_to_tracing();
    });
}

/// A self-signed P-256 certificate, only to make samael initialize xmlsec.
fn throwaway_certificate_der() -> Option<Vec<u8>> {
    use openssl::{asn1::Asn1Time, ec, hash::MessageDigest, nid::Nid, pkey::PKey, x509};
    let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).ok()?;
    let key = PKey::from_ec_key(ec::EcKey::generate(&group).ok()?).ok()?;
    let mut name = x509::X509NameBuilder::new().ok()?;
    name.append_entry_by_text("CN", "portcullis-init").ok()?;
    let name = name.build();
    let mut builder = x509::X509Builder::new().ok()?;
    builder.set_version(2).ok()?;
    builder.set_subject_name(&name).ok()?;
    builder.set_issuer_name(&name).ok()?;
    builder.set_pubkey(&key).ok()?;
    let (from, until) = (Asn1Time::from_unix(0).ok()?, Asn1Time::from_unix(86_400).ok()?);
    builder.set_not_before(&from).ok()?;
    builder.set_not_after(&until).ok()?;
    builder.sign(&key, MessageDigest::sha256()).ok()?;
    builder.build().to_der().ok()
}

/// xmlsec prints every verification failure to stderr by default. Those lines
/// go to `tracing` at debug level instead: the decision itself is logged once,
/// with its reason code, by the connector.
mod xmlsec_errors {
    use std::ffi::{c_char, c_int, CStr};

    type Callback =
        unsafe extern "C" fn(*const c_char, c_int, *const c_char, *const c_char, *const c_char, c_int, *const c_char);

    extern "C" {
        // `void xmlSecErrorsSetCallback(xmlSecErrorsCallback callback)` in
        // libxmlsec1, which samael links.
        fn xmlSecErrorsSetCallback(callback: Option<Callback>);
    }

    fn text(p: *const c_char) -> String {
        if p.is_null() {
            return String::new();
        }
        // SAFETY: xmlsec passes NUL-terminated strings that live for the call.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    unsafe extern "C" fn to_tracing(
        _file: *const c_char,
        _line: c_int,
        func: *const c_char,
        _object: *const c_char,
        subject: *const c_char,
        reason: c_int,
        msg: *const c_char,
    ) {
        tracing::debug!(reason = "saml.xmlsec", func = %text(func), subject = %text(subject), code = reason, "{}", text(msg));
    }

    pub(super) fn route_to_tracing() {
        // SAFETY: called once, inside the process-wide init, before any other
        // thread uses xmlsec; it only stores the function pointer.
        unsafe { xmlSecErrorsSetCallback(Some(to_tracing)) }
    }
}

/// Why a document was not parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// It declares a DTD or entities (XXE, entity expansion): never parsed.
    Dtd,
    /// It is not well-formed XML.
    Malformed,
}

/// Parses `xml` without recovery, network access or DTDs.
///
/// Any `<!DOCTYPE` or `<!ENTITY` is refused before libxml2 sees the bytes,
/// so neither external entities nor entity expansion can be reached. libxml2
/// is told not to recover: a document it would have to repair is refused,
/// which closes parser-differential tricks.
pub(crate) fn parse_strict(xml: &str) -> Result<Document, ParseError> {
    init();
    // libxml2 stops reading at a NUL byte, so whatever follows one would be
    // silently ignored instead of refused: no NUL is well-formed XML anyway.
    if xml.contains('\0') {
        return Err(ParseError::Malformed);
    }
    if xml.contains("<!DOCTYPE") || xml.contains("<!ENTITY") || xml.contains("<!doctype") {
        return Err(ParseError::Dtd);
    }
    // The text is UTF-8; a declaration claiming another encoding would make
    // libxml2 decode it differently from what we checked.
    let trimmed = xml.trim_start_matches('\u{feff}');
    if let Some(decl) = trimmed.strip_prefix("<?xml").and_then(|rest| rest.split("?>").next()) {
        let decl = decl.to_ascii_lowercase();
        if decl.contains("encoding") && !decl.contains("utf-8") {
            return Err(ParseError::Malformed);
        }
    }
    let options = ParserOptions {
        recover: false,
        no_def_dtd: true,
        no_error: true,
        no_warning: true,
        pedantic: false,
        no_blanks: false,
        no_net: true,
        no_implied: false,
        compact: false,
        ignore_enc: false,
        encoding: None,
    };
    let doc = Parser::default()
        .parse_string_with_options(xml, options)
        .map_err(|_| ParseError::Malformed)?;
    if doc.get_root_element().is_none() {
        return Err(ParseError::Malformed);
    }
    Ok(doc)
}

/// Whether a comment sits anywhere under the element `node`, outside its
/// own (direct child) `ds:Signature`.
///
/// A same-document Reference (`URI="#id"`, the only kind we accept) never
/// covers comments, whatever the canonicalization (XML Signature 1.1,
/// §4.4.3.3), so a comment inside a signed element was not signed: it is
/// how `admin@corp.test<!---->.evil.test` gets past a signature over
/// `admin@corp.test.evil.test`. Such a document was changed after signing
/// (or signed carelessly) and is refused.
pub(crate) fn has_unsigned_comment(node: &El<'_>) -> bool {
    let mut stack: Vec<NodePtr> = Vec::new();
    // SAFETY: see "SAFETY" above `NodePtr`.
    let mut c = unsafe { (*node.p).children };
    while !c.is_null() {
        if !ptr_is(c, DS, "Signature") {
            stack.push(c);
        }
        // SAFETY: as above; `c` is a non-null member of a child list.
        c = unsafe { (*c).next };
    }
    while let Some(p) = stack.pop() {
        // SAFETY: as above; `p` is a non-null node of the same document.
        let (kind, mut child) = unsafe { ((*p).type_, (*p).children) };
        if kind == libxml::bindings::xmlElementType_XML_COMMENT_NODE {
            return true;
        }
        if kind != libxml::bindings::xmlElementType_XML_ELEMENT_NODE {
            continue;
        }
        while !child.is_null() {
            stack.push(child);
            // SAFETY: as above; `child` is a non-null member of a child list.
            child = unsafe { (*child).next };
        }
    }
    false
}

// Navigation walks libxml2's tree through raw pointers, handed out as `El`:
// a borrowed, copyable element handle. The `libxml` crate's `Node` allocates
// a wrapper (and a hash-map entry in its document) for every node it hands
// out, text nodes included, and its `get_name`/`get_namespace` copy strings,
// which made `malloc`/`free` a quarter of the ACS profile
// (docs/PERFORMANCE.md).
//
// SAFETY (for every raw read below): an `El<'d>` is only made from the root
// of a `&'d Document` (`El::root`) or by stepping through the tree from
// another `El<'d>`, so its pointer is an element of a live document that
// cannot be dropped while the handle exists; nothing in the SAML code
// changes a parsed document's tree (xmlsec's verification adds IDs, which
// moves no node), and documents are owned by the one thread validating them
// (`Document` is `!Send`, and so is `El`). libxml2 keeps names, hrefs and
// child lists valid as long as the tree is not changed.

type NodePtr = libxml::bindings::xmlNodePtr;

/// One element of a parsed document, borrowed from it: a raw libxml2 node
/// pointer that is only ever read (see the SAFETY note above).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct El<'d> {
    p: NodePtr,
    _doc: std::marker::PhantomData<&'d Document>,
}

impl std::fmt::Debug for El<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "El({})", self.name())
    }
}

impl<'d> El<'d> {
    /// The root element of `doc` (a parsed document always has one).
    pub(crate) fn root(doc: &'d Document) -> Option<Self> {
        // SAFETY: `doc` is live for 'd; the root is one of its elements.
        let p = unsafe { libxml::bindings::xmlDocGetRootElement(doc.doc_ptr()) };
        Self::at(p)
    }

    fn at(p: NodePtr) -> Option<Self> {
        // SAFETY: see above; `p` is checked non-null first.
        (!p.is_null() && unsafe { (*p).type_ } == libxml::bindings::xmlElementType_XML_ELEMENT_NODE).then_some(Self {
            p,
            _doc: std::marker::PhantomData,
        })
    }

    /// The libxml2 node (for xmlsec and for identity comparisons).
    pub(crate) fn ptr(self) -> NodePtr {
        self.p
    }

    /// The parent element, if any.
    pub(crate) fn parent(self) -> Option<Self> {
        // SAFETY: see above.
        Self::at(unsafe { (*self.p).parent })
    }

    /// The element children, in order.
    pub(crate) fn elements(self) -> impl Iterator<Item = El<'d>> {
        element_children(self.p).filter_map(Self::at)
    }

    /// The local name.
    pub(crate) fn name(self) -> std::borrow::Cow<'d, str> {
        // SAFETY: see above; element names are non-null NUL-terminated strings.
        unsafe { std::ffi::CStr::from_ptr((*self.p).name.cast()) }.to_string_lossy()
    }

    /// The namespace prefix, if the element has one.
    pub(crate) fn prefix(self) -> Option<std::borrow::Cow<'d, str>> {
        // SAFETY: see above.
        unsafe {
            let ns = (*self.p).ns;
            if ns.is_null() || (*ns).prefix.is_null() {
                return None;
            }
            Some(std::ffi::CStr::from_ptr((*ns).prefix.cast()).to_string_lossy())
        }
    }

    /// The namespace URI ("" when none).
    pub(crate) fn ns_href(self) -> std::borrow::Cow<'d, str> {
        // SAFETY: see above.
        unsafe {
            let ns = (*self.p).ns;
            if ns.is_null() || (*ns).href.is_null() {
                return std::borrow::Cow::Borrowed("");
            }
            std::ffi::CStr::from_ptr((*ns).href.cast()).to_string_lossy()
        }
    }
}

/// Whether the NUL-terminated libxml2 string `p` is exactly `s`.
fn c_eq(p: *const u8, s: &str) -> bool {
    // SAFETY: libxml2 strings are NUL-terminated and live with the document.
    !p.is_null() && unsafe { std::ffi::CStr::from_ptr(p.cast()) }.to_bytes() == s.as_bytes()
}

/// Whether the node at `p` is the element `{ns}local` (no allocation).
fn ptr_is(p: NodePtr, ns: &str, local: &str) -> bool {
    // SAFETY: see above; `p` is checked non-null first.
    unsafe {
        !p.is_null()
            && (*p).type_ == libxml::bindings::xmlElementType_XML_ELEMENT_NODE
            && c_eq((*p).name, local)
            && !(*p).ns.is_null()
            && c_eq((*(*p).ns).href, ns)
    }
}

/// The element children of `p`, in order, as raw pointers.
fn element_children(p: NodePtr) -> impl Iterator<Item = NodePtr> {
    // SAFETY: see above.
    let first = if p.is_null() {
        std::ptr::null_mut()
    } else {
        unsafe { (*p).children }
    };
    std::iter::successors(Some(first).filter(|c| !c.is_null()), |c| {
        // SAFETY: `c` is a non-null member of a child list.
        Some(unsafe { (**c).next }).filter(|n| !n.is_null())
    })
    // SAFETY: as above.
    .filter(|c| unsafe { (**c).type_ } == libxml::bindings::xmlElementType_XML_ELEMENT_NODE)
}

/// Whether `node` is the element `{ns}local`.
pub(crate) fn is(node: &El<'_>, ns: &str, local: &str) -> bool {
    ptr_is(node.p, ns, local)
}

/// The child elements `{ns}local` of `node`.
pub(crate) fn children<'d>(node: &El<'d>, ns: &str, local: &str) -> Vec<El<'d>> {
    node.elements().filter(|c| ptr_is(c.p, ns, local)).collect()
}

/// The first child element `{ns}local` of `node`.
pub(crate) fn child<'d>(node: &El<'d>, ns: &str, local: &str) -> Option<El<'d>> {
    node.elements().find(|c| ptr_is(c.p, ns, local))
}

/// Calls `f` on every element under (and including) `p`, in document order.
fn each_element(p: NodePtr, mut f: impl FnMut(NodePtr)) {
    let mut stack = vec![p];
    while let Some(n) = stack.pop() {
        f(n);
        let len = stack.len();
        stack.extend(element_children(n));
        if let Some(added) = stack.get_mut(len..) {
            added.reverse();
        }
    }
}

/// Every descendant element `{ns}local` of `node` (not `node` itself), in document order.
pub(crate) fn descendants<'d>(node: &El<'d>, ns: &str, local: &str) -> Vec<El<'d>> {
    let mut found = Vec::new();
    let root = node.p;
    each_element(root, |p| {
        if p != root && ptr_is(p, ns, local) {
            found.extend(El::at(p));
        }
    });
    found
}

/// How many descendant elements `{ns}local` `node` has (not `node` itself).
pub(crate) fn count_descendants(node: &El<'_>, ns: &str, local: &str) -> usize {
    let mut count = 0;
    let root = node.p;
    each_element(root, |p| count += usize::from(p != root && ptr_is(p, ns, local)));
    count
}

/// The value of the attribute `name` in no namespace of the element at `p`,
/// read in place; `None` when absent or when its value is not one text node
/// (then [`raw_no_ns_prop`] reads it the exact, copying way).
fn ptr_attr<'a>(p: NodePtr, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    // SAFETY: see above; attributes and their text children live with the document.
    unsafe {
        let mut a = (*p).properties;
        while !a.is_null() {
            if (*a).ns.is_null() && c_eq((*a).name, name) {
                let t = (*a).children;
                if t.is_null() {
                    return Some(std::borrow::Cow::Borrowed(""));
                }
                if !(*t).next.is_null()
                    || (*t).type_ != libxml::bindings::xmlElementType_XML_TEXT_NODE
                    || (*t).content.is_null()
                {
                    return None;
                }
                return Some(std::ffi::CStr::from_ptr((*t).content.cast()).to_string_lossy());
            }
            a = (*a).next;
        }
    }
    None
}

/// Walks every element under (and including) `node` and each of its
/// attributes: `namespaced(href, local)` for each namespaced attribute,
/// `id(value)` for each `ID`, `Id` or `id` attribute in no namespace;
/// stops at the first error.
pub(crate) fn walk_attributes<E>(
    node: &El<'_>,
    mut namespaced: impl FnMut(&str, &str) -> Result<(), E>,
    mut id: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    let mut out = Ok(());
    each_element(node.p, |p| {
        if out.is_err() {
            return;
        }
        // SAFETY: see above.
        let mut a = unsafe { (*p).properties };
        while !a.is_null() {
            // SAFETY: `a` is a non-null member of the attribute list.
            let (name, ns, next) = unsafe { ((*a).name, (*a).ns, (*a).next) };
            let step = if !ns.is_null() {
                // SAFETY: names and hrefs are NUL-terminated and live with the document.
                let (href, local) = unsafe {
                    (
                        std::ffi::CStr::from_ptr((*ns).href.cast()).to_string_lossy(),
                        std::ffi::CStr::from_ptr(name.cast()).to_string_lossy(),
                    )
                };
                namespaced(&href, &local)
            } else if let Some(local) = ["ID", "Id", "id"].into_iter().find(|n| c_eq(name, n)) {
                match ptr_attr(p, local) {
                    Some(v) => id(&v),
                    None => id(&raw_no_ns_prop(p, local).unwrap_or_default()),
                }
            } else {
                Ok(())
            };
            if let Err(e) = step {
                out = Err(e);
                return;
            }
            a = next;
        }
    });
    out
}

/// The full text content of an element, with XML whitespace (space, tab,
/// CR, LF: what pretty-printing adds) trimmed from both ends and nothing
/// else: a NameID is compared byte-wise, so `ada\u{a0}` or `ada\u{3000}`
/// stays a subject of its own rather than being read as `ada`
/// ([`is_xml_space`]).
///
/// libxml2 concatenates every text and CDATA descendant and skips comments,
/// so `a@b.com<!---->.evil` reads as `a@b.com.evil`: a comment can never
/// shorten a value to a prefix an attacker chose. An element whose only
/// child is one text node (the usual case) is read in place.
pub(crate) fn text(node: &El<'_>) -> String {
    // SAFETY: see above.
    unsafe {
        let t = (*node.p).children;
        if !t.is_null()
            && (*t).next.is_null()
            && (*t).type_ == libxml::bindings::xmlElementType_XML_TEXT_NODE
            && !(*t).content.is_null()
        {
            return std::ffi::CStr::from_ptr((*t).content.cast())
                .to_string_lossy()
                .trim_matches(is_xml_space)
                .to_owned();
        }
        let value = libxml::bindings::xmlNodeGetContent(node.p);
        if value.is_null() {
            return String::new();
        }
        let out = std::ffi::CStr::from_ptr(value.cast())
            .to_string_lossy()
            .trim_matches(is_xml_space)
            .to_owned();
        // SAFETY: a copy allocated by libxml2's allocator, released by
        // `xmlFree` (read by value), not used after.
        if let Some(free) = libxml::bindings::xmlFree {
            free(value.cast());
        }
        out
    }
}

/// XML's whitespace (the `S` production of XML 1.0): the only characters
/// [`text`] trims. Unicode's wider whitespace (no-break and ideographic
/// spaces, line separators) is part of a value.
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// The attribute `name` of `node` that has no namespace, read by exact name.
///
/// libxml2's `xmlGetProp` (the `libxml` crate's `get_attribute`) matches on
/// the local name whatever the namespace, so a look-alike `saml:Version` or
/// `samlp:Value` would be taken for the real `Version` or `Value`. SAML's own
/// attributes are never namespaced: `xmlGetNoNsProp` finds exactly those.
pub(crate) fn attr(node: &El<'_>, name: &str) -> Option<String> {
    match ptr_attr(node.p, name) {
        Some(v) => Some(v.into_owned()),
        None => raw_no_ns_prop(node.p, name),
    }
}

/// `xmlGetNoNsProp`: the exact value of the attribute `name` in no namespace.
fn raw_no_ns_prop(p: NodePtr, name: &str) -> Option<String> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `p` points into a document that outlives this call;
    // `xmlGetNoNsProp` only reads it and returns a fresh copy (or null).
    let value = unsafe { libxml::bindings::xmlGetNoNsProp(p, name.as_ptr().cast()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: a non-null result is a NUL-terminated string we own.
    let out = unsafe { std::ffi::CStr::from_ptr(value.cast()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: the copy was allocated by libxml2's allocator, which `xmlFree`
    // (read by value, never referenced) releases; it is not used after.
    if let Some(free) = unsafe { libxml::bindings::xmlFree } {
        unsafe { free(value.cast()) }
    }
    Some(out)
}

/// The attribute `{ns}name` of `node` (a namespaced attribute such as `xsi:type`).
pub(crate) fn attr_ns(node: &El<'_>, ns: &str, name: &str) -> Option<String> {
    let (name, ns) = (std::ffi::CString::new(name).ok()?, std::ffi::CString::new(ns).ok()?);
    // SAFETY: as `raw_no_ns_prop`: a fresh copy or null.
    let value = unsafe { libxml::bindings::xmlGetNsProp(node.p, name.as_ptr().cast(), ns.as_ptr().cast()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: as `raw_no_ns_prop`.
    let out = unsafe { std::ffi::CStr::from_ptr(value.cast()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as `raw_no_ns_prop`.
    if let Some(free) = unsafe { libxml::bindings::xmlFree } {
        unsafe { free(value.cast()) }
    }
    Some(out)
}

pub(crate) use crate::markup::escape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_does_not_truncate_text() {
        let doc = parse_strict("<a>user@example.com<!-- x -->.evil.test</a>").unwrap();
        let root = El::root(&doc).unwrap();
        assert_eq!(text(&root), "user@example.com.evil.test");
        let doc = parse_strict("<a> in place </a>").unwrap();
        assert_eq!(text(&El::root(&doc).unwrap()), "in place");
        let doc = parse_strict("<a>x<![CDATA[<y>]]><b>z</b></a>").unwrap();
        assert_eq!(text(&El::root(&doc).unwrap()), "x<y>z");
    }

    #[test]
    fn comments_below_a_signed_element_are_found_outside_its_signature() {
        let doc = parse_strict(&format!(
            "<a><ds:Signature xmlns:ds=\"{DS}\"><!-- own signature --></ds:Signature><b>x</b></a>"
        ))
        .unwrap();
        assert!(!has_unsigned_comment(&El::root(&doc).unwrap()));
        for xml in [
            "<a><b>x<!---->y</b></a>",
            "<a><!-- c --><b/></a>",
            "<a><b><c><!----></c></b></a>",
        ] {
            let doc = parse_strict(xml).unwrap();
            assert!(has_unsigned_comment(&El::root(&doc).unwrap()), "{xml}");
        }
    }

    #[test]
    fn doctype_and_entities_refused() {
        assert_eq!(
            parse_strict("<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>").err(),
            Some(ParseError::Dtd)
        );
        assert_eq!(parse_strict("<a><b></a>").err(), Some(ParseError::Malformed));
    }

    #[test]
    fn attributes_are_read_by_exact_name_without_namespace() {
        let doc = parse_strict(
            "<a xmlns:s=\"urn:x\" s:Version=\"2.0\" s:Value=\"ok\" Value=\"real\"><b s:Version=\"2.0\"/></a>",
        )
        .unwrap();
        let root = El::root(&doc).unwrap();
        assert_eq!(attr(&root, "Version"), None);
        assert_eq!(attr(&root, "Value").as_deref(), Some("real"));
        assert_eq!(attr_ns(&root, "urn:x", "Value").as_deref(), Some("ok"));
        let b = root.elements().next().unwrap();
        assert_eq!(attr(&b, "Version"), None);
        let mut namespaced = Vec::new();
        let mut ids = Vec::new();
        walk_attributes::<()>(
            &root,
            |ns, name| {
                namespaced.push((ns.to_owned(), name.to_owned()));
                Ok(())
            },
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(
            namespaced,
            vec![
                ("urn:x".to_owned(), "Version".to_owned()),
                ("urn:x".to_owned(), "Value".to_owned()),
                ("urn:x".to_owned(), "Version".to_owned())
            ]
        );
        let doc = parse_strict(r#"<a ID="1"><b Id="x&amp;y"/><c id="3" s:id="4" xmlns:s="urn:s"/></a>"#).unwrap();
        walk_attributes::<()>(
            &El::root(&doc).unwrap(),
            |_, _| Ok(()),
            |v| {
                ids.push(v.to_owned());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(ids, ["1", "x&y", "3"]);
    }

    #[test]
    fn nul_bytes_and_trailing_content_refused() {
        assert_eq!(parse_strict("<a/>\0<b/>").err(), Some(ParseError::Malformed));
        assert_eq!(parse_strict("<a>x\0y</a>").err(), Some(ParseError::Malformed));
        assert_eq!(parse_strict("<a/><b/>").err(), Some(ParseError::Malformed));
        assert_eq!(parse_strict("<a/>trailing").err(), Some(ParseError::Malformed));
    }

    #[test]
    fn non_utf8_declarations_refused() {
        assert!(parse_strict("<?xml version=\"1.0\" encoding=\"UTF-8\"?><a/>").is_ok());
        assert!(parse_strict("<?xml version=\"1.0\"?><a/>").is_ok());
        assert_eq!(
            parse_strict("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>").err(),
            Some(ParseError::Malformed)
        );
    }

    #[test]
    fn navigation_finds_elements_by_namespace_in_document_order() {
        let doc = parse_strict(
            r#"<r xmlns:x="urn:x" xmlns:y="urn:y">text<x:a n="1"><x:a n="2"/><y:a n="3"/></x:a><!-- c --><x:b/><x:a n="4">t<x:c><x:a n="5"/></x:c></x:a></r>"#,
        )
        .unwrap();
        let root = El::root(&doc).unwrap();
        let ns = |nodes: Vec<El<'_>>| nodes.iter().map(|n| attr(n, "n").unwrap()).collect::<Vec<_>>();
        assert_eq!(ns(descendants(&root, "urn:x", "a")), ["1", "2", "4", "5"]);
        assert_eq!(count_descendants(&root, "urn:x", "a"), 4);
        assert_eq!(ns(children(&root, "urn:x", "a")), ["1", "4"]);
        assert_eq!(attr(&child(&root, "urn:x", "a").unwrap(), "n").as_deref(), Some("1"));
        assert!(child(&root, "urn:y", "a").is_none());
        let deep = descendants(&root, "urn:x", "a").remove(3);
        assert!(is(&deep, "urn:x", "a") && !is(&deep, "urn:y", "a") && !is(&deep, "urn:x", "c"));
        assert_eq!(deep.parent().map(|p| p.name().into_owned()).as_deref(), Some("c"));
        assert_eq!(
            (deep.prefix().as_deref(), deep.ns_href().as_ref()),
            (Some("x"), "urn:x")
        );
        // The same element the `libxml` crate hands out.
        let via_crate = doc.get_root_element().unwrap().get_last_element_child().unwrap();
        let via_crate = via_crate
            .get_last_element_child()
            .unwrap()
            .get_first_element_child()
            .unwrap();
        assert_eq!(via_crate.node_ptr(), deep.ptr());
        assert_eq!(count_descendants(&deep, "urn:x", "a"), 0);
    }

    #[test]
    fn escape_covers_markup() {
        assert_eq!(escape("a&<\"'>"), "a&amp;&lt;&quot;&#x27;&gt;");
    }
}
