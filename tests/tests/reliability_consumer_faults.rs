//! Consumers killed at random points while 10,000 events are appended: a durable subscriber
//! and a projection runner each run in a runtime of their own, with their own connection, and
//! are aborted 20 times (the runtime is dropped at once: tasks, timers and the socket go, as in
//! a crash), then started again.
//!
//! The subscriber sees every event at least once; an event comes back only if its
//! acknowledgement had not been confirmed (never one below the consumer's acknowledged floor
//! read before the abort), and only as a redelivery. The projection, whose state and checkpoint
//! are one KV write, applies each event exactly once.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::jetstream::{
    JetStreamEventStore, ProjectionHandle, ProjectionOptions, ProjectionRunner, StoreConfig,
};
use cim_nats::testing::{wait_until, NatsServer};
use cim_nats::{AsyncFnHandler, Delivery, ProjectionError};
use support::reliability::{self as rs, Counter, Plan, Progress, XorShift};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

const ABORTS: usize = 20;
const DURABLE: &str = "faulty-subscriber";
const WAIT: Duration = Duration::from_secs(60);
const HANDLER_WORK: Duration = Duration::from_millis(10);
const MAX_IN_FLIGHT: usize = 64;

fn seed() -> u64 {
    std::env::var("RELIABILITY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_C0DE)
}

/// One delivery the handler saw: stream sequence, delivery count, incarnation.
type Handled = Arc<Mutex<Vec<(u64, u64, usize)>>>;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Starts incarnation `n` of the durable subscriber in a runtime of its own.
async fn start_subscriber(url: String, handled: Handled, n: usize) -> Runtime {
    let rt = runtime();
    let (ready, subscribed) = oneshot::channel();
    rt.spawn(async move {
        let client = async_nats::connect(url).await.expect("connect");
        let handler = AsyncFnHandler::with_delivery(move |delivery: Delivery| {
            let handled = Arc::clone(&handled);
            async move {
                handled.lock().unwrap().push((
                    delivery.event.stream_sequence.0,
                    delivery.delivery_count,
                    n,
                ));
                // More work after the side effect, as a handler doing I/O has: an abort finds
                // handlers half-way and acknowledgements not yet confirmed.
                tokio::time::sleep(HANDLER_WORK).await;
                Ok(())
            }
        });
        let handle = EventSubscriberBuilder::new()
            .client(client)
            .subject(format!("{}.>", rs::DOMAIN))
            .handler(handler)
            .durable(DURABLE)
            .deliver_policy(DeliverPolicy::All)
            .max_in_flight(MAX_IN_FLIGHT)
            .ack_wait(Duration::from_secs(1))
            .unlimited_deliveries()
            .without_dead_letter()
            .build()
            .expect("subscriber")
            .subscribe()
            .await
            .expect("subscribe");
        let _ = ready.send(());
        // Runs until the runtime is dropped.
        let _ = handle.await;
    });
    subscribed.await.expect("subscriber started");
    rt
}

/// Starts an incarnation of the projection runner in a runtime of its own.
async fn start_projection(url: String) -> (Runtime, ProjectionHandle<Counter>) {
    let rt = runtime();
    let (ready, started) = oneshot::channel();
    rt.spawn(async move {
        let client = async_nats::connect(url).await.expect("connect");
        let store = JetStreamEventStore::new(client, StoreConfig::for_domain(rs::DOMAIN))
            .await
            .expect("store");
        let handle = ProjectionRunner::start::<Counter>(
            &store,
            ProjectionOptions {
                checkpoint_every: 100,
                checkpoint_interval: Duration::from_millis(50),
                ..ProjectionOptions::default()
            },
        )
        .await
        .expect("projection");
        let _ = ready.send(handle);
    });
    let handle = started.await.expect("projection started");
    (rt, handle)
}

/// The projection runner as a service runs it: killed and started again, and started again
/// when it stops because its checkpoint moved underneath.
struct Projector {
    url: String,
    current: Option<(Runtime, ProjectionHandle<Counter>)>,
    runners: usize,
    /// Runners that stopped with `Contended` right after a restart: the killed runner's last
    /// checkpoint write was still on its way and landed after the new runner had read the
    /// checkpoint.
    contended: usize,
}

impl Projector {
    async fn start(url: String) -> Self {
        let current = Some(start_projection(url.clone()).await);
        Self {
            url,
            current,
            runners: 1,
            contended: 0,
        }
    }

    fn handle(&self) -> &ProjectionHandle<Counter> {
        &self.current.as_ref().expect("a runner").1
    }

    /// Kills the runner (its runtime and connection go at once), then starts a new one.
    async fn kill_and_restart(&mut self) {
        if let Some((rt, handle)) = self.current.take() {
            drop(handle);
            rt.shutdown_background();
        }
        self.current = Some(start_projection(self.url.clone()).await);
        self.runners += 1;
    }

    /// Waits until the projection has applied the event at `sequence`, starting the runner
    /// again if it stopped on a moved checkpoint.
    async fn reach(&mut self, sequence: u64) {
        loop {
            wait_until(WAIT, "the projection to reach a sequence", || {
                let finished = self.handle().is_finished();
                let n = self.handle().applied().0;
                async move { finished || n >= sequence }
            })
            .await;
            if !self.handle().is_finished() {
                return;
            }
            let (rt, stopped) = self.current.take().expect("a runner");
            match stopped.shutdown().await {
                Err(ProjectionError::Contended(_)) => self.contended += 1,
                other => panic!("the projection runner stopped: {other:?}"),
            }
            rt.shutdown_background();
            self.current = Some(start_projection(self.url.clone()).await);
            self.runners += 1;
        }
    }

    /// Stops the runner gracefully and returns how many runners there were and how many of
    /// them stopped on a moved checkpoint.
    async fn shutdown(mut self) -> (usize, usize) {
        let (rt, handle) = self.current.take().expect("a runner");
        handle.shutdown().await.expect("projection shutdown");
        rt.shutdown_background();
        (self.runners, self.contended)
    }
}

/// The consumer's acknowledged floor: every event up to it is acknowledged, confirmed.
async fn ack_floor(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .expect("stream")
        .consumer_info(DURABLE)
        .await
        .map(|i| i.ack_floor.stream_sequence)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_consumers_miss_nothing_and_the_projection_applies_each_event_once() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = server.connect().await.expect("connect");
    let url = server.url();
    let js = jetstream::new(client.clone());
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain(rs::DOMAIN))
        .await
        .expect("store");
    let stream = store.stream_name().to_owned();
    let plan = Plan {
        domain: rs::DOMAIN.to_owned(),
        aggregates: 100,
        per_aggregate: 100,
        in_flight: 32,
        attempt_timeout: Duration::from_secs(5),
        give_up: Duration::from_secs(60),
    };
    let total = plan.total();
    let seed = seed();
    let mut rng = XorShift::new(seed);
    let points = |rng: &mut XorShift| {
        let mut p: Vec<u64> = (0..ABORTS).map(|_| 1 + rng.below(total - 1)).collect();
        p.sort_unstable();
        p
    };
    let subscriber_points = points(&mut rng);
    let projection_points = points(&mut rng);

    let handled: Handled = Arc::default();
    let mut subscriber = start_subscriber(url.clone(), Arc::clone(&handled), 0).await;
    let mut projector = Projector::start(url.clone()).await;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let load = tokio::spawn(rs::run_load(
        store.clone(),
        plan.clone(),
        Arc::clone(&progress),
    ));

    let distinct = |handled: &Handled| {
        let mut seqs: Vec<u64> = handled.lock().unwrap().iter().map(|d| d.0).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.len() as u64
    };
    // Confirmed floor read just before each abort, by incarnation aborted.
    let mut floors = Vec::with_capacity(ABORTS);
    for k in 0..ABORTS {
        let at = subscriber_points[k];
        wait_until(WAIT, "the subscriber to reach an abort point", || {
            let n = distinct(&handled);
            async move { n >= at }
        })
        .await;
        floors.push(ack_floor(&js, &stream).await);
        subscriber.shutdown_background();
        subscriber = start_subscriber(url.clone(), Arc::clone(&handled), k + 1).await;

        projector.reach(projection_points[k]).await;
        projector.kill_and_restart().await;
    }
    let acked = load.await.expect("load");
    assert_eq!(acked.len() as u64, total);

    wait_until(WAIT, "the subscriber to handle every event", || {
        let n = distinct(&handled);
        async move { n == total }
    })
    .await;
    wait_until(WAIT, "every acknowledgement", || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            let Ok(s) = js.get_stream(&stream).await else {
                return false;
            };
            s.consumer_info(DURABLE)
                .await
                .is_ok_and(|i| i.ack_floor.stream_sequence == total && i.num_ack_pending == 0)
        }
    })
    .await;
    projector.reach(total).await;
    let elapsed = started.elapsed();

    // The subscriber: everything at least once; a repeat is a redelivery of an event whose
    // acknowledgement was not confirmed when its subscriber was aborted.
    let deliveries = handled.lock().unwrap().clone();
    // For each event, the incarnations that handled it, in order.
    let mut seen: HashMap<u64, Vec<usize>> = HashMap::with_capacity(total as usize);
    let mut repeats = 0u64;
    for &(seq, delivery_count, incarnation) in &deliveries {
        let by = seen.entry(seq).or_default();
        if let Some(&before) = by.last() {
            repeats += 1;
            assert!(
                delivery_count > 1,
                "event {seq} handled again as a first delivery"
            );
            assert!(
                before < incarnation,
                "event {seq} handled twice by incarnation {incarnation}, which was not aborted \
                 in between"
            );
        }
        by.push(incarnation);
        if let Some(floor) = floors[..incarnation].iter().max() {
            assert!(
                seq > *floor,
                "event {seq} delivered to incarnation {incarnation} after its acknowledgement was \
                 confirmed (floor {floor})"
            );
        }
    }
    // An aborted incarnation held at most `MAX_IN_FLIGHT` events whose acknowledgement was not
    // confirmed: only those can come back.
    let mut unconfirmed = vec![0usize; ABORTS + 1];
    for by in seen.values() {
        for &k in &by[..by.len() - 1] {
            unconfirmed[k] += 1;
        }
    }
    assert!(
        unconfirmed.iter().all(|n| *n <= MAX_IN_FLIGHT),
        "more events came back than an incarnation could hold: {unconfirmed:?}"
    );
    assert!((1..=total).all(|s| seen.contains_key(&s)));

    // The projection: each event applied exactly once across all its runners.
    {
        let counter = projector.handle().read().await;
        assert_eq!(counter.applied, total, "each event applied exactly once");
        assert_eq!(counter.seen.len() as u64, total);
        assert_eq!(counter.seen.iter().next_back(), Some(&total));
    }
    let (runners, contended) = projector.shutdown().await;
    subscriber.shutdown_background();
    println!(
        "consumer faults (seed {seed:#x}): {total} events, {ABORTS} aborts of each consumer, \
         {:.1} s\n  subscriber: {} deliveries handled, {total} distinct, {repeats} repeats \
         (unconfirmed acknowledgements), none below a confirmed floor, at most {} per abort\n  \
         projection: {total} applied exactly once across {runners} runners ({contended} \
         stopped at once on a checkpoint moved by the killed runner's last write)\n  \
         subscriber abort points {:?}\n  projection abort points {:?}",
        elapsed.as_secs_f64(),
        deliveries.len(),
        unconfirmed.iter().max().copied().unwrap_or(0),
        subscriber_points,
        projection_points,
    );
}
