//! The append protocol: the events' headers and the expectation on the aggregate's scope, one
//! publish or one atomic batch, and what an answer means: stored, a conflict, or a retry of
//! events already stored (recognised by their ids and payloads, within the dedupe window or
//! after it).

use bytes::Bytes;

use crate::envelope::StreamSequence;
use crate::headers as h;
use crate::jetstream::api::{self, codes, Answer, Published};
use crate::jetstream::codec::{self, event_headers, names};
use crate::store::{check_append, AppendResult, ExpectedVersion, NewEvent};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::{subject_matches, AggregateId, Subject};

use super::position::{Last, Position};
use super::JetStreamEventStore;

impl JetStreamEventStore {
    /// The shared checks of every store ([`check_append`]), and that the stream captures
    /// every event's subject.
    pub(super) fn check_events(
        &self,
        aggregate_id: &AggregateId,
        events: &[NewEvent],
    ) -> Result<(String, Vec<Subject>), StoreError> {
        let checked = check_append(aggregate_id, events, Some(self.inner.config.domain()))?;
        let config = &self.inner.config;
        if let Some(subject) = checked.subjects.iter().find(|subject| {
            !config
                .subjects
                .iter()
                .any(|s| subject_matches(s, subject.as_str()))
        }) {
            return Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
                "subject {subject} is not captured by stream {} ({:?})",
                config.stream_name, config.subjects
            ))));
        }
        Ok((checked.scope, checked.subjects))
    }

    pub(super) fn headers_for(
        &self,
        event: &NewEvent,
        subject: &Subject,
        aggregate_id: &AggregateId,
        version: u64,
    ) -> Result<async_nats::HeaderMap, StoreError> {
        let headers = event_headers(event, aggregate_id, version);
        let size = event.payload.len() + subject.as_str().len() + headers_len(&headers) + 64;
        if size > self.inner.max_payload {
            return Err(StoreError::new(StoreErrorKind::PayloadTooLarge {
                size,
                max: self.inner.max_payload,
            }));
        }
        Ok(headers)
    }

    /// Were these events already stored right after `expected` (a retry after the dedupe
    /// window)? Then the append is a success and this returns the original result.
    pub(super) async fn already_stored(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        last: Option<Last>,
    ) -> Result<Option<AppendResult>, StoreError> {
        let base = match expected {
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(n) => n,
            ExpectedVersion::Any => return Ok(None),
        };
        let k = events.len() as u64;
        let Some(last) = last else {
            return Ok(None);
        };
        let top = last.position.version;
        if top < base + k {
            return Ok(None);
        }
        if top == base + k {
            // The aggregate's last event decides: ours (the events of one append are stored
            // together, at consecutive sequences) or someone else's.
            let Some(mine) = events.last() else {
                return Ok(None);
            };
            let ours = last.event_id == Some(*mine.event_id.as_uuid());
            if ours && last.payload != mine.payload {
                return Err(reused_id(mine, last.position.sequence));
            }
            return Ok(ours.then(|| AppendResult {
                sequences: (last.position.sequence + 1 - k..=last.position.sequence)
                    .map(StreamSequence)
                    .collect(),
                version: top,
                duplicate: true,
            }));
        }
        // Ours, if stored, are the events right after version `base`. Read back from the last
        // event in growing windows of stream sequences rather than the whole history, so that a
        // conflict costs what the expectation lags behind, not what the aggregate holds. A window
        // that starts after version `base + 1` shows as a version gap: widen it.
        let mut window = 64 * (top - base);
        let stored = loop {
            let from = last.position.sequence.saturating_sub(window);
            match self
                .read_versions_after(aggregate_id, base, StreamSequence(from))
                .await?
            {
                Ok(stored) => break stored,
                Err(_) if from > 0 => window = window.saturating_mul(8),
                Err(gap) => return Err(gap.into_error()),
            }
        };
        if stored.len() < events.len() {
            return Ok(None);
        }
        let same = stored
            .iter()
            .zip(events)
            .all(|(s, e)| s.event_id == e.event_id);
        if !same {
            return Ok(None);
        }
        if let Some((s, e)) = stored
            .iter()
            .zip(events)
            .find(|(s, e)| s.payload != e.payload)
        {
            return Err(reused_id(e, s.stream_sequence.0));
        }
        Ok(Some(AppendResult {
            sequences: stored[..events.len()]
                .iter()
                .map(|s| s.stream_sequence)
                .collect(),
            version: base + events.len() as u64,
            duplicate: true,
        }))
    }

    async fn publish_one(
        &self,
        subject: &Subject,
        mut headers: async_nats::HeaderMap,
        scope: &str,
        last: u64,
        payload: Bytes,
    ) -> Result<Answer<Published>, StoreError> {
        headers.insert(names::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string());
        headers.insert(names::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, scope);
        api::publish(
            &self.inner.client,
            subject.as_str().to_owned(),
            headers,
            payload,
            self.inner.timeout,
        )
        .await
    }

    /// Publishes several events as one atomic batch (ADR-50): all are stored or none; the
    /// aggregate's expectation on the first.
    async fn publish_batch(
        &self,
        subjects: &[Subject],
        headers: Vec<async_nats::HeaderMap>,
        events: &[NewEvent],
        scope: &str,
        last: u64,
    ) -> Result<Answer<Published>, StoreError> {
        let messages = subjects
            .iter()
            .zip(headers)
            .zip(events)
            .enumerate()
            .map(|(i, ((subject, mut headers), event))| {
                if i == 0 {
                    headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
                    headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, scope);
                }
                (subject.as_str().to_owned(), headers, event.payload.clone())
            })
            .collect();
        api::publish_batch(&self.inner.client, messages, self.inner.timeout).await
    }

    pub(super) async fn append_inner(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let (scope, subjects) = self.check_events(aggregate_id, &events)?;
        let mut retries = 0;
        // An append whose outcome the client lost (it reconnected meanwhile) is sent again
        // until this deadline: the same events with the same expectation, which the server
        // stores once (a retry that meets its own first attempt is recognised below).
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        loop {
            // A remembered position saves the lookup; the server's check makes it safe.
            let (position, last) = match self.inner.positions.get(aggregate_id) {
                Some(p) if expected.accepts(Some(p.version)) => (Some(p), None),
                // A new aggregate: nothing to look up (the server's check says if it is not).
                None if expected == ExpectedVersion::NoStream => (None, None),
                _ => {
                    let last = self.last(&scope).await?;
                    (last.as_ref().map(|l| l.position), last)
                }
            };
            let actual = position.map(|p| p.version);
            if !expected.accepts(actual) {
                if let Some(result) = self
                    .already_stored(aggregate_id, expected, &events, last)
                    .await?
                {
                    return Ok(result);
                }
                return Err(StoreError::new(StoreErrorKind::WrongExpectedVersion {
                    aggregate_id: aggregate_id.clone(),
                    expected,
                    actual,
                }));
            }
            let base = actual.unwrap_or(0);
            let last = position.map_or(0, |p| p.sequence);
            let mut headers = Vec::with_capacity(events.len());
            for (i, (event, subject)) in events.iter().zip(&subjects).enumerate() {
                headers.push(self.headers_for(
                    event,
                    subject,
                    aggregate_id,
                    base + 1 + i as u64,
                )?);
            }
            let outcome = if events.len() == 1 {
                let headers = headers.pop().unwrap_or_default();
                self.publish_one(
                    &subjects[0],
                    headers,
                    &scope,
                    last,
                    events[0].payload.clone(),
                )
                .await?
            } else {
                let _permit = self
                    .inner
                    .batches
                    .acquire()
                    .await
                    .map_err(|e| StoreError::with_source(StoreErrorKind::Connection, e))?;
                self.publish_batch(&subjects, headers, &events, &scope, last)
                    .await?
            };
            let outcome = match outcome {
                Answer::Got(outcome) => outcome,
                Answer::Reconnected if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(aggregate = %aggregate_id, "the client reconnected during an append; sending it again");
                    self.inner.positions.forget(aggregate_id);
                    continue;
                }
                Answer::Reconnected => {
                    return Err(StoreError::with_source(
                        StoreErrorKind::Connection,
                        "the client kept reconnecting while the append was sent; it may or may \
                         not be stored: send it again",
                    ))
                }
            };
            match outcome {
                Published::Stored {
                    seq,
                    duplicate: false,
                    count,
                } => {
                    let n = events.len() as u64;
                    if n > 1 && count != Some(n) {
                        return Err(StoreError::new(StoreErrorKind::UnexpectedAnswer(format!(
                            "atomic batch of {n} events acknowledged with count {count:?}"
                        ))));
                    }
                    let version = base + n;
                    self.inner.positions.remember(
                        aggregate_id,
                        Position {
                            version,
                            sequence: seq,
                        },
                    );
                    return Ok(AppendResult {
                        sequences: (seq + 1 - n..=seq).map(StreamSequence).collect(),
                        version,
                        duplicate: false,
                    });
                }
                Published::Stored {
                    seq,
                    duplicate: true,
                    ..
                } => {
                    // The server recognised the event id: the event is stored at `seq`.
                    let raw = self.message_at(seq).await?.ok_or_else(|| {
                        StoreError::new(StoreErrorKind::UnexpectedAnswer(format!(
                            "duplicate acknowledged at {seq}, but no message is there"
                        )))
                    })?;
                    if raw.subject != subjects[0].as_str() || raw.payload != events[0].payload {
                        return Err(reused_id(&events[0], seq));
                    }
                    let version = codec::aggregate_version(&raw)?;
                    return Ok(AppendResult {
                        sequences: vec![StreamSequence(seq)],
                        version,
                        duplicate: true,
                    });
                }
                Published::Refused(e)
                    if e.err_code == codes::WRONG_LAST_SEQUENCE
                        || e.err_code == codes::BATCH_DUPLICATE_MSG_ID =>
                {
                    // Someone else appended since the position was read, or (batch) these
                    // events are already stored. Read the truth and decide.
                    self.inner.positions.forget(aggregate_id);
                    let last = self.last(&scope).await?;
                    let actual = last.as_ref().map(|l| l.position.version);
                    if let Some(result) = self
                        .already_stored(aggregate_id, expected, &events, last)
                        .await?
                    {
                        return Ok(result);
                    }
                    if expected.accepts(actual) && retries < 32 {
                        retries += 1;
                        continue;
                    }
                    return Err(StoreError::new(StoreErrorKind::WrongExpectedVersion {
                        aggregate_id: aggregate_id.clone(),
                        expected,
                        actual,
                    }));
                }
                Published::Refused(e) => return Err(api::server_error(&e)),
            }
        }
    }
}

/// An append whose event id is already stored for another event: a reused id, not a retry.
fn reused_id(event: &NewEvent, sequence: u64) -> StoreError {
    StoreError::new(StoreErrorKind::InvalidAppend(format!(
        "event id {} is already used by another event (stream sequence {sequence}); \
         a retry must resend the same event, and a new event needs a new id",
        event.event_id
    )))
}

fn headers_len(headers: &async_nats::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, vs)| {
            let name = AsRef::<str>::as_ref(k).len();
            vs.iter()
                .map(|v| name + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum::<usize>()
        + 12
}
