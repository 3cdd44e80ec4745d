//! Capturing the gateway's structured log lines in a test.
//!
//! `tracing` caches, per callsite and for the whole process, whether any
//! subscriber is interested in it, computed the first time the callsite
//! runs. While only one dispatcher is registered that is computed against
//! the default of whichever thread gets there first: a sibling test with no
//! subscriber would cache "never" for a line a capturing test is waiting
//! for, and the line would never be written, not even on the capturing
//! thread (tokio-rs/tracing#3611). An inert subscriber installed once as
//! the global default, interested in everything, keeps every callsite's
//! interest "always", so a capture sees each line its thread writes.

use serde_json::Value;
use std::sync::{Arc, Mutex, Once};

/// Installs the inert global subscriber (once per test process).
fn anchor() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only if one is installed already: interested too, then.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}

/// JSON log lines (INFO and above) written on this thread while the guard
/// lives: the tests run on a current-thread runtime, so the gateway's tasks
/// log here too.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Starts capturing on this thread.
    pub fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        anchor();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// Starts capturing on this thread every line of every level, TRACE
    /// included, each with the fields of the spans it is in: what an
    /// operator who turns logging all the way up would read.
    pub fn start_everything() -> (Self, tracing::subscriber::DefaultGuard) {
        anchor();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(
                tracing_subscriber::fmt::format::FmtSpan::NEW | tracing_subscriber::fmt::format::FmtSpan::CLOSE,
            )
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// The JSON log lines whose `reason` is `reason`.
    pub fn with_reason(&self, reason: &str) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["reason"] == reason)
            .collect()
    }

    /// Everything captured.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
