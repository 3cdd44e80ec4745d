//! What the machine was like when a run was made: a yardstick measured
//! before the first scenario and after the last, on the gateway's CPUs.
//!
//! On a shared VM the same build's CPU per operation moves by up to half
//! between sittings (`docs/performance-log.md`, twenty-ninth pass): how much
//! of the shared last-level cache the neighbours leave changes, and so
//! what a load that misses the second level costs, and the vCPU's own
//! compute speed moves too. So the yardstick has both: one P-256 signature
//! (compute in the first level, what `openssl speed` sees) and the latency
//! of dependent loads over buffers from a quarter of a megabyte to 32 MiB
//! (a pointer chase through one random cycle over their cache lines: no
//! prefetcher can guess the next line). Two runs compare only when their
//! yardsticks agree (needed, not enough: the same build still differed by
//! a fifth between runs with agreeing yardsticks).

use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use rand::Rng;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The buffer sizes the pointer chase runs over, KiB: within the second
/// level, around its size, and past what this kind of VM keeps of the
/// third.
pub const CHASE_KIB: [usize; 6] = [256, 1024, 2048, 4096, 8192, 32768];

/// Dependent loads per buffer (about 0.2 s at DRAM's latency).
const LOADS: usize = 1_000_000;

/// One cache line, in `u32` slots.
const LINE: usize = 16;

/// The yardstick.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Yardstick {
    /// The CPUs it ran on (the gateway's; empty: not pinned).
    pub cpus: Vec<usize>,
    /// One ECDSA P-256 signature over a SHA-256 digest, microseconds.
    pub p256_sign_us: f64,
    /// `[buffer KiB, nanoseconds per dependent load]`.
    pub memory_latency_ns: Vec<(usize, f64)>,
}

impl Yardstick {
    /// One line for the terminal.
    pub fn line(&self, when: &str) -> String {
        let on = if self.cpus.is_empty() {
            String::new()
        } else {
            format!(
                " on CPU {}",
                self.cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
            )
        };
        let chase: Vec<String> = self
            .memory_latency_ns
            .iter()
            .map(|(kib, ns)| format!("{} {ns:.1}", size(*kib)))
            .collect();
        format!(
            "machine {when}{on}: P-256 signature {:.1} µs; memory latency {} ns",
            self.p256_sign_us,
            chase.join(", ")
        )
    }
}

fn size(kib: usize) -> String {
    if kib >= 1024 && kib.is_multiple_of(1024) {
        format!("{} MiB", kib / 1024)
    } else {
        format!("{kib} KiB")
    }
}

/// Measures the yardstick on a thread of its own pinned to `cpus` (none:
/// wherever the generator runs), over the buffers `kib` with `loads`
/// dependent loads each.
pub fn measure_on(cpus: &[usize], kib: &[usize], loads: usize) -> Result<Yardstick, String> {
    let cpus = cpus.to_vec();
    let kib = kib.to_vec();
    std::thread::spawn(move || {
        crate::pin(&cpus)?;
        let p256_sign_us = p256_sign_us(Duration::from_millis(100))?;
        let memory_latency_ns = kib.iter().map(|&k| (k, chase_ns(k * 1024, loads))).collect();
        Ok(Yardstick {
            cpus,
            p256_sign_us,
            memory_latency_ns,
        })
    })
    .join()
    .map_err(|_| "the yardstick's thread panicked".to_owned())?
}

/// [`measure_on`] over [`CHASE_KIB`].
pub fn measure(cpus: &[usize]) -> Result<Yardstick, String> {
    measure_on(cpus, &CHASE_KIB, LOADS)
}

/// Microseconds per P-256 signature, signing for about `budget`.
fn p256_sign_us(budget: Duration) -> Result<f64, String> {
    let e = |e: openssl::error::ErrorStack| format!("P-256: {e}");
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(e)?;
    let key = EcKey::generate(&group).map_err(e)?;
    let digest = openssl::sha::sha256(b"portcullis-load yardstick");
    // Warm: the first signature pays for the tables.
    EcdsaSig::sign(&digest, &key).map_err(e)?;
    let t = Instant::now();
    let mut n = 0u32;
    while n < 10 || t.elapsed() < budget {
        std::hint::black_box(EcdsaSig::sign(&digest, &key).map_err(e)?);
        n += 1;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

/// One random cycle through the `lines` cache lines of a buffer: slot
/// `LINE * i` holds the slot of the line after line `i` (Sattolo's
/// shuffle: a single cycle, so a chase visits every line before it
/// repeats).
fn cycle(lines: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..lines as u32).collect();
    let mut rng = rand::rng();
    for i in (1..lines).rev() {
        let j = rng.random_range(0..i);
        order.swap(i, j);
    }
    let mut buf = vec![0u32; lines * LINE];
    for (i, &line) in order.iter().enumerate() {
        let next = order[(i + 1) % lines];
        buf[line as usize * LINE] = next * LINE as u32;
    }
    buf
}

/// Nanoseconds per dependent load over a buffer of `bytes`.
fn chase_ns(bytes: usize, loads: usize) -> f64 {
    let lines = (bytes / (LINE * 4)).max(2);
    let buf = cycle(lines);
    let mut at = 0usize;
    // Once round the cycle first: the buffer in whatever cache it fits.
    for _ in 0..lines {
        at = buf[at] as usize;
    }
    let t = Instant::now();
    for _ in 0..loads {
        at = buf[at] as usize;
    }
    let elapsed = t.elapsed();
    std::hint::black_box(at);
    elapsed.as_secs_f64() * 1e9 / loads.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chase_is_one_cycle_over_every_line() {
        for lines in [2, 3, 17, 1000] {
            let buf = cycle(lines);
            let mut seen = vec![false; lines];
            let mut at = 0usize;
            for _ in 0..lines {
                assert_eq!(at % LINE, 0, "every step lands on a line's first slot");
                assert!(!seen[at / LINE], "line {} visited twice in {lines}", at / LINE);
                seen[at / LINE] = true;
                at = buf[at] as usize;
            }
            assert_eq!(at, 0, "back at the start after {lines} steps");
            assert!(seen.iter().all(|&s| s));
        }
    }

    #[test]
    fn the_yardstick_measures_a_signature_and_each_buffer() {
        let y = measure_on(&[], &[16, 64], 10_000).unwrap();
        assert!(y.cpus.is_empty());
        assert!(y.p256_sign_us > 0.0 && y.p256_sign_us.is_finite(), "{y:?}");
        assert_eq!(
            y.memory_latency_ns.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![16, 64]
        );
        assert!(
            y.memory_latency_ns.iter().all(|m| m.1 > 0.0 && m.1.is_finite()),
            "{y:?}"
        );
        let line = y.line("before");
        assert!(line.starts_with("machine before: P-256 signature "), "{line}");
        assert!(line.contains("memory latency 16 KiB "), "{line}");
    }

    #[test]
    fn sizes_read_in_the_largest_whole_unit() {
        assert_eq!(size(256), "256 KiB");
        assert_eq!(size(1024), "1 MiB");
        assert_eq!(size(32768), "32 MiB");
        assert_eq!(size(1536), "1536 KiB");
    }
}
