//! Decisions over two aggregates: `Repository::execute_across` (one atomic batch, one check per
//! aggregate) against two single-aggregate commands and against raw async-nats sending the
//! same batch; 1,000 aggregates, 32 tasks, each task moving amounts between pairs of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use cim_nats::{headers as h, Aggregate, AggregateId, EventId, Repository};

use crate::harness::{Row, Samples};
use crate::sample::Ledger;

const TASKS: usize = 32;
const AGGREGATES: usize = 1000;

/// A ledger entry's JSON, for the raw side.
fn payload(amount: i64) -> Bytes {
    let events = Ledger::default().handle(amount).expect("a ledger entry");
    Bytes::from(serde_json::to_vec(&events[0]).expect("json"))
}

/// The store's headers on one ledger entry, with its aggregate's check.
fn headers(aggregate: &str, version: u64, last: u64, batch: &str, at: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(h::MSG_ID, EventId::new().to_string().as_str());
    headers.insert(h::EVENT_TYPE, "Recorded");
    headers.insert(h::EVENT_VERSION, "1");
    headers.insert(h::AGGREGATE_TYPE, "book");
    headers.insert(h::AGGREGATE_ID, aggregate);
    headers.insert(h::AGGREGATE_VERSION, version.to_string().as_str());
    headers.insert(h::TIMESTAMP, chrono::Utc::now().to_rfc3339().as_str());
    headers.insert(h::CONTENT_TYPE, h::JSON);
    headers.insert(h::ACTOR, "bench");
    headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
    headers.insert(
        h::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
        format!("ledger.*.*.{aggregate}").as_str(),
    );
    headers.insert(h::BATCH_ID, batch);
    headers.insert(h::BATCH_SEQUENCE, at.to_string().as_str());
    headers
}

/// One task's aggregates: version and last stream sequence of each.
type Positions = Mutex<HashMap<usize, (u64, u64)>>;

/// What one way of moving amounts did: the time and each move's latency.
struct Measured {
    elapsed: Duration,
    latencies: Samples,
}

/// Runs `per_task` moves on each of 32 tasks; `one` makes one move between two aggregates.
async fn run<F, Fut>(per_task: usize, one: F) -> Measured
where
    F: Fn(usize, usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let latencies = Arc::new(Mutex::new(Samples::default()));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (one, latencies) = (Arc::clone(&one), Arc::clone(&latencies));
        set.spawn(async move {
            let mine: Vec<usize> = (task..AGGREGATES).step_by(TASKS).collect();
            for k in 0..per_task {
                let (a, b) = (mine[k % mine.len()], mine[(k + 1) % mine.len()]);
                let t = Instant::now();
                one(task, a, b).await;
                latencies.lock().expect("latencies").push(t.elapsed());
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("a task of the case");
    }
    let elapsed = started.elapsed();
    let latencies = std::mem::take(&mut *latencies.lock().expect("latencies"));
    Measured { elapsed, latencies }
}

/// The three ways, one after another on the same server.
pub(crate) async fn two_aggregates(
    client: &async_nats::Client,
    per_task: usize,
    rows: &mut Vec<Row>,
) {
    // The ledger's stream (the commands case's too), on aggregates of their own.
    let store = crate::write::store(client, "ledger").await;
    let repo = Arc::new(Repository::<Ledger>::new(store).with_cache(2_000));
    let id = |round: &str, a: usize| AggregateId::new(format!("pair-{round}{a}")).expect("id");

    let across = {
        let repo = Arc::clone(&repo);
        run(per_task, move |_, a, b| {
            let repo = Arc::clone(&repo);
            async move {
                repo.execute_across(
                    [&id("x", a), &id("x", b)],
                    |[from, to]| Ok([from.handle(-1)?, to.handle(1)?]),
                    0,
                )
                .await
                .expect("a move");
            }
        })
        .await
    };
    let singles = {
        let repo = Arc::clone(&repo);
        run(per_task, move |_, a, b| {
            let repo = Arc::clone(&repo);
            async move {
                repo.execute(&id("s", a), -1).await.expect("a debit");
                repo.execute(&id("s", b), 1).await.expect("a credit");
            }
        })
        .await
    };
    let raw = {
        let js = async_nats::jetstream::new(client.clone());
        // Each task's aggregates' versions and last sequences, as a raw writer keeps them.
        let state: Arc<Vec<Positions>> =
            Arc::new((0..TASKS).map(|_| Mutex::new(HashMap::new())).collect());
        let client = client.clone();
        let (debit, credit) = (payload(-1), payload(1));
        run(per_task, move |task, a, b| {
            let (client, _js, state) = (client.clone(), js.clone(), Arc::clone(&state));
            let (debit, credit) = (debit.clone(), credit.clone());
            async move {
                let ((va, la), (vb, lb)) = {
                    let s = state[task].lock().expect("state");
                    (
                        s.get(&a).copied().unwrap_or((0, 0)),
                        s.get(&b).copied().unwrap_or((0, 0)),
                    )
                };
                let batch = uuid::Uuid::new_v4().simple().to_string();
                let (na, nb) = (format!("pair-r{a}"), format!("pair-r{b}"));
                client
                    .publish_with_headers(
                        format!("ledger.book.recorded.{na}"),
                        headers(&na, va + 1, la, &batch, 1),
                        debit,
                    )
                    .await
                    .expect("publish");
                let mut last = headers(&nb, vb + 1, lb, &batch, 2);
                last.insert(h::BATCH_COMMIT, "1");
                let reply = client
                    .request_with_headers(format!("ledger.book.recorded.{nb}"), last, credit)
                    .await
                    .expect("commit");
                let ack: serde_json::Value = serde_json::from_slice(&reply.payload).expect("ack");
                let seq = ack["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a stored batch: {ack}"));
                let mut s = state[task].lock().expect("state");
                s.insert(a, (va + 1, seq - 1));
                s.insert(b, (vb + 1, seq));
            }
        })
        .await
    };
    let moves = (per_task * TASKS) as f64;
    let rate = |m: &Measured| moves / m.elapsed.as_secs_f64();
    let case = "a decision over TWO aggregates (execute_across), 1,000 aggregates, 32 tasks";
    rows.push(Row::throughput(
        case,
        "decisions/s",
        rate(&across),
        rate(&raw),
    ));
    rows.push(Row::latency(
        case,
        "p50 µs",
        across.latencies.percentile(0.5),
        raw.latencies.percentile(0.5),
    ));
    rows.push(Row::latency(
        case,
        "p99 µs",
        across.latencies.percentile(0.99),
        raw.latencies.percentile(0.99),
    ));
    let mut vs = Row::throughput(case, "decisions/s", rate(&across), rate(&singles));
    vs.raw_label = Some("two single-aggregate commands, one after the other");
    rows.push(vs);
    for (what, p) in [("p50 µs", 0.5), ("p99 µs", 0.99)] {
        let mut row = Row::latency(
            case,
            what,
            across.latencies.percentile(p),
            singles.latencies.percentile(p),
        );
        row.raw_label = Some("two single-aggregate commands, one after the other");
        rows.push(row);
    }
}
