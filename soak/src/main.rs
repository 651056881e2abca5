//! `cargo xtask soak [--quick | --long]`: a load and soak run of cim-nats in a process of its
//! own, so that its memory figures are the framework's.
//!
//! 64 writers append to 64 aggregates (each mostly to its own; one append in eight goes to a
//! random one, whose version it reads first: when another writer appends in between, the
//! conflict is expected and counted) while
//! 8 subscribers follow the stream, for 60 s (`--quick`: 10 s, `--long`: 10 min,
//! `--seconds N`; `--subscribers N` for another number of subscribers, `--contention N` for
//! one append in N to a random aggregate, 0 for none). Then the writers stop, the subscribers must catch up with every event in
//! per-aggregate order, and a summary table is printed: appends, conflicts, other errors,
//! latency, subscriber lag, resident memory at the start and the end (`VmRSS`, `VmHWM`) of this
//! process and of the nats-server. Exits non-zero if there was any error besides the expected
//! conflicts, an event was missed or out of order, or memory kept growing.

mod measure;

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig, SubscriptionHandle};
use cim_nats::testing::NatsServer;
use cim_nats::{
    AggregateId, EventId, EventStore, ExpectedVersion, FnEventHandler, NewEvent, StoreErrorKind,
    StoredEvent,
};

use measure::{mib, Histogram, Memory};

const WRITERS: usize = 64;
const AGGREGATES: usize = 64;
const SUBSCRIBERS: usize = 8;
const DOMAIN: &str = "soak";
/// How long the subscribers may take to catch up once the writers stop.
const CATCH_UP: Duration = Duration::from_secs(120);

struct Options {
    duration: Duration,
    sample_every: Duration,
    subscribers: usize,
    /// One append in this many goes to a random aggregate (0: none).
    contention: usize,
}

fn options() -> Result<Options, String> {
    let mut duration = Duration::from_secs(60);
    let mut subscribers = SUBSCRIBERS;
    let mut contention = 8;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => duration = Duration::from_secs(10),
            "--long" => duration = Duration::from_secs(600),
            "--seconds" => {
                let n = args
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or("--seconds needs a number")?;
                duration = Duration::from_secs(n.max(1));
            }
            "--subscribers" => {
                subscribers = args
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or("--subscribers needs a number")?;
            }
            "--contention" => {
                contention = args
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or("--contention needs a number")?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: cim-nats-soak [--quick | --long | \
                     --seconds N] [--subscribers N] [--contention N]"
                ))
            }
        }
    }
    let sample_every = Duration::from_secs((duration.as_secs() / 12).clamp(1, 30));
    Ok(Options {
        duration,
        sample_every,
        subscribers,
        contention,
    })
}

/// A small xorshift64* generator, seeded per writer.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// What the writers did.
#[derive(Default)]
struct Writes {
    ok: AtomicU64,
    conflicts: AtomicU64,
    errors: AtomicU64,
    kinds: Mutex<BTreeMap<String, u64>>,
    latency: Histogram,
    conflict_latency: Histogram,
}

fn aggregate(a: usize) -> AggregateId {
    AggregateId::new(format!("item-{a:02}")).expect("valid id")
}

fn event(writer: usize, version: u64) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Counted".into(),
        schema_version: 1,
        entity_kind: "item".into(),
        routing_subject: format!("{DOMAIN}.item.counted").into(),
        payload: format!(
            "{{\"Counted\":{{\"writer\":{writer},\"version\":{version},\"note\":\"{}\"}}}}",
            "s".repeat(200)
        )
        .into_bytes()
        .into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

/// Appends until `until`: to its own aggregate (with the version of its last append), and one
/// append in `contention` to a random one (with the version just read).
async fn writer(
    w: usize,
    store: JetStreamEventStore,
    until: Instant,
    contention: usize,
    writes: Arc<Writes>,
) {
    let ids: Vec<AggregateId> = (0..AGGREGATES).map(aggregate).collect();
    let mut known = vec![0u64; AGGREGATES];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
    while Instant::now() < until {
        let a = if contention > 0 && rng.below(contention) == 0 {
            rng.below(AGGREGATES)
        } else {
            w % AGGREGATES
        };
        if a != w % AGGREGATES {
            // Another writer's aggregate: read its version first, as a command handler loading
            // it would; the owner may append in between, which is the expected conflict.
            match store.aggregate_version(&ids[a]).await {
                Ok(v) => known[a] = v.unwrap_or(0),
                Err(e) => {
                    writes.errors.fetch_add(1, Ordering::Relaxed);
                    let kind = format!("{:?}", e.kind());
                    *writes.kinds.lock().expect("lock").entry(kind).or_default() += 1;
                    continue;
                }
            }
        }
        let started = Instant::now();
        let result = store
            .append(
                &ids[a],
                ExpectedVersion::from_loaded(known[a]),
                vec![event(w, known[a] + 1)],
            )
            .await;
        match result {
            Ok(r) => {
                writes.latency.record(started.elapsed());
                writes.ok.fetch_add(1, Ordering::Relaxed);
                known[a] = r.version;
            }
            Err(e) => match e.kind() {
                StoreErrorKind::WrongExpectedVersion { actual, .. } => {
                    writes.conflict_latency.record(started.elapsed());
                    writes.conflicts.fetch_add(1, Ordering::Relaxed);
                    known[a] = actual.unwrap_or(0);
                }
                other => {
                    writes.errors.fetch_add(1, Ordering::Relaxed);
                    let kind = format!("{other:?}");
                    *writes.kinds.lock().expect("lock").entry(kind).or_default() += 1;
                }
            },
        }
    }
}

/// What one subscriber saw: per aggregate the last version handled (64 entries: fixed
/// memory), deliveries, repeats and order violations.
#[derive(Default)]
struct Seen {
    last: Mutex<HashMap<String, u64>>,
    deliveries: AtomicU64,
    repeats: AtomicU64,
    out_of_order: AtomicU64,
}

impl Seen {
    fn record(&self, event: &StoredEvent) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().expect("lock");
        let v = last
            .entry(event.aggregate_id.as_str().to_owned())
            .or_default();
        if event.aggregate_version <= *v {
            self.repeats.fetch_add(1, Ordering::Relaxed);
        } else if event.aggregate_version == *v + 1 {
            *v = event.aggregate_version;
        } else {
            self.out_of_order.fetch_add(1, Ordering::Relaxed);
            *v = event.aggregate_version;
        }
    }

    /// Distinct events handled in order (the sum of the aggregates' last versions).
    fn handled(&self) -> u64 {
        self.last.lock().expect("lock").values().sum()
    }
}

async fn subscribe(url: &str, seen: Arc<Seen>) -> Result<SubscriptionHandle, String> {
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    EventSubscriberBuilder::new()
        .client(client)
        .subject(format!("{DOMAIN}.>"))
        .handler(FnEventHandler::new(move |event: StoredEvent| {
            seen.record(&event);
            Ok(())
        }))
        .deliver_policy(DeliverPolicy::All)
        .without_dead_letter()
        .build()
        .map_err(|e| e.to_string())?
        .subscribe()
        .await
        .map_err(|e| e.to_string())
}

/// One line of the progress log.
struct Sample {
    at: Duration,
    appends: u64,
    slowest_subscriber: u64,
    own: Memory,
    server: Memory,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<bool, String> {
    let options = options()?;
    let server = NatsServer::start().map_err(|e| e.to_string())?;
    let server_pid = measure::pid_using(server.dir());
    let url = server.url();
    println!(
        "soak: {} s, {WRITERS} writers on {AGGREGATES} aggregates ({}), {} subscribers, \
         nats-server {} on {url}",
        options.duration.as_secs(),
        match options.contention {
            0 => "each on its own".to_owned(),
            n => format!("1 append in {n} to a random one"),
        },
        options.subscribers,
        server.binary().version
    );
    let client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain(DOMAIN))
        .await
        .map_err(|e| e.to_string())?;
    let seen: Vec<Arc<Seen>> = (0..options.subscribers).map(|_| Arc::default()).collect();
    let mut subscriptions = Vec::with_capacity(options.subscribers);
    for s in &seen {
        subscriptions.push(subscribe(&url, Arc::clone(s)).await?);
    }
    let server_memory = || server_pid.map(Memory::of).unwrap_or_default();
    let start_own = Memory::own();
    let start_server = server_memory();

    let writes = Arc::new(Writes::default());
    let started = Instant::now();
    let until = started + options.duration;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                w,
                store.clone(),
                until,
                options.contention,
                Arc::clone(&writes),
            ))
        })
        .collect();
    let slowest = |seen: &[Arc<Seen>]| seen.iter().map(|s| s.handled()).min().unwrap_or(u64::MAX);

    println!("\n| t | appends | appends/s | slowest subscriber | client RSS | server RSS |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_appends = 0;
    let mut next = started + options.sample_every;
    while next <= until {
        tokio::time::sleep_until(next.into()).await;
        let appends = writes.ok.load(Ordering::Relaxed);
        let sample = Sample {
            at: started.elapsed(),
            appends,
            slowest_subscriber: slowest(&seen),
            own: Memory::own(),
            server: server_memory(),
        };
        println!(
            "| {:.0} s | {} | {:.0} | {} | {} | {} |",
            sample.at.as_secs_f64(),
            sample.appends,
            (appends - last_appends) as f64 / options.sample_every.as_secs_f64(),
            if seen.is_empty() {
                "-".to_owned()
            } else {
                sample.slowest_subscriber.to_string()
            },
            mib(sample.own.rss),
            mib(sample.server.rss),
        );
        last_appends = appends;
        samples.push(sample);
        next += options.sample_every;
    }
    for w in writers {
        w.await.map_err(|e| format!("writer: {e}"))?;
    }
    let wrote_for = started.elapsed();
    let stored = store.last_sequence().await.map_err(|e| e.to_string())?.0;
    let ok = writes.ok.load(Ordering::Relaxed);

    // The subscribers catch up with every event.
    let stopped = Instant::now();
    while slowest(&seen) < stored && stopped.elapsed() < CATCH_UP {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = slowest(&seen) >= stored;
    let catch_up = stopped.elapsed();
    let end_own = Memory::own();
    let end_server = server_memory();
    // What reading one aggregate costs now (the store reads the aggregate when it checks
    // whether a conflicting append is a retry of stored events).
    let read_started = Instant::now();
    let one = store
        .read_aggregate(&aggregate(0), 0)
        .await
        .map_err(|e| e.to_string())?;
    let read_took = read_started.elapsed();
    for s in subscriptions {
        s.shutdown().await.map_err(|e| e.to_string())?;
    }

    let conflicts = writes.conflicts.load(Ordering::Relaxed);
    let errors = writes.errors.load(Ordering::Relaxed);
    let deliveries: u64 = seen
        .iter()
        .map(|s| s.deliveries.load(Ordering::Relaxed))
        .sum();
    let repeats: u64 = seen.iter().map(|s| s.repeats.load(Ordering::Relaxed)).sum();
    let out_of_order: u64 = seen
        .iter()
        .map(|s| s.out_of_order.load(Ordering::Relaxed))
        .sum();
    // Memory after the warm-up (a quarter of the run) against the end.
    let warm = samples
        .iter()
        .find(|s| s.at >= options.duration / 4)
        .map_or(start_own, |s| s.own);
    let growth = end_own.rss.saturating_sub(warm.rss);
    let flat = end_own.rss <= warm.rss + warm.rss / 4 + 8 * 1024;
    let leaking = end_own.rss > 2 * warm.rss + 32 * 1024;

    println!("\n| figure | value |");
    println!("|---|---|");
    println!(
        "| load | {WRITERS} writers on {AGGREGATES} aggregates, {} subscribers, {:.1} s |",
        options.subscribers,
        wrote_for.as_secs_f64()
    );
    println!(
        "| appends acknowledged | {ok} ({:.0}/s) |",
        ok as f64 / wrote_for.as_secs_f64()
    );
    println!(
        "| append latency p50 / p99 / p99.9 | {:.2} / {:.2} / {:.2} ms |",
        writes.latency.quantile(0.5).as_secs_f64() * 1e3,
        writes.latency.quantile(0.99).as_secs_f64() * 1e3,
        writes.latency.quantile(0.999).as_secs_f64() * 1e3
    );
    println!(
        "| version conflicts (expected), answered in p50 / p99 | {conflicts}, {:.2} / {:.2} ms |",
        writes.conflict_latency.quantile(0.5).as_secs_f64() * 1e3,
        writes.conflict_latency.quantile(0.99).as_secs_f64() * 1e3
    );
    println!(
        "| other errors | {errors} {:?} |",
        writes.kinds.lock().expect("lock")
    );
    println!("| events in the stream | {stored} |");
    println!(
        "| reading one aggregate at the end | {} events in {:.1} ms |",
        one.len(),
        read_took.as_secs_f64() * 1e3
    );
    println!(
        "| subscriber deliveries | {deliveries} ({} x {stored} + {repeats} repeats), \
         {out_of_order} out of aggregate order |",
        options.subscribers
    );
    println!(
        "| subscribers caught up after the writers stopped | {} |",
        if caught_up {
            format!("{} ms", catch_up.as_millis())
        } else {
            format!(
                "no: slowest at {} of {stored} after {} s",
                slowest(&seen),
                CATCH_UP.as_secs()
            )
        }
    );
    println!(
        "| client RSS start / after warm-up / end | {} / {} / {} ({}) |",
        mib(start_own.rss),
        mib(warm.rss),
        mib(end_own.rss),
        if flat {
            format!("flat: +{} after warm-up", mib(growth))
        } else {
            format!("GREW by {} after warm-up", mib(growth))
        }
    );
    println!(
        "| client peak RSS (VmHWM) start / end | {} / {} |",
        mib(start_own.peak),
        mib(end_own.peak)
    );
    println!(
        "| nats-server RSS start / end (peak) | {} / {} ({}) |",
        mib(start_server.rss),
        mib(end_server.rss),
        mib(end_server.peak)
    );

    let mut good = true;
    let mut fail = |why: String| {
        eprintln!("soak: FAILED: {why}");
        good = false;
    };
    if errors > 0 {
        fail(format!("{errors} errors besides version conflicts"));
    }
    if stored != ok {
        fail(format!(
            "the stream holds {stored} events for {ok} acknowledged appends"
        ));
    }
    if !caught_up {
        fail("the subscribers did not catch up".to_owned());
    }
    if out_of_order > 0 {
        fail(format!("{out_of_order} deliveries out of aggregate order"));
    }
    if leaking {
        fail(format!("client memory kept growing: +{}", mib(growth)));
    }
    Ok(good)
}
