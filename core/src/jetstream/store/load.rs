//! Reading one aggregate: its literal subjects through batched direct gets (never a wildcard
//! filter over the stream), its last event through one direct get on its scope; and when the
//! client reconnects meanwhile (perhaps because of a message it cannot parse), the same through
//! the JSON API, remembering the subjects where such a message lies.

use crate::envelope::{StoredEvent, StreamSequence};
use crate::jetstream::api::{self, Answer, DirectGet, MsgGet};
use crate::jetstream::codec::{self, decode_stored, RawMessage};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::{AggregateId, Subject};

use super::position::{Last, Position};
use super::JetStreamEventStore;

/// Messages per page when reading an aggregate.
const PAGE: usize = 1000;

/// An aggregate's versions do not follow each other in what was read: a load reports it as an
/// unreadable message; a reader that started in the middle reads from further back.
#[derive(Debug)]
pub(super) struct VersionGap {
    sequence: u64,
    reason: String,
}

impl VersionGap {
    pub(super) fn into_error(self) -> StoreError {
        StoreError::new(StoreErrorKind::Decode {
            sequence: self.sequence,
            reason: self.reason,
        })
    }
}

impl JetStreamEventStore {
    /// The last event of the aggregate, read from the server (one direct get).
    pub(super) async fn position(&self, scope: &str) -> Result<Option<Position>, StoreError> {
        Ok(self.last(scope).await?.map(|l| l.position))
    }

    /// The last event of the aggregate with its id.
    pub(super) async fn last(&self, scope: &str) -> Result<Option<Last>, StoreError> {
        let raw = self.last_raw(scope).await?;
        raw.map(|raw| {
            // A message the client cannot parse may still say its version: an append needs
            // only that (a load of the aggregate fails, naming the message).
            let version = codec::aggregate_version(&raw)?;
            let event_id = codec::event_id(&raw);
            Ok(Last {
                position: Position {
                    version,
                    sequence: raw.sequence,
                },
                event_id,
                payload: raw.payload.clone(),
            })
        })
        .transpose()
    }

    /// The last event of `aggregate_id`, decoded (one direct get); its position is remembered
    /// for the next append.
    pub(super) async fn last_event_inner(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let scope = Subject::aggregate_scope(self.inner.config.domain(), aggregate_id);
        let Some(raw) = self.last_raw(&scope).await? else {
            return Ok(None);
        };
        let event = decode_stored(raw)?;
        self.inner.positions.remember(
            aggregate_id,
            Position {
                version: event.aggregate_version,
                sequence: event.stream_sequence.0,
            },
        );
        Ok(Some(event))
    }

    /// The last message on `scope`, as stored.
    async fn last_raw(&self, scope: &str) -> Result<Option<RawMessage>, StoreError> {
        let raw = if self.is_unparseable(scope) {
            self.safe_get(&MsgGet {
                last_by_subj: Some(scope),
                ..MsgGet::default()
            })
            .await?
        } else {
            let request = DirectGet {
                last_by_subj: Some(scope.to_owned()),
                ..DirectGet::default()
            };
            match api::direct_get(
                &self.inner.client,
                &self.inner.direct_subject,
                &request,
                self.inner.timeout,
            )
            .await?
            {
                Answer::Got(raw) => raw,
                // The client reconnected: perhaps because this very message is one it cannot
                // parse. Read it through the JSON API, which cannot break the connection.
                Answer::Reconnected => {
                    let raw = self
                        .safe_get(&MsgGet {
                            last_by_subj: Some(scope),
                            ..MsgGet::default()
                        })
                        .await?;
                    if raw.as_ref().is_some_and(|r| r.defect.is_some()) {
                        self.mark_unparseable(scope);
                    }
                    raw
                }
            }
        };
        Ok(raw)
    }

    /// One message by its stream sequence.
    pub(super) async fn message_at(&self, sequence: u64) -> Result<Option<RawMessage>, StoreError> {
        let request = DirectGet {
            seq: Some(sequence),
            ..DirectGet::default()
        };
        match api::direct_get(
            &self.inner.client,
            &self.inner.direct_subject,
            &request,
            self.inner.timeout,
        )
        .await?
        {
            Answer::Got(raw) => Ok(raw),
            Answer::Reconnected => {
                self.safe_get(&MsgGet {
                    seq: Some(sequence),
                    ..MsgGet::default()
                })
                .await
            }
        }
    }

    /// One message through the JSON API (see [`api::msg_get`]).
    pub(super) async fn safe_get(
        &self,
        request: &MsgGet<'_>,
    ) -> Result<Option<RawMessage>, StoreError> {
        api::msg_get(
            &self.inner.client,
            &self.inner.config.stream_name,
            request,
            self.inner.timeout,
        )
        .await
    }

    pub(super) fn is_unparseable(&self, subject: &str) -> bool {
        self.inner
            .unparseable
            .lock()
            .is_ok_and(|s| !s.is_empty() && s.contains(subject))
    }

    /// Remembers that `subject` holds a message the client cannot parse, and so does the scope
    /// of its aggregate.
    pub(super) fn mark_unparseable(&self, subject: &str) {
        /// More than this many such subjects in one process: reads of the others take the fast
        /// path again (and reconnect once each).
        const MAX_REMEMBERED: usize = 100_000;
        let domain = self.inner.config.domain();
        let scope = subject
            .rsplit_once('.')
            .and_then(|(_, id)| AggregateId::new(id).ok())
            .map(|id| Subject::aggregate_scope(domain, &id));
        tracing::warn!(
            stream = %self.inner.config.stream_name,
            subject,
            "a message the NATS client cannot parse is stored on this subject: it is read through \
             the JSON API from now on"
        );
        if let Ok(mut set) = self.inner.unparseable.lock() {
            if set.len() < MAX_REMEMBERED {
                set.insert(subject.to_owned());
                if let Some(scope) = scope {
                    set.insert(scope);
                }
            }
        }
    }

    pub(super) async fn read_aggregate_after_inner(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // The aggregate's literal subjects, from the subject index; then all of them read by
        // batched direct gets on one inbox. A wildcard filter over a big stream is slow; literal
        // subjects are not.
        self.read_versions_after(aggregate_id, after_version, after_sequence)
            .await?
            .map_err(VersionGap::into_error)
    }

    /// The aggregate's events with a version above `after_version` among those stored after
    /// `after_sequence`; a [`VersionGap`] when the first of them is not version
    /// `after_version + 1` (the read started too late, or the versions do not follow).
    pub(super) async fn read_versions_after(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Result<Vec<StoredEvent>, VersionGap>, StoreError> {
        let filter = Subject::aggregate_scope(self.inner.config.domain(), aggregate_id);
        let (_, subjects) = api::stream_state(
            &self.inner.client,
            &self.inner.config.stream_name,
            Some(&filter),
            self.inner.timeout,
        )
        .await?;
        let messages = self
            .read_subjects(subjects.into_keys().collect(), after_sequence)
            .await?;
        Self::assemble(aggregate_id, messages, after_version)
    }

    pub(super) async fn read_aggregate_routed_inner(
        &self,
        aggregate_id: &AggregateId,
        routing_subjects: &[&str],
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let domain = self.inner.config.domain();
        let subjects: Vec<String> = routing_subjects
            .iter()
            .filter(|r| r.split('.').next() == Some(domain))
            .map(|r| Subject::for_event(r, aggregate_id).into_string())
            .collect();
        // The subjects are known: read them all at once, and, in parallel, the aggregate's last
        // event, which tells whether an event sits on a subject the caller did not name.
        let scope = Subject::aggregate_scope(domain, aggregate_id);
        let (messages, last) = tokio::join!(
            self.read_subjects(subjects, after_sequence),
            self.position(&scope)
        );
        let last = last?.map_or(0, |p| p.version);
        // Anything but the complete run of versions (a subject the caller did not name, an
        // unreadable message) is read again the untyped way, which names what is wrong.
        let complete = match Self::assemble(aggregate_id, messages?, after_version) {
            Ok(Ok(events)) => {
                let top = events.last().map_or(after_version, |e| e.aggregate_version);
                (top == last.max(after_version)).then_some(events)
            }
            Ok(Err(_)) | Err(_) => None,
        };
        match complete {
            Some(events) => Ok(events),
            None => {
                self.read_aggregate_after_inner(aggregate_id, after_version, after_sequence)
                    .await
            }
        }
    }

    pub(super) async fn aggregate_version_inner(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<u64>, StoreError> {
        let scope = Subject::aggregate_scope(self.inner.config.domain(), aggregate_id);
        let best = self.position(&scope).await?;
        Ok(best.map(|p| p.version))
    }

    pub(super) async fn last_sequence_inner(&self) -> Result<StreamSequence, StoreError> {
        let (last, _) = api::stream_state(
            &self.inner.client,
            &self.inner.config.stream_name,
            None,
            self.inner.timeout,
        )
        .await?;
        Ok(StreamSequence(last))
    }

    /// Every message on the given literal subjects after `after`: one batched direct get per
    /// subject, all on one inbox, repeated for the subjects that had more than a page.
    pub(super) async fn read_subjects(
        &self,
        subjects: Vec<String>,
        after: StreamSequence,
    ) -> Result<Vec<RawMessage>, StoreError> {
        let mut out = Vec::new();
        let (known, fast): (Vec<String>, Vec<String>) =
            subjects.into_iter().partition(|s| self.is_unparseable(s));
        let mut safe: Vec<(String, u64)> = known.into_iter().map(|s| (s, after.0 + 1)).collect();
        let mut round: Vec<(String, u64)> = fast.into_iter().map(|s| (s, after.0 + 1)).collect();
        while !round.is_empty() {
            let requests: Vec<DirectGet> = round
                .iter()
                .map(|(subject, from)| DirectGet {
                    seq: Some(*from),
                    next_by_subj: Some(subject.clone()),
                    batch: Some(PAGE),
                    ..DirectGet::default()
                })
                .collect();
            let (page, answer) = api::direct_batches(
                &self.inner.client,
                &self.inner.direct_subject,
                &requests,
                self.inner.timeout,
            )
            .await?;
            out.extend(page.messages);
            match answer {
                Answer::Got(()) => {
                    round = page
                        .pending
                        .into_iter()
                        .filter(|(_, (_, pending))| *pending > 0)
                        .map(|(subject, (last, _))| (subject, last + 1))
                        .collect();
                }
                // The client reconnected, perhaps because of a message on one of these
                // subjects that it cannot parse: each goes on through the JSON API from where
                // it got to.
                Answer::Reconnected => {
                    safe.extend(round.drain(..).map(|(subject, from)| {
                        let from = page
                            .pending
                            .get(&subject)
                            .map_or(from, |(last, _)| last + 1);
                        (subject, from)
                    }));
                }
            }
        }
        let reads = safe
            .iter()
            .map(|(subject, from)| self.read_subject_safely(subject, *from));
        for messages in futures::future::try_join_all(reads).await? {
            out.extend(messages);
        }
        Ok(out)
    }

    /// Every message on `subject` from sequence `from` on, one JSON message get each, up to and
    /// including the first one the client cannot parse (which is remembered, and which fails
    /// the load that reads it).
    pub(super) async fn read_subject_safely(
        &self,
        subject: &str,
        mut from: u64,
    ) -> Result<Vec<RawMessage>, StoreError> {
        let mut out = Vec::new();
        while let Some(raw) = self
            .safe_get(&MsgGet {
                seq: Some(from),
                next_by_subj: Some(subject),
                ..MsgGet::default()
            })
            .await?
        {
            from = raw.sequence + 1;
            let defective = raw.defect.is_some();
            out.push(raw);
            if defective {
                self.mark_unparseable(subject);
                break;
            }
        }
        Ok(out)
    }

    /// Decodes an aggregate's messages in stream order and checks that the versions after
    /// `after_version` follow each other.
    pub(super) fn assemble(
        aggregate_id: &AggregateId,
        mut messages: Vec<RawMessage>,
        after_version: u64,
    ) -> Result<Result<Vec<StoredEvent>, VersionGap>, StoreError> {
        messages.sort_by_key(|raw| raw.sequence);
        messages.dedup_by_key(|raw| raw.sequence);
        let mut out = Vec::with_capacity(messages.len());
        for raw in messages {
            let event = decode_stored(raw)?;
            if event.aggregate_version > after_version {
                out.push(event);
            }
        }
        let mut expected_version = after_version;
        for event in &out {
            expected_version += 1;
            if event.aggregate_version != expected_version {
                return Ok(Err(VersionGap {
                    sequence: event.stream_sequence.0,
                    reason: format!(
                        "aggregate {aggregate_id} has version {} where {expected_version} was expected",
                        event.aggregate_version
                    ),
                }));
            }
        }
        Ok(Ok(out))
    }
}
