//! The partitioned view of a domain's event stream: what a consumer group works from, so that
//! each partition (a share of the aggregates) is read in the stream's order by one member.
//!
//! An event's stored subject cannot take a partition token (the store's per-aggregate
//! expectation and loads rely on `{domain}.{entity}.{operation}.{id}`), so the partitions live
//! in a stream of their own, `{STREAM}_PARTITIONED`, sourced from the event stream by the server
//! through its `partition()` subject transform (ADR-30): the event stored on
//! `{domain}.{entity}.{operation}.{id}` is stored again on
//! `cim_p.{partition}.{domain}.{entity}.{operation}.{id}`, with its headers, where
//! `partition` = FNV-1a-32 of the `id` token, modulo the partition count ([`partition_of`]).
//! The view has no subjects of its own (nothing can publish into it); it costs the storage of
//! the events again (limits retention, as the event stream), and lags the event stream by the
//! server's sourcing (milliseconds here). Check markers (`{domain}._cim.check`) are not
//! sourced. Each message carries the server's `Nats-Stream-Source` header, which names the
//! event stream's sequence ([`PartitionedView::origin`]).

use async_nats::jetstream::{self, stream};

use crate::envelope::StreamSequence;
use crate::jetstream::setup::{SetupError, SetupErrorKind};
use crate::jetstream::store::JetStreamEventStore;
use crate::subject::AggregateId;

/// The first token of the view's subjects.
pub const PARTITION_PREFIX: &str = "cim_p";

/// The partition of an aggregate's events among `partitions`: FNV-1a-32 of its id token, modulo
/// `partitions`, as the server's `partition()` transform computes it.
///
/// ```
/// use cim_nats::jetstream::partition_of;
/// use cim_nats::AggregateId;
///
/// let id = AggregateId::new("acc-1").unwrap();
/// assert!(partition_of(&id, 16) < 16);
/// assert_eq!(partition_of(&id, 1), 0);
/// ```
pub fn partition_of(id: &AggregateId, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in id.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// The partitioned view of one event stream ([`PartitionedView::ensure`]).
#[derive(Debug, Clone)]
pub struct PartitionedView {
    stream: String,
    origin: String,
    partitions: u32,
}

impl PartitionedView {
    /// The view of `store`'s stream in `partitions` partitions, created if it does not exist.
    ///
    /// # Errors
    ///
    /// [`SetupErrorKind::InvalidConfig`] for 0 partitions or more than 1,024;
    /// [`SetupErrorKind::StreamConfigMismatch`] when the view exists with another partition
    /// count (or from another stream); [`SetupErrorKind::Server`] when the server refuses it.
    pub async fn ensure(store: &JetStreamEventStore, partitions: u32) -> Result<Self, SetupError> {
        if partitions == 0 || partitions > 1024 {
            return Err(SetupError::new(SetupErrorKind::InvalidConfig(format!(
                "a partitioned view has 1 to 1,024 partitions, not {partitions}"
            ))));
        }
        let config = store.config();
        let origin = config.stream_name.clone();
        let name = format!("{origin}_PARTITIONED");
        let domain = config.domain();
        let source = stream::Source {
            name: origin.clone(),
            subject_transforms: vec![stream::SubjectTransform {
                source: format!("{domain}.*.*.*"),
                destination: format!(
                    "{PARTITION_PREFIX}.{{{{partition({partitions},3)}}}}.{domain}.\
                     {{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}"
                ),
            }],
            ..Default::default()
        };
        let wanted = stream::Config {
            name: name.clone(),
            description: Some(format!(
                "{origin} in {partitions} partitions by aggregate (cim-nats consumer groups)"
            )),
            sources: Some(vec![source]),
            retention: stream::RetentionPolicy::Limits,
            storage: match config.storage {
                crate::jetstream::Storage::File => stream::StorageType::File,
                crate::jetstream::Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: config.replicas,
            allow_direct: true,
            ..Default::default()
        };
        let context: &jetstream::Context = store.context();
        let server = |e: &dyn std::fmt::Display| {
            SetupError::new(SetupErrorKind::Server {
                code: 0,
                description: format!("partitioned view {name}: {e}"),
            })
        };
        let info = match context.get_stream(&name).await {
            Ok(mut existing) => existing.info().await.map_err(|e| server(&e))?.clone(),
            Err(_) => context
                .get_or_create_stream(wanted.clone())
                .await
                .map_err(|e| server(&e))?
                .info()
                .await
                .map_err(|e| server(&e))?
                .clone(),
        };
        let have = info
            .config
            .sources
            .as_ref()
            .and_then(|s| s.first())
            .map(|s| {
                (
                    s.name.clone(),
                    s.subject_transforms
                        .first()
                        .map(|t| t.destination.clone())
                        .unwrap_or_default(),
                )
            });
        let want = wanted.sources.as_ref().and_then(|s| s.first()).map(|s| {
            (
                s.name.clone(),
                s.subject_transforms
                    .first()
                    .map(|t| t.destination.clone())
                    .unwrap_or_default(),
            )
        });
        if have != want {
            let found = have
                .as_ref()
                .and_then(|(_, dest)| partitions_in(dest))
                .map_or_else(|| format!("{have:?}"), |n| format!("{n} partitions"));
            return Err(SetupError::new(SetupErrorKind::StreamConfigMismatch {
                stream: name,
                differences: vec![format!(
                    "the view has {found}, not {partitions} partitions of {origin}"
                )],
            }));
        }
        Ok(Self {
            stream: name,
            origin,
            partitions,
        })
    }

    /// The view's stream.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// Its partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The subject filter of partition `partition`: `cim_p.{partition}.>`.
    pub fn partition_filter(&self, partition: u32) -> String {
        format!("{PARTITION_PREFIX}.{partition}.>")
    }

    /// The event stream's sequence and subject of a message of the view; `None` for a message
    /// that is not one of its events.
    pub fn origin(
        &self,
        message: &async_nats::jetstream::Message,
    ) -> Option<(StreamSequence, String)> {
        let source = message.headers.as_ref()?.get("Nats-Stream-Source")?;
        let mut parts = source.as_str().split_whitespace();
        let stream = parts.next()?;
        // `ORIGIN 42 ...` (or `ORIGIN:domain 42 ...` for a stream of another domain).
        if stream.split(':').next()? != self.origin {
            return None;
        }
        let sequence = parts.next()?.parse().ok()?;
        let subject = message
            .subject
            .as_str()
            .strip_prefix(PARTITION_PREFIX)?
            .strip_prefix('.')?
            .split_once('.')?
            .1
            .to_owned();
        Some((StreamSequence(sequence), subject))
    }
}

/// The partition count a view's transform names.
fn partitions_in(destination: &str) -> Option<u32> {
    destination
        .split("partition(")
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_1a_32_of_the_id_token() {
        // FNV-1a-32 reference values.
        let id = |s: &str| AggregateId::new(s).unwrap();
        let fnv = |s: &str| partition_of(&id(s), u32::MAX);
        assert_eq!(fnv("a"), 0xe40c_292c);
        assert_eq!(fnv("foobar"), 0xbf9c_f968);
        assert_eq!(partition_of(&id("anything"), 1), 0);
    }

    #[test]
    fn the_partition_count_is_read_back_from_the_transform() {
        assert_eq!(
            partitions_in("cim_p.{{partition(16,3)}}.bank.{{wildcard(1)}}"),
            Some(16)
        );
        assert_eq!(partitions_in("bank.>"), None);
    }
}
