//! The `portcullis` binary: parse the command line and run it.

use clap::Parser;

/// With the `mimalloc` feature, the allocations of the whole process go to
/// mimalloc instead of glibc's malloc: Rust's through this global
/// allocator, and the C libraries' (libxml2, xmlsec, OpenSSL) through the
/// `malloc`, `free` and kin that mimalloc's `override` defines in the
/// executable, which the shared libraries bind to.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    portcullis::telemetry::init();
    portcullis::tls::install_default_provider();
    let cli = portcullis::cli::Cli::parse();
    let code = portcullis::cli::run(cli).await;
    portcullis::telemetry::shutdown();
    std::process::exit(code?);
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use std::ffi::{c_char, c_void};

    extern "C" {
        /// libxml2's string copy: its memory comes from `xmlMalloc`, by
        /// default the `malloc` the shared library was bound to.
        fn xmlStrdup(cur: *const c_char) -> *mut c_char;
        /// glibc's `strdup`, inside libc.so.
        fn strdup(s: *const c_char) -> *mut c_char;
        fn free(p: *mut c_void);
        /// Whether `p` lies in memory mimalloc manages.
        fn mi_is_in_heap_region(p: *const c_void) -> bool;
    }

    #[test]
    fn the_c_libraries_allocate_with_mimalloc() {
        // SAFETY: both copy a NUL-terminated literal and answer memory
        // this test frees once, with the `free` of the allocator that
        // gave it (the process has one).
        unsafe {
            let xml = xmlStrdup(c"saml".as_ptr());
            let libc = strdup(c"saml".as_ptr());
            assert!(!xml.is_null() && !libc.is_null());
            assert!(mi_is_in_heap_region(xml.cast()), "libxml2 allocated outside mimalloc");
            assert!(mi_is_in_heap_region(libc.cast()), "libc allocated outside mimalloc");
            free(xml.cast());
            free(libc.cast());
        }
    }
}
