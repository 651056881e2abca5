//! The loop of one consumer: pull messages, hand each to its aggregate's lane, run handlers
//! concurrently across aggregates (on this task, or each on a task of its own), keep held
//! messages alive, and shut down gracefully.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::jetstream::codec;
use crate::jetstream::subscriber::lanes::{Lanes, Offer, Retry};
use crate::jetstream::subscriber::process::{ConsumerContext, Done, Outcome};
use crate::jetstream::subscriber::pull::{Pulled, Puller};
use crate::jetstream::subscriber::recover::{self, Check, Continuity, Recovery};
use crate::jetstream::subscriber::{SubscriberError, SubscriberErrorKind};

/// How often an idle subscription looks whether the client reconnected (deliveries may then
/// have been lost on the way).
const RECONNECT_POLL: Duration = Duration::from_millis(200);
/// Extra time a lane waits for a retried event beyond its retry delay and ack wait.
const RETRY_GRACE: Duration = Duration::from_secs(5);
/// At shutdown, how long after a retried event the events waiting behind it are delivered
/// again, so that they come back after it.
const ORDER_MARGIN: Duration = Duration::from_secs(1);

/// The ordering key of a message: its aggregate id (see `codec::aggregate_key`).
fn ordering_key(message: &jetstream::Message) -> Arc<str> {
    codec::aggregate_key(message.headers.as_ref(), &message.subject)
}

/// Reports progress (`+WPI`) for every held message a few times per ack wait, so the server
/// does not deliver again an event that is running or waiting behind its aggregate's previous
/// one.
async fn keep_alive(ctx: Arc<ConsumerContext>) {
    let period = (ctx.options.effective_ack_wait() / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for reply in ctx.held.replies() {
            if let Err(e) = ctx
                .client
                .publish(reply, jetstream::AckKind::Progress.into())
                .await
            {
                tracing::debug!(error = %e, "progress report not sent");
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The handlings under way: each on a task of its own, or all polled by the consumer's task.
enum Running {
    Spawned(JoinSet<Done>),
    InTask(FuturesUnordered<BoxFuture<'static, Done>>),
}

impl Running {
    fn new(parallel: bool) -> Self {
        if parallel {
            Self::Spawned(JoinSet::new())
        } else {
            Self::InTask(FuturesUnordered::new())
        }
    }

    fn start(&mut self, handling: impl Future<Output = Done> + Send + 'static) {
        match self {
            Self::Spawned(tasks) => {
                tasks.spawn(handling);
            }
            Self::InTask(futures) => futures.push(Box::pin(handling)),
        }
    }

    /// The next handling to end (cancel-safe): `None` when none is under way, `Some(None)` for
    /// a task that was aborted.
    async fn next(&mut self) -> Option<Option<Done>> {
        match self {
            Self::Spawned(tasks) => tasks.join_next().await.map(Result::ok),
            Self::InTask(futures) => futures.next().await.map(Some),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Spawned(tasks) => tasks.len(),
            Self::InTask(futures) => futures.len(),
        }
    }

    /// Stops every handling under way.
    async fn abort_all(&mut self) {
        match self {
            Self::Spawned(tasks) => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
            Self::InTask(futures) => futures.clear(),
        }
    }
}

struct Dispatcher {
    ctx: Arc<ConsumerContext>,
    lanes: Lanes<jetstream::Message>,
    running: Running,
}

impl Dispatcher {
    fn spawn(&mut self, key: Arc<str>, sequence: u64, message: jetstream::Message) {
        let ctx = Arc::clone(&self.ctx);
        match ctx.budget.clone() {
            // A group member's partitions share its budget of handlers running at once: the
            // event waits (held, its lane busy) for a place.
            Some(budget) => self.running.start(async move {
                let _place = budget.acquire_owned().await;
                ctx.process(key, sequence, message).await
            }),
            None => self.running.start(ctx.process(key, sequence, message)),
        }
    }

    /// Records a delivered message and offers it to its lane; returns it if its lane is free.
    fn accept(
        &mut self,
        message: jetstream::Message,
    ) -> Option<(Arc<str>, u64, jetstream::Message)> {
        let (sequence, delivered) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                u64::try_from(info.delivered).unwrap_or(1),
            ),
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "ignoring a message without JetStream metadata");
                return None;
            }
        };
        let reply = message.reply.clone()?;
        if !self.ctx.held.insert(sequence, reply, delivered) {
            // Delivered again while held (its ack wait passed): the newer delivery's reply
            // subject is used from now on.
            tracing::debug!(
                stream_sequence = sequence,
                delivered,
                "delivered again while held"
            );
            return None;
        }
        if let Some(partition) = &self.ctx.partition {
            partition.opened(sequence);
        }
        let key = ordering_key(&message);
        match self.lanes.offer(key.clone(), sequence, message) {
            Offer::Run(message) => Some((key, sequence, message)),
            Offer::Queued => None,
        }
    }

    fn on_message(&mut self, message: jetstream::Message) {
        if let Some((key, sequence, message)) = self.accept(message) {
            self.spawn(key, sequence, message);
        }
    }

    fn retry(&self, outcome: Outcome) -> Option<Retry> {
        match outcome {
            Outcome::Retry(delay) => {
                let due = Instant::now() + delay;
                Some(Retry {
                    due,
                    until: due + self.ctx.options.effective_ack_wait() + RETRY_GRACE,
                })
            }
            Outcome::Acked
            | Outcome::Unconfirmed
            | Outcome::Abandoned
            | Outcome::Settled
            | Outcome::Released => None,
        }
    }

    fn on_done(&mut self, done: Option<Done>) {
        let Some(done) = done else {
            return;
        };
        let retry = self.retry(done.outcome);
        if let Some((sequence, message)) = self.lanes.finish(&done.key, done.sequence, retry) {
            self.spawn(done.key, sequence, message);
        }
    }

    fn on_deadlines(&mut self) {
        for (key, waited, next) in self.lanes.expire(Instant::now()) {
            tracing::warn!(
                aggregate_id = %key,
                stream_sequence = waited,
                "a retried event was not delivered again in time; its aggregate's later events go on"
            );
            if let Some(partition) = &self.ctx.partition {
                partition.forget(waited);
            }
            if let Some((sequence, message)) = next {
                self.spawn(key, sequence, message);
            }
        }
    }

    /// At shutdown: a running event is done; its lane's waiting events go back to the server,
    /// after it if it is to be retried.
    async fn on_done_stopping(&mut self, done: Option<Done>) {
        let Some(done) = done else {
            // Aborted at the shutdown timeout: given back with everything still held.
            return;
        };
        let due = self.retry(done.outcome).map(|r| r.due);
        // Take the waiting events first: finishing would start the next one.
        let waiting = self.lanes.take_waiting(&done.key);
        self.lanes.finish(&done.key, done.sequence, None);
        self.release(waiting.into_iter().map(|(s, _)| s), due).await;
    }

    /// Gives held but unstarted messages back to the server, in stream order: at once, or,
    /// when they wait behind an event to be retried at `after`, a little after it, so that the
    /// next subscriber gets them in order.
    async fn release(&mut self, sequences: impl IntoIterator<Item = u64>, after: Option<Instant>) {
        let delay = after.map_or(Duration::ZERO, |due| {
            due.saturating_duration_since(Instant::now()) + ORDER_MARGIN
        });
        let mut sequences: Vec<u64> = sequences.into_iter().collect();
        sequences.sort_unstable();
        for sequence in sequences {
            if let Some(reply) = self.ctx.held.remove(sequence) {
                self.ctx.nak_reply(reply, delay).await;
            }
        }
    }
}

/// At the end of a group member's work on a partition: handles the events held (and those
/// that arrived before the fence) to the end, up to the shutdown timeout, acknowledging them
/// in order. What still waits then (behind an event to be retried) is given back below.
async fn drain(d: &mut Dispatcher, arrived: Vec<jetstream::Message>, ended: Vec<Option<Done>>) {
    for message in arrived {
        d.on_message(message);
    }
    for done in ended {
        d.on_done(done);
    }
    let deadline = Instant::now() + d.ctx.options.shutdown_timeout;
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, d.running.next()).await {
        d.on_done(done);
    }
}

/// How a consumer's loop ended, when not with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It was asked to stop.
    Stopped,
    /// A group partition's deliveries or acknowledgements were lost on the way (a gap in the
    /// consumer's delivery sequence, the client reconnected, or an acknowledgement was not
    /// confirmed): the events received before the loss were handled and settled in order,
    /// nothing after it was; the partition's consumer is to be created again right after them
    /// (`group.rs`). A replicated consumer whose leader died
    /// may not know what the old leader delivered, so giving the lost events back (as a
    /// single subscriber does, `recover.rs`) could not keep their order.
    Rewind,
}

/// Runs one consumer until `stop` is set (or its sender dropped), then shuts down gracefully:
/// stops pulling (draining the pull subscription), gives back messages not yet started, waits
/// for running handlers (up to the shutdown timeout) and their acknowledgements.
pub(crate) async fn run(
    ctx: Arc<ConsumerContext>,
    js: jetstream::Context,
    consumer: PullConsumer,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, SubscriberError> {
    let partitioned = ctx.partition.is_some();
    let mut rewind = false;
    let delivered = &consumer.cached_info().delivered;
    let mut continuity = Continuity::new(
        &ctx.client,
        delivered.consumer_sequence,
        delivered.stream_sequence,
    );
    // Deliveries lost on the way are being recovered (see `recover.rs`): no pulling meanwhile,
    // and what still arrives is held back.
    let mut recovering: Option<Recovery> = None;
    let mut recover_after: Option<Instant> = None;
    let mut puller = Puller::new(consumer, js, ctx.options.max_in_flight)
        .await
        .map_err(|e| {
            SubscriberError::with_source(
                SubscriberErrorKind::Pull {
                    stream: ctx.stream.to_string(),
                    consumer: ctx.consumer.to_string(),
                },
                e,
            )
        })?;
    let _keep_alive = AbortOnDrop(tokio::spawn(keep_alive(Arc::clone(&ctx))));
    let mut d = Dispatcher {
        ctx: Arc::clone(&ctx),
        lanes: Lanes::default(),
        running: Running::new(ctx.options.parallel_handlers),
    };
    tracing::debug!(stream = %ctx.stream, consumer = %ctx.consumer, "consumer running");

    let result = loop {
        if *stop.borrow_and_update() {
            break Ok(());
        }
        // The pending pull request is the fence: once it has ended, nothing lost can still
        // arrive, and the recovery can be finished.
        if !puller.is_open() && recover_after.is_none_or(|t| Instant::now() >= t) {
            if let Some(recovery) = recovering.take() {
                match recover::finish(&ctx, puller.consumer_mut(), &mut continuity, recovery).await
                {
                    Ok(()) => recover_after = None,
                    Err(recovery) => {
                        recovering = Some(recovery);
                        recover_after = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
        if recovering.is_none() {
            if let Err((kind, why)) = puller.ensure_request().await {
                break Err(SubscriberError::with_source(kind, why));
            }
        }
        let mut deadline = match d.lanes.next_deadline() {
            Some(lane) => lane.min(puller.deadline()),
            None => puller.deadline(),
        };
        if recovering.is_some() {
            if let Some(t) = recover_after {
                deadline = deadline.min(t);
            }
        }
        // A few times a second, whether the client reconnected (see below).
        deadline = deadline.min(Instant::now() + RECONNECT_POLL);
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
            }
            Some(done) = d.running.next() => {
                // A group partition whose acknowledgement went unconfirmed (its consumer's
                // leader was lost) starts again after what it handled, rather than have the
                // server deliver that event again after later ones.
                let unconfirmed = partitioned
                    && matches!(&done, Some(done) if done.outcome == Outcome::Unconfirmed);
                d.on_done(done);
                if unconfirmed {
                    rewind = true;
                    break Ok(());
                }
            }
            message = puller.recv() => match message.map(|m| puller.on_message(m)) {
                Some(Pulled::Message(message)) => match &mut recovering {
                    Some(recovery) => recovery.held_back.push(message),
                    None => match continuity.check(&message) {
                        Check::InOrder => d.on_message(message),
                        Check::Gap if partitioned => {
                            rewind = true;
                            break Ok(());
                        }
                        Check::Gap => recovering = Some(Recovery { held_back: vec![message] }),
                    },
                },
                Some(Pulled::Status) => {}
                Some(Pulled::Fatal(kind, why)) => break Err(SubscriberError::with_source(kind, why)),
                None => break Err(SubscriberError::new(puller.pull_error())),
            },
            () = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                d.on_deadlines();
                puller.on_deadline(now);
            }
        }
        if recovering.is_none() && continuity.reconnected() {
            if partitioned {
                rewind = true;
                break Ok(());
            }
            recovering = Some(Recovery::default());
        }
    };
    if rewind {
        tracing::warn!(stream = %ctx.stream, consumer = %ctx.consumer,
            "deliveries lost on the way; the partition's consumer starts again after what was handled");
    }
    // Deliveries held back by an unfinished recovery go back to the server, in order.
    if let Some(recovery) = recovering {
        let mut held_back = recovery.held_back;
        held_back.sort_by_key(|m| m.info().map_or(0, |i| i.stream_sequence));
        for message in held_back {
            if let Some(reply) = message.message.reply {
                ctx.nak_reply(reply, Duration::ZERO).await;
            }
        }
    }

    // Stop pulling; for a durable consumer, wait until nothing delivered can still be on its
    // way (an ephemeral one is deleted next). Nothing new starts; what waits goes back to the
    // server in stream order, so the next subscriber gets it at once and in order.
    // Handlers running on this task go on meanwhile; what ends is dealt with below, as if it
    // had ended after the fence.
    let mut ended = Vec::new();
    let mut arrived = {
        let finish = puller.finish(ctx.options.durable.is_some());
        tokio::pin!(finish);
        loop {
            tokio::select! {
                arrived = &mut finish => break arrived,
                Some(done) = d.running.next() => ended.push(done),
            }
        }
    };
    arrived.sort_by_key(|m| m.info().map_or(0, |i| i.stream_sequence));
    if partitioned {
        // A group member handing a partition over handles what it holds first, so that every
        // event it was given is acknowledged and the next member starts right after them.
        // After a loss, what arrived after it is not handled: it comes again, in order.
        if rewind {
            arrived.clear();
        }
        drain(&mut d, arrived, ended).await;
        arrived = Vec::new();
        ended = Vec::new();
    }
    let mut free = Vec::new();
    for message in arrived {
        if let Some((key, sequence, _)) = d.accept(message) {
            free.push((key, sequence));
        }
    }
    // Lanes that were idle: their events go back at once (stream order is kept by releasing
    // everything in sequence order).
    let mut now = Vec::new();
    for (key, sequence) in free {
        now.push(sequence);
        now.extend(d.lanes.take_waiting(&key).into_iter().map(|(s, _)| s));
        d.lanes.finish(&key, sequence, None);
    }
    d.release(now, None).await;
    for (due, waiting) in d.lanes.take_not_running() {
        d.release(waiting.into_iter().map(|(s, _)| s), due).await;
    }

    // Let running handlers finish and acknowledge.
    for done in ended {
        d.on_done_stopping(done).await;
    }
    let deadline = Instant::now() + ctx.options.shutdown_timeout;
    let mut unfinished = 0;
    loop {
        match tokio::time::timeout_at(deadline, d.running.next()).await {
            Ok(Some(done)) => d.on_done_stopping(done).await,
            Ok(None) => break,
            Err(_) => {
                unfinished = d.running.len();
                d.running.abort_all().await;
                break;
            }
        }
    }
    // Whatever is still held was stopped half-way (and what waited behind it): give it back.
    let mut held = ctx.held.take_all();
    held.sort_by_key(|(sequence, _)| *sequence);
    for (_, reply) in held {
        ctx.nak_reply(reply, Duration::ZERO).await;
    }
    let _ = ctx.client.flush().await;
    tracing::debug!(stream = %ctx.stream, consumer = %ctx.consumer, "consumer stopped");
    result?;
    if unfinished > 0 {
        return Err(SubscriberError::new(
            SubscriberErrorKind::ShutdownTimedOut { unfinished },
        ));
    }
    Ok(if rewind {
        Ended::Rewind
    } else {
        Ended::Stopped
    })
}
