//! Measuring without growing: a fixed-size latency histogram, and resident memory read from
//! `/proc`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Width of one histogram bucket.
const BUCKET: Duration = Duration::from_micros(50);
/// Buckets; the last one holds everything slower (>= 1 s).
const BUCKETS: usize = 20_000;

/// Latencies counted in 50 µs buckets up to 1 s: fixed memory however long the run.
#[derive(Debug)]
pub(crate) struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    /// Counts one latency.
    pub(crate) fn record(&self, d: Duration) {
        let i = usize::try_from(d.as_micros() / BUCKET.as_micros())
            .unwrap_or(usize::MAX)
            .min(BUCKETS - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1).
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let wanted = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= wanted {
                return BUCKET * (i as u32 + 1);
            }
        }
        BUCKET * BUCKETS as u32
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Memory {
    /// `VmRSS`: resident now.
    pub(crate) rss: u64,
    /// `VmHWM`: the peak resident size so far.
    pub(crate) peak: u64,
}

impl Memory {
    /// This process.
    pub(crate) fn own() -> Self {
        Self::read("/proc/self/status")
    }

    /// Another process, if it is still there.
    pub(crate) fn of(pid: u32) -> Self {
        Self::read(&format!("/proc/{pid}/status"))
    }

    fn read(path: &str) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }
}

/// KiB as MiB with one decimal.
pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The process whose command line mentions `dir` (the test server runs with its configuration
/// file in its own directory), if there is one.
pub(crate) fn pid_using(dir: &Path) -> Option<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
}
