//! Sequenced dead letters: while an aggregate has an event in the dead letter, a subscriber's
//! later events of that aggregate are parked behind it, in order, instead of being handled
//! (the subscriber option [`EventSubscriberBuilder::sequenced_dead_letters`]).
//!
//! The parked state lives in a KV bucket beside the dead-letter stream, `{DLQ}_PARKED` (history
//! 1, the dead-letter stream's storage and replicas), one key per parked aggregate of a
//! consumer ([`parked_key`]), its value a [`ParkedAggregate`] (JSON):
//!
//! - the first event of an aggregate a subscriber gives up on is sent to the dead letter as
//!   usual, then its key is created (`head`: that letter's sequence), then the event is
//!   terminated; if the key cannot be written, the letter is removed again and the event comes
//!   back later (nothing is terminated without its parked state);
//! - a later event of a parked aggregate first raises the key's `last` (the event stream
//!   sequence of the last event parked; written with the key's revision), then goes to the dead
//!   letter with reason [`super::dead_letter::REASON_PARKED`], then is terminated;
//! - a redrive (or discard) of the head, served by a running subscriber of the consumer, handles
//!   the head and then every parked letter of the aggregate in order; on a failure the failing
//!   letter becomes the head and the rest stay parked; when none is left and `last` is covered
//!   the key is deleted with the revision it was read at, so that an event parked meanwhile is
//!   handled by the same redrive and never left behind a released aggregate.
//!
//! A subscriber reads the consumer's keys when it starts (a consumer group member: each time it
//! takes a partition), so a member that takes over honours what another parked; it remembers
//! the aggregates it parks itself. Only the process working an aggregate's events parks it; a
//! redrive only releases it, and a subscriber that still believes an aggregate parked finds the
//! key gone when it tries to raise `last`, and handles the event.
//!
//! [`EventSubscriberBuilder::sequenced_dead_letters`]: super::EventSubscriberBuilder::sequenced_dead_letters

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::jetstream::kv::kv_key;
use crate::jetstream::subscriber::dead_letter::DeadLetterConfig;
use crate::jetstream::subscriber::{SubscriberError, SubscriberErrorKind};

/// Attempts to write a parked aggregate's key when its revision moved underneath.
const WRITE_ATTEMPTS: u32 = 5;

/// The bucket of parked aggregates beside the dead-letter stream `config` names.
pub fn parked_bucket(config: &DeadLetterConfig) -> String {
    format!("{}_PARKED", config.stream)
}

/// The key prefix of the parked aggregates of one consumer (with a trailing dot).
fn consumer_prefix(stream: &str, consumer: &str) -> String {
    format!("{}.", kv_key(stream, consumer))
}

/// The key of aggregate `aggregate` (its id, as events carry it in `Cim-Aggregate-Id`) parked
/// for `consumer` of `stream`: `{stream}.r.{consumer}.a.r.{aggregate}`, each pair hex-encoded
/// when it has characters KV keys do not allow.
pub fn parked_key(stream: &str, consumer: &str, aggregate: &str) -> String {
    format!(
        "{}{}",
        consumer_prefix(stream, consumer),
        kv_key("a", aggregate)
    )
}

/// A parked aggregate, as its key holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedAggregate {
    /// The event stream.
    pub stream: String,
    /// The consumer (a group's name for a consumer group).
    pub consumer: String,
    /// The aggregate id.
    pub aggregate: String,
    /// The head: the sequence in the dead-letter stream of the letter the aggregate waits on.
    pub head: u64,
    /// The event stream sequence of the last event parked behind it (or of the head's event).
    pub last: u64,
    /// When the aggregate was parked (RFC 3339).
    pub since: String,
    /// A redrive under way: until when (Unix milliseconds) it holds the aggregate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redriving_until: Option<i64>,
}

fn failed(e: impl std::fmt::Display) -> SubscriberError {
    SubscriberError::with_source(SubscriberErrorKind::Connection, e.to_string())
}

/// Opens the parked bucket (creating it with the dead-letter stream's storage and replicas).
pub(crate) async fn open(
    js: &jetstream::Context,
    config: &DeadLetterConfig,
) -> Result<kv::Store, SubscriberError> {
    let storage = match config.storage {
        crate::jetstream::config::Storage::File => jetstream::stream::StorageType::File,
        crate::jetstream::config::Storage::Memory => jetstream::stream::StorageType::Memory,
    };
    crate::jetstream::kv::open_bucket_on(
        js,
        &parked_bucket(config),
        "aggregates parked behind a dead letter (cim-nats)",
        config.replicas,
        storage,
    )
    .await
    .map_err(|e| {
        SubscriberError::with_source(
            SubscriberErrorKind::DeadLetterSetup {
                stream: config.stream.clone(),
                description: format!("could not open the bucket {}", parked_bucket(config)),
            },
            e,
        )
    })
}

/// The parked bucket if it exists (`None`: nothing was ever parked).
pub(crate) async fn existing(
    js: &jetstream::Context,
    config: &DeadLetterConfig,
) -> Result<Option<kv::Store>, SubscriberError> {
    match js.get_key_value(parked_bucket(config)).await {
        Ok(store) => Ok(Some(store)),
        Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
            // Missing, or not readable: tell them apart by the stream.
            match js.get_stream(format!("KV_{}", parked_bucket(config))).await {
                Err(e) if crate::jetstream::api::stream_missing(&e) => Ok(None),
                Err(e) => Err(failed(e)),
                Ok(_) => Err(failed(e)),
            }
        }
        Err(e) => Err(failed(e)),
    }
}

/// A parked aggregate's key as read: its value and revision (`None`: not parked).
pub(crate) async fn read(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<(ParkedAggregate, u64)>, SubscriberError> {
    match kv.entry(key).await.map_err(failed)? {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let value = serde_json::from_slice(&entry.value)
                .map_err(|e| failed(format!("the parked aggregate {key} is not readable: {e}")))?;
            Ok(Some((value, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// Every aggregate parked for `consumer` of `stream` (all consumers' when both are `None`).
pub(crate) async fn list(
    kv: &kv::Store,
    stream: Option<&str>,
    consumer: Option<&str>,
) -> Result<Vec<ParkedAggregate>, SubscriberError> {
    let prefix = match (stream, consumer) {
        (Some(s), Some(c)) => Some(consumer_prefix(s, c)),
        _ => None,
    };
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(failed)?
        .try_collect()
        .await
        .map_err(failed)?;
    let mut parked = Vec::new();
    for key in keys {
        if prefix
            .as_ref()
            .is_some_and(|p| !key.starts_with(p.as_str()))
        {
            continue;
        }
        if let Some((value, _)) = read(kv, &key).await? {
            if stream.is_none_or(|s| s == value.stream)
                && consumer.is_none_or(|c| c == value.consumer)
            {
                parked.push(value);
            }
        }
    }
    parked.sort_by_key(|p| p.head);
    Ok(parked)
}

/// Rewrites a parked aggregate's key with `change` (which says whether to write), with the
/// revision read, reading again when it moved. `None`: the key is gone; else the value as
/// written, or as found when `change` declined (`false`).
pub(crate) async fn rewrite(
    kv: &kv::Store,
    key: &str,
    change: impl Fn(&mut ParkedAggregate) -> bool,
) -> Result<Option<(ParkedAggregate, bool)>, String> {
    for _ in 0..WRITE_ATTEMPTS {
        let Some((mut value, revision)) = read(kv, key).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        if !change(&mut value) {
            return Ok(Some((value, false)));
        }
        let body = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        match kv.update(key, body.into(), revision).await {
            Ok(_) => return Ok(Some((value, true))),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("the parked aggregate {key} kept changing"))
}

/// What a subscriber's consumer knows of its parked aggregates.
pub(crate) struct Parking {
    kv: kv::Store,
    stream: Arc<str>,
    consumer: Arc<str>,
    /// The aggregates believed parked: read at start, added to when this consumer parks one,
    /// removed from when it finds one released.
    parked: Mutex<HashSet<Arc<str>>>,
}

/// Where a later event of an aggregate goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behind {
    /// Parked behind this head letter.
    Head(u64),
    /// The aggregate was released meanwhile: handle the event.
    Released,
}

impl Parking {
    /// Reads the parked aggregates of `consumer` of `stream`.
    pub(crate) async fn load(
        kv: kv::Store,
        stream: Arc<str>,
        consumer: Arc<str>,
    ) -> Result<Self, SubscriberError> {
        let parked = list(&kv, Some(&stream), Some(&consumer))
            .await?
            .into_iter()
            .map(|p| Arc::from(p.aggregate.as_str()))
            .collect::<HashSet<_>>();
        if !parked.is_empty() {
            tracing::info!(stream = %stream, consumer = %consumer, parked = parked.len(),
                "aggregates parked behind dead letters: their events wait for a redrive");
        }
        Ok(Self {
            kv,
            stream,
            consumer,
            parked: Mutex::new(parked),
        })
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Is `aggregate` believed parked?
    pub(crate) fn is_parked(&self, aggregate: &str) -> bool {
        self.set().contains(aggregate)
    }

    fn key(&self, aggregate: &str) -> String {
        parked_key(&self.stream, &self.consumer, aggregate)
    }

    /// Before parking the event at event stream sequence `original` behind `aggregate`'s head:
    /// raises the key's `last` to it. [`Behind::Released`] when the key is gone (a redrive
    /// released the aggregate).
    pub(crate) async fn promise(&self, aggregate: &str, original: u64) -> Result<Behind, String> {
        // Not raised when already as high: promised by an earlier delivery of this event.
        let raised = rewrite(&self.kv, &self.key(aggregate), |value| {
            let raise = value.last < original;
            if raise {
                value.last = original;
            }
            raise
        })
        .await?;
        match raised {
            Some((value, _)) => Ok(Behind::Head(value.head)),
            None => {
                self.set().remove(aggregate);
                Ok(Behind::Released)
            }
        }
    }

    /// Parks `aggregate` behind the letter `head` (of the event at `original`): creates its key,
    /// or raises `last` if it is parked already.
    pub(crate) async fn park(
        &self,
        aggregate: &str,
        head: u64,
        original: u64,
    ) -> Result<(), String> {
        let key = self.key(aggregate);
        let value = ParkedAggregate {
            stream: self.stream.to_string(),
            consumer: self.consumer.to_string(),
            aggregate: aggregate.to_owned(),
            head,
            last: original,
            since: chrono::Utc::now().to_rfc3339(),
            redriving_until: None,
        };
        let body = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        match self.kv.create(&key, body.into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                if self.promise(aggregate, original).await? == Behind::Released {
                    // Released between the two: create it again.
                    return Box::pin(self.park(aggregate, head, original)).await;
                }
            }
            Err(e) => return Err(e.to_string()),
        }
        self.set().insert(Arc::from(aggregate));
        tracing::warn!(
            aggregate,
            head,
            "aggregate parked: its later events wait behind dead letter {head}"
        );
        Ok(())
    }
}

impl std::fmt::Debug for Parking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parking")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("parked", &self.set().len())
            .finish_non_exhaustive()
    }
}

/// How long a redrive holds a parked aggregate before another may take it (a redrive whose
/// process died).
pub(crate) const REDRIVE_HOLD: Duration = Duration::from_secs(60);
