//! One partition of a read model, read from the domain's partitioned view
//! ([`ReadModelRunner::start_partition`]): the runner reads only its partition's messages of
//! `{STREAM}_PARTITIONED`, each translated back into the event it copies (the event stream's
//! sequence from its `Nats-Stream-Source` header, its subject less `cim_p.{partition}.`), and
//! records in its checkpoint both the event stream's sequence and the view's
//! ([`super::Checkpoint::view_sequence`]).
//!
//! A partition that has nothing to read moves its checkpoint on by itself
//! ([`ViewFeed::idle_position`]): readers take the smallest of the partitions' checkpoints, and
//! an idle partition would otherwise hold the whole model back.

use std::time::Duration;

use tokio::sync::watch;

use super::{setup_error, Checkpoint, KeyedProjection, ReadModelHandle, ReadModelOptions, Source};
use super::{NatsEvent, OrderedReader, Progress, ReadModelRunner, ReadSpec, Start};
use crate::jetstream::api::{self, Conn, MsgGet};
use crate::jetstream::codec::RawMessage;
use crate::jetstream::partition::{PartitionedView, PARTITION_PREFIX};
use crate::jetstream::store::JetStreamEventStore;
use crate::projection::ProjectionError;
use crate::store::{StoreError, StoreErrorKind};
use crate::subscriber::Lease;

impl ReadModelRunner {
    /// Starts partition `lease.partition` of `lease.partitions` of read model `P`, reading that
    /// partition of `view` (the same bucket, pointer and versioning as
    /// [`ReadModelRunner::start`]).
    ///
    /// The runner applies, in the event stream's order, the events of the aggregates of its
    /// partition ([`crate::jetstream::partition_of`]), each seen by
    /// [`KeyedProjection::apply`] exactly as [`ReadModelRunner::start`] would show it (the event
    /// stream's sequence and subject); the events of other partitions never reach it. `apply`
    /// should read and write only rows of its partition's aggregates: other partitions' rows are
    /// written by other runners meanwhile. Its commits are fenced on its partition's checkpoint
    /// key (`_cim.checkpoint.{partition}`), so that a runner whose lease has moved on (another
    /// member works the partition now) has its next commit refused and stops with
    /// [`ProjectionError::Contended`], having stored nothing of it.
    ///
    /// When it has nothing to read and nothing to commit, the runner moves its checkpoint on to
    /// the last event the view holds (at each [`ReadModelOptions::commit_interval`], and when
    /// [`ReadModelHandle::wait_for`] asks): so [`super::ReadModel::wait_for`] of a sequence
    /// returns once every partition has reached it, whether it had events to apply or not.
    ///
    /// A version built beside an older live one goes live (its runners move the pointer) when
    /// every partition's checkpoint has reached the last event the stream held when the runner
    /// started. A rebuild ([`super::request_rebuild`]) is built by every partition's runner
    /// into the new generation's bucket, and goes live the same way, when every partition has
    /// reached the rebuild's target.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] if a bucket or the consumer cannot be set up, if the lease
    /// does not fit the view (another partition count, or a partition out of range) or the view
    /// is not of `store`'s stream, or if the model's checkpoints are of another partition count
    /// (both counts named); [`ProjectionError::Apply`] if `P::NAME` cannot name a bucket;
    /// [`ProjectionError::Superseded`] if a newer version of the model is already live.
    pub async fn start_partition<P: KeyedProjection>(
        store: &JetStreamEventStore,
        view: &PartitionedView,
        projection: P,
        options: ReadModelOptions,
        lease: &Lease,
    ) -> Result<ReadModelHandle<P>, ProjectionError> {
        let (partition, partitions) = (lease.partition, lease.partitions);
        let misfit = if partitions != view.partitions() || partition >= partitions {
            Some(format!(
                "the lease of partition {partition} of {partitions} does not fit the view of {} \
                 partitions",
                view.partitions()
            ))
        } else if view.stream_name() != format!("{}_PARTITIONED", store.stream_name()) {
            Some(format!(
                "the view {} is not the partitioned view of {}",
                view.stream_name(),
                store.stream_name()
            ))
        } else {
            None
        };
        if let Some(reason) = misfit {
            return Err(setup_error(P::NAME, view.stream_name(), reason));
        }
        let source = Source::View {
            view: view.clone(),
            lease: lease.clone(),
        };
        super::start_from(store, projection, options, source).await
    }
}

/// The reader of partition `partition` of `partitions` of `view` for model `P`, from the
/// view position of `checkpoint` (the partition's in the bucket being built), and the feed
/// that translates its messages into events.
pub(super) fn view_reader<P: KeyedProjection>(
    store: &JetStreamEventStore,
    view: &PartitionedView,
    (partition, partitions): (u32, u32),
    checkpoint: Option<&Checkpoint>,
) -> ((OrderedReader, watch::Receiver<Progress>), ViewFeed) {
    let start = checkpoint.map_or(0, |c| c.sequence);
    // Without a view position (a checkpoint of an older runner) the view is read from its
    // beginning, and the events up to the checkpoint's sequence are skipped.
    let at = checkpoint.and_then(|c| c.view_sequence).unwrap_or(0);
    let domain = <P::Event as NatsEvent>::DOMAIN_WILDCARD;
    let prefix = format!("{PARTITION_PREFIX}.{partition}.");
    let filter = format!("{prefix}{domain}");
    let reader = OrderedReader::start(
        store.client().clone(),
        ReadSpec {
            stream: view.stream_name().to_owned(),
            filter: Some(filter.clone()),
            start: Start::Sequence(at + 1),
            follow: true,
            timeout: store.request_timeout(),
        },
    );
    let (read, progress) = watch::channel(Progress {
        sequence: start,
        pending: 0,
    });
    let feed = ViewFeed {
        conn: Conn::new(store.client().clone()),
        stream: view.stream_name().to_owned(),
        origin: store.stream_name().to_owned(),
        prefix,
        filter,
        partitions,
        at,
        current: at,
        raw: reader.progress(),
        read,
        timeout: store.request_timeout(),
    };
    ((reader, progress), feed)
}

/// The last event of model `P`'s domain that the stream holds now (0: none), the target of a
/// partition's build: the view will hold it (check markers of appends to several aggregates
/// are not sourced into it, and are left out).
pub(super) async fn last_event<P: KeyedProjection>(
    store: &JetStreamEventStore,
) -> Result<u64, ProjectionError> {
    let domain = <P::Event as NatsEvent>::DOMAIN_WILDCARD;
    let events = format!("{}*.*.*", domain.strip_suffix('>').unwrap_or(domain));
    let last_event = MsgGet {
        last_by_subj: Some(&events),
        ..MsgGet::default()
    };
    let conn = Conn::new(store.client().clone());
    Ok(api::msg_get(
        &conn,
        store.stream_name(),
        &last_event,
        store.request_timeout(),
    )
    .await
    .map_err(|e| ProjectionError::Store {
        projection: P::NAME.to_owned(),
        source: e,
    })?
    .map_or(0, |m| m.sequence))
}

/// Where a partition's runner is in the partitioned view, and how it reads the view's messages
/// as events.
pub(super) struct ViewFeed {
    conn: Conn,
    /// The view's stream.
    stream: String,
    /// The event stream it is sourced from.
    origin: String,
    /// `cim_p.{partition}.`
    prefix: String,
    /// The partition's messages of the domain: the reader's filter.
    filter: String,
    partitions: u32,
    /// The view sequence up to which the runner has applied (or skipped) the partition's
    /// messages.
    at: u64,
    /// The view sequence of the message being applied.
    current: u64,
    /// The reader's progress, in view sequences.
    raw: watch::Receiver<Progress>,
    /// The runner's progress, in event stream sequences (the handle's lag).
    read: watch::Sender<Progress>,
    timeout: Duration,
}

impl ViewFeed {
    /// The model's partition count.
    pub(super) fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The view sequence up to which the runner has read: what its checkpoint records.
    pub(super) fn read_up_to(&self) -> u64 {
        self.at
    }

    /// The message being applied is read (its event is applied, or skipped as unreadable).
    pub(super) fn read_up_to_current(&mut self) {
        self.at = self.at.max(self.current);
    }

    /// Nothing of the partition up to view sequence `at` is left to read.
    pub(super) fn skip_to(&mut self, at: u64) {
        self.at = self.at.max(at);
    }

    /// Has the runner applied everything the reader handed over, and does the server say that
    /// nothing more is pending?
    pub(super) fn caught_up(&self) -> bool {
        let raw = self.raw.borrow();
        raw.pending == 0 && raw.sequence <= self.at
    }

    /// Tells the handle that the runner has read the event stream up to `sequence`.
    pub(super) fn publish(&self, sequence: u64) {
        let raw = *self.raw.borrow();
        // Messages handed over and not yet applied are still to come.
        let pending = raw.pending + u64::from(raw.sequence > self.at);
        self.read.send_replace(Progress { sequence, pending });
    }

    /// The event stream's sequence of a message of the view (of any partition), from the
    /// server's `Nats-Stream-Source` header.
    fn source_sequence(&self, message: &RawMessage) -> Option<u64> {
        let source = message.headers.get("Nats-Stream-Source")?;
        let mut tokens = source.as_str().split_whitespace();
        // `ORIGIN 42 ...` (or `ORIGIN:domain 42 ...` for a stream of another domain).
        if tokens.next()?.split(':').next()? != self.origin {
            return None;
        }
        tokens.next()?.parse().ok()
    }

    /// The event stream's sequence and subject of a message of the partition.
    fn origin_of(&self, message: &RawMessage) -> Option<(u64, String)> {
        let subject = message.subject.strip_prefix(&self.prefix)?;
        Some((self.source_sequence(message)?, subject.to_owned()))
    }

    /// A message of the view read as the event it copies: its sequence becomes the event
    /// stream's, its subject loses `cim_p.{partition}.`. `Ok(None)`: read already (a message
    /// delivered again, or an event at or before `last`, the runner's position).
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Decode`] for a message that names no event of the stream (not one the
    /// server sourced into the view): the runner cannot place it in the stream, and stops.
    pub(super) fn translate(
        &mut self,
        mut message: RawMessage,
        last: u64,
    ) -> Result<Option<RawMessage>, StoreError> {
        let at = message.sequence;
        if at <= self.at {
            return Ok(None);
        }
        let Some((sequence, subject)) = self.origin_of(&message) else {
            return Err(StoreError::new(StoreErrorKind::Decode {
                sequence: at,
                reason: format!(
                    "message {at} of the partitioned view {} (subject {:?}) names no event of \
                     {}: no Nats-Stream-Source header of it, or a subject out of the partition",
                    self.stream, message.subject, self.origin
                ),
            }));
        };
        if sequence <= last {
            self.at = at;
            return Ok(None);
        }
        self.current = at;
        message.sequence = sequence;
        message.subject = subject;
        Ok(Some(message))
    }

    /// Where an idle partition stands: the event stream sequence of the view's last message
    /// and that message's view sequence, when none of the partition's messages lies between
    /// what the runner has read and it (so the partition holds every event up to there);
    /// `None` when the view is empty or the partition has messages still to read.
    ///
    /// # Errors
    ///
    /// The view cannot be read.
    pub(super) async fn idle_position(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let last = MsgGet {
            last_by_subj: Some(">"),
            ..MsgGet::default()
        };
        let Some(last) = api::msg_get(&self.conn, &self.stream, &last, self.timeout).await? else {
            return Ok(None);
        };
        let Some(origin) = self.source_sequence(&last) else {
            return Ok(None);
        };
        if last.sequence > self.at {
            let next = MsgGet {
                seq: Some(self.at + 1),
                next_by_subj: Some(&self.filter),
                ..MsgGet::default()
            };
            let next = api::msg_get(&self.conn, &self.stream, &next, self.timeout).await?;
            if next.is_some_and(|m| m.sequence <= last.sequence) {
                return Ok(None);
            }
        }
        Ok(Some((origin, last.sequence.max(self.at))))
    }
}
