//! Measuring: interleaved repetitions of a framework case and its raw equivalent, medians,
//! percentiles and ratios.

use std::future::Future;
use std::time::{Duration, Instant};

/// Latency samples of one side of a case.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples(Vec<Duration>);

impl Samples {
    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub(crate) fn mean(&self) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.iter().sum::<Duration>() / self.0.len() as u32
    }

    pub(crate) fn percentile(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        v[i]
    }
}

/// Runs `framework` and `raw` alternately, `warmup` times each unmeasured then `reps` times each
/// measured, so both see the same server state and machine noise.
pub(crate) async fn latency<F, R, FF, RF>(
    warmup: usize,
    reps: usize,
    mut framework: F,
    mut raw: R,
) -> (Samples, Samples)
where
    F: FnMut(usize) -> FF,
    R: FnMut(usize) -> RF,
    FF: Future<Output = ()>,
    RF: Future<Output = ()>,
{
    for i in 0..warmup {
        framework(i).await;
        raw(i).await;
    }
    let (mut f, mut r) = (Samples::default(), Samples::default());
    for i in 0..reps {
        let n = warmup + i;
        if i % 2 == 0 {
            let t = Instant::now();
            framework(n).await;
            f.push(t.elapsed());
            let t = Instant::now();
            raw(n).await;
            r.push(t.elapsed());
        } else {
            let t = Instant::now();
            raw(n).await;
            r.push(t.elapsed());
            let t = Instant::now();
            framework(n).await;
            f.push(t.elapsed());
        }
    }
    (f, r)
}

/// Runs a throughput case three times on each side, alternating which side goes first, and
/// returns the medians (framework, raw).
pub(crate) async fn median_of_three<F, R, FF, RF>(mut framework: F, mut raw: R) -> (f64, f64)
where
    F: FnMut() -> FF,
    R: FnMut() -> RF,
    FF: Future<Output = f64>,
    RF: Future<Output = f64>,
{
    let (mut f, mut r) = (Vec::new(), Vec::new());
    for round in 0..3 {
        if round % 2 == 0 {
            f.push(framework().await);
            r.push(raw().await);
        } else {
            r.push(raw().await);
            f.push(framework().await);
        }
    }
    f.sort_by(f64::total_cmp);
    r.sort_by(f64::total_cmp);
    (f[1], r[1])
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) case: String,
    pub(crate) metric: &'static str,
    pub(crate) framework: f64,
    pub(crate) raw: f64,
    /// For latencies a ratio above 1 is worse; for throughputs below 1.
    pub(crate) higher_is_better: bool,
    /// What the second column is, when it is not raw async-nats.
    pub(crate) raw_label: Option<&'static str>,
}

impl Row {
    pub(crate) fn latency(case: &str, what: &'static str, f: Duration, r: Duration) -> Self {
        Self {
            case: case.to_owned(),
            metric: what,
            framework: f.as_secs_f64() * 1e6,
            raw: r.as_secs_f64() * 1e6,
            higher_is_better: false,
            raw_label: None,
        }
    }

    pub(crate) fn throughput(case: &str, what: &'static str, f: f64, r: f64) -> Self {
        Self {
            case: case.to_owned(),
            metric: what,
            framework: f,
            raw: r,
            higher_is_better: true,
            raw_label: None,
        }
    }

    /// A row that is not a comparison with raw: two figures of our own.
    pub(crate) fn info(case: &str, what: &'static str, a: f64, b: f64) -> Self {
        Self {
            case: case.to_owned(),
            metric: what,
            framework: a,
            raw: b,
            higher_is_better: true,
            raw_label: Some("peak"),
        }
    }

    pub(crate) fn ratio(&self) -> f64 {
        if self.raw == 0.0 {
            return f64::NAN;
        }
        self.framework / self.raw
    }
}

fn human(v: f64) -> String {
    if v >= 100.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.1}", v)
    }
}

/// Prints the table as Markdown.
pub(crate) fn print_table(rows: &[Row]) {
    println!();
    println!("| case | metric | cim-nats | baseline | ratio |");
    println!("|---|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} ({}) | {:.2}{} |",
            r.case,
            r.metric,
            human(r.framework),
            human(r.raw),
            r.raw_label.unwrap_or("raw async-nats"),
            r.ratio(),
            if r.higher_is_better { "" } else { " (latency)" }
        );
    }
}

/// A field of /proc/self/status in KiB (0 where unavailable).
pub(crate) fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
