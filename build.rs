//! Build script: bindgen'd bindings for the few xmlsec functions and types
//! the SAML connector calls itself (`src/upstream/saml/dsig.rs`).
//!
//! samael links xmlsec but keeps its own bindings private, and the ACS needs
//! a signature context whose key it sets (a key loaded once per connector,
//! not per call). The layouts come from the installed headers, compiled with
//! the flags `xmlsec1-config` reports (they change struct layouts, e.g.
//! `XMLSEC_NO_SIZE_T`), exactly as samael's own build script does: nothing
//! here is a hand-written struct layout.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn xmlsec1_config(arg: &str) -> Vec<String> {
    let out = Command::new("xmlsec1-config")
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("xmlsec1-config {arg} failed ({e}): install libxmlsec1-dev (scripts/setup-system)"));
    String::from_utf8(out.stdout)
        .unwrap_or_else(|_| panic!("xmlsec1-config {arg} printed non-UTF-8"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(xmlsec_dynamic)");
    let cflags = xmlsec1_config("--cflags");
    // With dynamic crypto loading the crypto-specific functions are reached
    // through xmlsec's `xmlSecCrypto*` dispatchers; otherwise the OpenSSL
    // back end is linked and called by name.
    let dynamic = cflags.iter().any(|f| f == "-DXMLSEC_CRYPTO_DYNAMIC_LOADING=1");
    let header = if dynamic {
        println!("cargo:rustc-cfg=xmlsec_dynamic");
        "#include <xmlsec/xmlsec.h>\n#include <xmlsec/app.h>\n#include <xmlsec/keys.h>\n#include <xmlsec/xmldsig.h>\n"
    } else {
        println!("cargo:rustc-link-lib=xmlsec1-openssl");
        "#include <xmlsec/xmlsec.h>\n#include <xmlsec/keys.h>\n#include <xmlsec/xmldsig.h>\n#include <xmlsec/openssl/app.h>\n"
    };
    println!("cargo:rustc-link-lib=xmlsec1");
    println!("cargo:rustc-link-lib=xml2");
    let bindings = bindgen::Builder::default()
        .header_contents("portcullis_xmlsec.h", header)
        .clang_args(&cflags)
        .allowlist_function("xmlSecDSigCtx(Create|Destroy|Verify)")
        .allowlist_function("xmlSecDSigReferenceCtxGetPreDigestBuffer")
        .allowlist_function("xmlSecPtrList(GetSize|GetItem)")
        .allowlist_function("xmlSecBuffer(GetData|GetSize)")
        .allowlist_function("xmlSecKey(Duplicate|Destroy|GetType)")
        .allowlist_function("xmlSecKeysMngr(Create|Destroy)")
        .allowlist_function("xmlSec(OpenSSL|Crypto)AppKeyLoadMemory")
        .allowlist_type("xmlSec(Key|DSigCtx|DSigReferenceCtx|PtrList|KeysMngr|KeyInfoCtx)")
        .allowlist_type("xmlSecDSigStatus")
        .allowlist_type("xmlSecKeyDataFormat")
        .allowlist_var("XMLSEC_DSIG_FLAGS_(STORE_SIGNEDINFO_REFERENCES|USE_VISA3D_HACK)")
        .allowlist_var("xmlSecTransformUriTypeSameDocument")
        .allowlist_var("xmlSecKeyDataType(Unknown|Public|Private)")
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen could not generate the xmlsec bindings: {e}"));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| panic!("cargo sets OUT_DIR")));
    bindings
        .write_to_file(out.join("xmlsec_bindings.rs"))
        .unwrap_or_else(|e| panic!("could not write the xmlsec bindings: {e}"));
}
