//! Strict XML parsing and namespace-aware navigation over libxml2 (the
//! same parser xmlsec verifies with, so what we read is what was verified).

use libxml::parser::{Parser, ParserOptions};
use libxml::tree::{Document, Node};

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

/// Serializes the element `node` of `doc` as a document of its own, with
/// every namespace declaration in scope at `node` declared on it.
///
/// This is how a signed Assertion is handed to xmlsec: samael, when the
/// signed element is not the document root, makes it the root with
/// `xmlDocSetRootElement` and never frees the old root that call detaches
/// (nor the array `xmlGetNsList` returns), about 2-3 KB per sign-in that is
/// never returned (docs/PERFORMANCE.md, "Memory"). Declaring the in-scope
/// namespaces on the element keeps its canonical form unchanged: inclusive
/// C14N renders all of them on the apex anyway, exclusive C14N only those
/// the subtree uses or its InclusiveNamespaces list names, which are in
/// scope either way (prefixes used only inside attribute values, such as
/// `xs` in `xsi:type="xs:string"`, need exactly this). The ancestors' `xml:`
/// attributes are not carried over: a signature that depended on them fails.
///
/// `node` gains those declarations. They repeat what is already in scope
/// there, so every name in `doc` resolves as before and the caller may keep
/// reading `doc` afterwards (no second parse is needed for this).
pub(crate) fn standalone(doc: &Document, node: &Node) -> Result<String, ParseError> {
    let mut seen: std::collections::HashSet<String> = node
        .get_namespace_declarations()
        .iter()
        .map(|ns| ns.get_prefix())
        .collect();
    let mut missing = Vec::new();
    let mut ancestor = node.get_parent();
    while let Some(a) = ancestor {
        for ns in a.get_namespace_declarations() {
            let prefix = ns.get_prefix();
            // The nearest declaration of a prefix is the one in scope; an
            // empty href is `xmlns=""`, which un-declares the default.
            if seen.insert(prefix.clone()) && !ns.get_href().is_empty() {
                missing.push((prefix, ns.get_href()));
            }
        }
        ancestor = a.get_parent();
    }
    for (prefix, href) in missing {
        let href = std::ffi::CString::new(href).map_err(|_| ParseError::Malformed)?;
        let prefix_c = std::ffi::CString::new(prefix.as_str()).map_err(|_| ParseError::Malformed)?;
        // The default namespace is declared with a null prefix.
        let prefix_ptr = if prefix.is_empty() {
            std::ptr::null()
        } else {
            prefix_c.as_ptr().cast()
        };
        // SAFETY: `node` is an element of `doc`, alive for this call; this
        // thread owns the document (`Node` is `!Send`) and no Rust reference
        // into its namespace list is held across the call. `xmlNewNs` copies
        // both strings and links the declaration into the node, which frees
        // it with the document. The `libxml` crate's safe wrapper refuses
        // while other `Node` handles exist, which is a borrow rule of its
        // own, not a libxml2 one.
        let ns = unsafe { libxml::bindings::xmlNewNs(node.node_ptr(), href.as_ptr().cast(), prefix_ptr) };
        if ns.is_null() {
            return Err(ParseError::Malformed);
        }
    }
    Ok(doc.node_to_string(node))
}

/// Whether a comment sits anywhere under the element `node`, outside its
/// own (direct child) `ds:Signature`.
///
/// A same-document Reference (`URI="#id"`, the only kind we accept) never
/// covers comments, whatever the canonicalization (XML Signature 1.1,
/// §4.4.3.3), so a comment inside a signed element was not signed: it is
/// how `admin@corp.test<!---->.evil.test` gets past a signature over
/// `admin@corp.test.evil.test`. What we read after verification is the
/// signed canonical form, where the comment is gone, but a document someone
/// changed after signing is refused all the same.
pub(crate) fn has_unsigned_comment(node: &Node) -> bool {
    let mut stack: Vec<libxml::bindings::xmlNodePtr> = node
        .get_child_nodes()
        .into_iter()
        .filter(|c| !is(c, DS, "Signature"))
        .map(|c| c.node_ptr())
        .collect();
    while let Some(p) = stack.pop() {
        // SAFETY: `p` is a node of `node`'s document, which outlives this
        // call and is only read here, by the one thread that owns it.
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

/// Whether `node` is the element `{ns}local`.
pub(crate) fn is(node: &Node, ns: &str, local: &str) -> bool {
    node.is_element_node() && node.get_name() == local && node.get_namespace().is_some_and(|n| n.get_href() == ns)
}

/// The child elements `{ns}local` of `node`.
pub(crate) fn children(node: &Node, ns: &str, local: &str) -> Vec<Node> {
    node.get_child_elements()
        .into_iter()
        .filter(|c| is(c, ns, local))
        .collect()
}

/// The first child element `{ns}local` of `node`.
pub(crate) fn child(node: &Node, ns: &str, local: &str) -> Option<Node> {
    node.get_child_elements().into_iter().find(|c| is(c, ns, local))
}

/// Every descendant element `{ns}local` of `node` (not `node` itself), in document order.
pub(crate) fn descendants(node: &Node, ns: &str, local: &str) -> Vec<Node> {
    let mut out = Vec::new();
    let mut stack: Vec<Node> = node.get_child_elements().into_iter().rev().collect();
    while let Some(n) = stack.pop() {
        if is(&n, ns, local) {
            out.push(n.clone());
        }
        stack.extend(n.get_child_elements().into_iter().rev());
    }
    out
}

/// Every element of the tree under (and including) `node`.
pub(crate) fn all_elements(node: &Node) -> Vec<Node> {
    let mut out = Vec::new();
    let mut stack = vec![node.clone()];
    while let Some(n) = stack.pop() {
        stack.extend(n.get_child_elements().into_iter().rev());
        out.push(n);
    }
    out
}

/// The full text content of an element, trimmed.
///
/// libxml2 concatenates every text and CDATA descendant and skips comments,
/// so `a@b.com<!---->.evil` reads as `a@b.com.evil`: a comment can never
/// shorten a value to a prefix an attacker chose.
pub(crate) fn text(node: &Node) -> String {
    node.get_content().trim().to_owned()
}

/// The attribute `name` of `node` that has no namespace, read by exact name.
///
/// libxml2's `xmlGetProp` (the `libxml` crate's `get_attribute`) matches on
/// the local name whatever the namespace, so a look-alike `saml:Version` or
/// `samlp:Value` would be taken for the real `Version` or `Value`. SAML's own
/// attributes are never namespaced: `xmlGetNoNsProp` finds exactly those.
pub(crate) fn attr(node: &Node, name: &str) -> Option<String> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `node` points into a document that outlives this call;
    // `xmlGetNoNsProp` only reads it and returns a fresh copy (or null).
    let value = unsafe { libxml::bindings::xmlGetNoNsProp(node.node_ptr(), name.as_ptr().cast()) };
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

/// The namespaced attributes of `node`, as `(namespace, local name)`.
/// (Attributes without a namespace and `xmlns` declarations are left out.)
pub(crate) fn namespaced_attributes(node: &Node) -> Vec<(String, String)> {
    let text = |p: *const u8| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: libxml2 names and hrefs are NUL-terminated and live as long as the document.
            unsafe { std::ffi::CStr::from_ptr(p.cast()) }
                .to_string_lossy()
                .into_owned()
        }
    };
    let mut out = Vec::new();
    // SAFETY: `node` is an element of a live document; its attribute list is
    // only read, while no one else holds the document (`Node` is `!Send`).
    let mut attr = unsafe { (*node.node_ptr()).properties };
    while !attr.is_null() {
        // SAFETY: `attr` is a non-null member of that list.
        let (name, ns, next) = unsafe { ((*attr).name, (*attr).ns, (*attr).next) };
        if !ns.is_null() {
            // SAFETY: a non-null `ns` points at a namespace of the same document.
            out.push((text(unsafe { (*ns).href }), text(name)));
        }
        attr = next;
    }
    out
}

/// The attribute `{ns}name` of `node` (a namespaced attribute such as `xsi:type`).
pub(crate) fn attr_ns(node: &Node, ns: &str, name: &str) -> Option<String> {
    node.get_attribute_ns(name, ns)
}

pub(crate) use crate::markup::escape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_does_not_truncate_text() {
        let doc = parse_strict("<a>user@example.com<!-- x -->.evil.test</a>").unwrap();
        let root = doc.get_root_element().unwrap();
        assert_eq!(text(&root), "user@example.com.evil.test");
    }

    #[test]
    fn comments_below_a_signed_element_are_found_outside_its_signature() {
        let doc = parse_strict(&format!(
            "<a><ds:Signature xmlns:ds=\"{DS}\"><!-- own signature --></ds:Signature><b>x</b></a>"
        ))
        .unwrap();
        assert!(!has_unsigned_comment(&doc.get_root_element().unwrap()));
        for xml in [
            "<a><b>x<!---->y</b></a>",
            "<a><!-- c --><b/></a>",
            "<a><b><c><!----></c></b></a>",
        ] {
            let doc = parse_strict(xml).unwrap();
            assert!(has_unsigned_comment(&doc.get_root_element().unwrap()), "{xml}");
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
        let root = doc.get_root_element().unwrap();
        assert_eq!(attr(&root, "Version"), None);
        assert_eq!(attr(&root, "Value").as_deref(), Some("real"));
        assert_eq!(attr_ns(&root, "urn:x", "Value").as_deref(), Some("ok"));
        let b = root.get_child_elements().into_iter().next().unwrap();
        assert_eq!(attr(&b, "Version"), None);
        assert_eq!(
            namespaced_attributes(&root),
            vec![
                ("urn:x".to_owned(), "Version".to_owned()),
                ("urn:x".to_owned(), "Value".to_owned())
            ]
        );
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
    fn standalone_carries_the_namespaces_in_scope() {
        let xml = r#"<r:R xmlns:r="urn:r" xmlns:a="urn:far" xmlns:xs="urn:xs" xmlns="urn:default"><m xmlns:a="urn:near"><a:A xmlns:own="urn:own"><v type="xs:string">x</v></a:A></m></r:R>"#;
        let doc = parse_strict(xml).unwrap();
        let el = descendants(&doc.get_root_element().unwrap(), "urn:near", "A").remove(0);
        let alone = standalone(&doc, &el).unwrap();
        let reparsed = parse_strict(&alone).unwrap();
        let root = reparsed.get_root_element().unwrap();
        assert!(is(&root, "urn:near", "A"), "{alone}");
        let mut declared: Vec<(String, String)> = root
            .get_namespace_declarations()
            .iter()
            .map(|ns| (ns.get_prefix(), ns.get_href()))
            .collect();
        declared.sort();
        // The nearest `a` wins; `xs`, used only inside an attribute value, is kept.
        let want = [
            ("", "urn:default"),
            ("a", "urn:near"),
            ("own", "urn:own"),
            ("r", "urn:r"),
            ("xs", "urn:xs"),
        ];
        assert_eq!(
            declared,
            want.iter()
                .map(|(p, h)| (p.to_string(), h.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(is(&root.get_child_elements().remove(0), "urn:default", "v"), "{alone}");
    }

    #[test]
    fn standalone_keeps_an_undeclared_default_undeclared() {
        let xml = r#"<R xmlns="urn:default"><A xmlns=""><v/></A></R>"#;
        let doc = parse_strict(xml).unwrap();
        let el = doc.get_root_element().unwrap().get_child_elements().remove(0);
        let alone = standalone(&doc, &el).unwrap();
        let reparsed = parse_strict(&alone).unwrap();
        let root = reparsed.get_root_element().unwrap();
        assert!(root.get_namespace().is_none(), "{alone}");
        assert!(root.get_child_elements().remove(0).get_namespace().is_none(), "{alone}");
    }

    #[test]
    fn escape_covers_markup() {
        assert_eq!(escape("a&<\"'>"), "a&amp;&lt;&quot;&#x27;&gt;");
    }
}
