//! Appends to several aggregates at once: one atomic batch (ADR-50) on the domain's stream, with
//! one expectation per aggregate, checked by the server. Each written aggregate's check rides on
//! its first event (no earlier message of the batch wrote its subjects); a check on an aggregate
//! only read rides on another event of the batch that carries no check of its own, or, when
//! there are not enough, on a marker message of its own on `{domain}._cim.check`
//! ([`check_marker_subject`]), which the store's readers pass over.

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::envelope::StreamSequence;
use crate::headers as h;
use crate::jetstream::api::{self, codes, Answer, Published};
use crate::store::{
    check_marker_subject, check_multi, AggregateAppend, AppendResult, ExpectedVersion,
};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::{subject_matches, Subject};

use super::position::{Last, Position};
use super::JetStreamEventStore;

/// The header that says a message is a check marker, with the aggregate it checks.
const CHECK_MARKER: &str = "Cim-Check-Aggregate-Id";

/// One message of the batch.
struct Message {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

impl JetStreamEventStore {
    pub(super) async fn append_multi_inner(
        &self,
        mut parts: Vec<AggregateAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        if parts.len() == 1 && !parts[0].events.is_empty() {
            let part = parts.remove(0);
            return Ok(vec![
                self.append_inner(&part.aggregate_id, part.expected, part.events)
                    .await?,
            ]);
        }
        let (domain, _) = check_multi(&parts, Some(self.inner.config.domain()))?;
        let mut subjects = Vec::with_capacity(parts.len());
        for part in &parts {
            subjects.push(if part.events.is_empty() {
                Vec::new()
            } else {
                self.check_events(&part.aggregate_id, &part.events)?.1
            });
        }
        let scopes: Vec<String> = parts
            .iter()
            .map(|p| Subject::aggregate_scope(&domain, &p.aggregate_id))
            .collect();
        let marker = check_marker_subject(&domain);
        if crate::store::markers_needed(&parts) > 0
            && !self
                .inner
                .config
                .subjects
                .iter()
                .any(|s| subject_matches(s, &marker))
        {
            return Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
                "a check on an aggregate only read needs a marker on {marker}, which stream {} \
                 ({:?}) does not capture",
                self.inner.config.stream_name, self.inner.config.subjects
            ))));
        }
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        let mut retries = 0;
        loop {
            // Where each aggregate is: remembered, or looked up.
            let mut positions = Vec::with_capacity(parts.len());
            let mut moved = false;
            for (part, scope) in parts.iter().zip(&scopes) {
                let position = match self.inner.positions.get(&part.aggregate_id) {
                    Some(p) if part.expected.accepts(Some(p.version)) => Some(p),
                    // New: nothing to look up (the server's check says if it is not).
                    None if part.expected == ExpectedVersion::NoStream => None,
                    _ => self.last(scope).await?.map(|l| l.position),
                };
                moved |= !part.expected.accepts(position.map(|p| p.version));
                positions.push(position);
            }
            if moved {
                return self.settle_refused(&parts, &scopes).await.and_then(|r| {
                    r.ok_or_else(|| {
                        StoreError::new(StoreErrorKind::UnexpectedAnswer(
                            "an aggregate moved, then was found where expected".to_owned(),
                        ))
                    })
                });
            }
            let messages = self.batch_messages(&parts, &subjects, &scopes, &positions, &marker)?;
            let total = messages.len() as u64;
            let outcome = {
                let _permit = self
                    .inner
                    .batches
                    .acquire()
                    .await
                    .map_err(|e| StoreError::with_source(StoreErrorKind::Connection, e))?;
                let messages = messages
                    .into_iter()
                    .map(|m| (m.subject, m.headers, m.payload))
                    .collect();
                api::publish_batch(&self.inner.client, messages, self.inner.timeout).await?
            };
            let outcome =
                match outcome {
                    Answer::Got(outcome) => outcome,
                    Answer::Reconnected if tokio::time::Instant::now() < deadline => {
                        for part in &parts {
                            self.inner.positions.forget(&part.aggregate_id);
                        }
                        continue;
                    }
                    Answer::Reconnected => return Err(StoreError::with_source(
                        StoreErrorKind::Connection,
                        "the client kept reconnecting while the append was sent; it may or may \
                         not be stored: send it again",
                    )),
                };
            match outcome {
                Published::Stored { seq, count, .. } => {
                    if count != Some(total) {
                        return Err(StoreError::new(StoreErrorKind::UnexpectedAnswer(format!(
                            "atomic batch of {total} messages acknowledged with count {count:?}"
                        ))));
                    }
                    let mut next = seq + 1 - total;
                    let mut results = Vec::with_capacity(parts.len());
                    for (part, position) in parts.iter().zip(&positions) {
                        let base = position.map_or(0, |p| p.version);
                        let n = part.events.len() as u64;
                        let sequences: Vec<StreamSequence> =
                            (next..next + n).map(StreamSequence).collect();
                        next += n;
                        if let Some(last) = sequences.last() {
                            self.inner.positions.remember(
                                &part.aggregate_id,
                                Position {
                                    version: base + n,
                                    sequence: last.0,
                                },
                            );
                        }
                        results.push(AppendResult {
                            sequences,
                            version: base + n,
                            duplicate: false,
                        });
                    }
                    return Ok(results);
                }
                Published::Refused(e)
                    if e.err_code == codes::WRONG_LAST_SEQUENCE
                        || e.err_code == codes::BATCH_DUPLICATE_MSG_ID =>
                {
                    // An aggregate moved since its position was read, or (a retry) these events
                    // are stored. Read the truth and decide.
                    if let Some(results) = self.settle_refused(&parts, &scopes).await? {
                        return Ok(results);
                    }
                    if retries < 32 {
                        retries += 1;
                        continue;
                    }
                    return Err(StoreError::new(StoreErrorKind::UnexpectedAnswer(
                        "an append to several aggregates was refused 32 times with every \
                         aggregate where expected"
                            .to_owned(),
                    )));
                }
                Published::Refused(e) => return Err(api::server_error(&e)),
            }
        }
    }

    /// After a refusal (or an aggregate found elsewhere than expected): the original results
    /// when these events are already stored (a retry), the conflict naming the first aggregate
    /// that moved, or `None` when every aggregate is where expected (a stale position: send
    /// again).
    async fn settle_refused(
        &self,
        parts: &[AggregateAppend],
        scopes: &[String],
    ) -> Result<Option<Vec<AppendResult>>, StoreError> {
        let mut lasts: Vec<Option<Last>> = Vec::with_capacity(parts.len());
        for (part, scope) in parts.iter().zip(scopes) {
            self.inner.positions.forget(&part.aggregate_id);
            lasts.push(self.last(scope).await?);
        }
        // A retry: every written aggregate holds these events right after its expected version.
        let mut stored = Vec::with_capacity(parts.len());
        for (part, last) in parts.iter().zip(&lasts) {
            if part.events.is_empty() {
                stored.push(Some(AppendResult {
                    sequences: Vec::new(),
                    version: crate::store::checked_version(part.expected),
                    duplicate: true,
                }));
                continue;
            }
            stored.push(
                self.already_stored(
                    &part.aggregate_id,
                    part.expected,
                    &part.events,
                    last.clone(),
                )
                .await?,
            );
        }
        if let Some(results) = stored.into_iter().collect::<Option<Vec<_>>>() {
            return Ok(Some(results));
        }
        for (part, last) in parts.iter().zip(&lasts) {
            let actual = last.as_ref().map(|l| l.position.version);
            if !part.expected.accepts(actual) {
                return Err(StoreError::new(StoreErrorKind::WrongExpectedVersion {
                    aggregate_id: part.aggregate_id.clone(),
                    expected: part.expected,
                    actual,
                }));
            }
        }
        Ok(None)
    }

    /// The batch: each written aggregate's events (its check on the first), then the checks on
    /// aggregates only read, on events that carry none, or on markers.
    fn batch_messages(
        &self,
        parts: &[AggregateAppend],
        subjects: &[Vec<Subject>],
        scopes: &[String],
        positions: &[Option<Position>],
        marker: &str,
    ) -> Result<Vec<Message>, StoreError> {
        let check = |headers: &mut HeaderMap, scope: &str, position: Option<Position>| {
            let last = position.map_or(0, |p| p.sequence);
            headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
            headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, scope);
        };
        let mut messages = Vec::new();
        let mut carriers = Vec::new();
        for (((part, subjects), scope), position) in
            parts.iter().zip(subjects).zip(scopes).zip(positions)
        {
            let base = position.map_or(0, |p| p.version);
            for (i, (event, subject)) in part.events.iter().zip(subjects).enumerate() {
                let mut headers =
                    self.headers_for(event, subject, &part.aggregate_id, base + 1 + i as u64)?;
                if i == 0 && part.expected != ExpectedVersion::Any {
                    check(&mut headers, scope, *position);
                } else {
                    carriers.push(messages.len());
                }
                messages.push(Message {
                    subject: subject.as_str().to_owned(),
                    headers,
                    payload: event.payload.clone(),
                });
            }
        }
        let mut carriers = carriers.into_iter();
        for ((part, scope), position) in parts.iter().zip(scopes).zip(positions) {
            if !part.events.is_empty() {
                continue;
            }
            match carriers.next() {
                Some(i) => check(&mut messages[i].headers, scope, *position),
                None => {
                    let mut headers = HeaderMap::new();
                    headers.insert(CHECK_MARKER, part.aggregate_id.as_str());
                    check(&mut headers, scope, *position);
                    messages.push(Message {
                        subject: marker.to_owned(),
                        headers,
                        payload: Bytes::new(),
                    });
                }
            }
        }
        Ok(messages)
    }
}
