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

/// What one timed run of a throughput case did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    /// Events (or commands) handled.
    pub(crate) items: u64,
    /// How long it took, set-up excluded.
    pub(crate) elapsed: Duration,
}

impl Run {
    /// `items` handled since `started`.
    pub(crate) fn since(items: u64, started: Instant) -> Self {
        Self {
            items,
            elapsed: started.elapsed(),
        }
    }
}

/// The medians of a throughput case: items per second and the client's CPU time per item, each
/// as (framework, raw).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throughput {
    pub(crate) rate: (f64, f64),
    pub(crate) cpu_us: (f64, f64),
}

impl Throughput {
    /// The two rows of a case: its rate and the client's CPU per item.
    pub(crate) fn rows(&self, case: &str, unit: &'static str, cpu_unit: &'static str) -> [Row; 2] {
        [
            Row::throughput(case, unit, self.rate.0, self.rate.1),
            Row::lower(case, cpu_unit, self.cpu_us.0, self.cpu_us.1),
        ]
    }
}

/// CPU time this process has used (user + system, every thread, those ended included), from
/// the process CPU-time clock, to the nanosecond (`/proc/self/stat` counts in 10 ms ticks,
/// too coarse for a run of 20,000 events at ~10 µs each). Zero where unavailable.
#[allow(unsafe_code)]
fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Runs a throughput case three times on each side (the closures get the round, 0 to 2),
/// alternating which side goes first, and returns the medians of the rate and of the client's
/// CPU time per item. The CPU time includes the run's set-up.
pub(crate) async fn median_of_three<F, R, FF, RF>(mut framework: F, mut raw: R) -> Throughput
where
    F: FnMut(u64) -> FF,
    R: FnMut(u64) -> RF,
    FF: Future<Output = Run>,
    RF: Future<Output = Run>,
{
    async fn measured(run: impl Future<Output = Run>) -> (f64, f64) {
        let cpu = process_cpu();
        let run = run.await;
        let cpu = process_cpu().saturating_sub(cpu);
        let items = run.items.max(1) as f64;
        (
            items / run.elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / items,
        )
    }
    let (mut f, mut r) = (Vec::new(), Vec::new());
    for round in 0..3 {
        if round % 2 == 0 {
            f.push(measured(framework(round)).await);
            r.push(measured(raw(round)).await);
        } else {
            r.push(measured(raw(round)).await);
            f.push(measured(framework(round)).await);
        }
    }
    let median = |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(pick).collect();
        x.sort_by(f64::total_cmp);
        x[1]
    };
    Throughput {
        rate: (median(&f, |x| x.0), median(&r, |x| x.0)),
        cpu_us: (median(&f, |x| x.1), median(&r, |x| x.1)),
    }
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
        Self::lower(case, what, f.as_secs_f64() * 1e6, r.as_secs_f64() * 1e6)
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

    /// A figure where lower is better (a cost).
    pub(crate) fn lower(case: &str, what: &'static str, f: f64, r: f64) -> Self {
        Self {
            case: case.to_owned(),
            metric: what,
            framework: f,
            raw: r,
            higher_is_better: false,
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
            if r.higher_is_better {
                ""
            } else {
                " (lower is better)"
            }
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
