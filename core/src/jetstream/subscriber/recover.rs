//! Getting back deliveries lost on the way, and getting past a message the client cannot parse.
//!
//! `async-nats` drops the whole connection when a delivered message's headers do not parse
//! (bytes that are not UTF-8, a header name with a space: another client may have stored
//! them). The message and the rest of its pull batch are lost with the socket; the server
//! counts them as delivered, and would deliver them again only after the ack wait, the bad one
//! each time breaking the connection again, until the maximum deliveries.
//!
//! A subscription notices a loss in two ways: a delivery whose consumer sequence is not the one
//! after the last (the server went on delivering after the reconnection), or the client's
//! connection generation changing. It then *recovers*:
//!
//! 1. It stops pulling, and holds back whatever still arrives, until the pending pull request
//!    has ended (the fence: nothing can arrive after it).
//! 2. It asks the consumer what it delivered (its delivery and stream sequences), and looks at
//!    every message it may have lost through the JSON API (`STREAM.MSG.GET`, headers
//!    base64-encoded, never parsed by the client).
//! 3. A message the client cannot parse goes to the dead letter (its headers read leniently)
//!    and is terminated through an acknowledgement subject built for its stream sequence
//!    (`$JS.ACK.<stream>.<consumer>.1.<stream seq>.<delivery seq>.0.0`: the server finds a
//!    pending message by its stream sequence). It is never delivered again.
//! 4. Every other lost message, and every one held back, is given back (`-NAK`) in stream
//!    order, so that the server delivers them again at once, still in order per aggregate,
//!    rather than after the ack wait.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::jetstream::{self, consumer::PullConsumer};

use crate::jetstream::api::{self, MsgGet};
use crate::jetstream::codec::ack_info;
use crate::jetstream::codec::RawMessage;
use crate::jetstream::subscriber::process::{ConsumerContext, Original};
use crate::jetstream::subscriber::setup::API_TIMEOUT;

/// Most messages looked at for lost redeliveries (below the newest delivery received) in one
/// recovery; beyond, they come back after the ack wait.
const MAX_OLDER_PROBES: u64 = 2_000;

/// Where the deliveries of one consumer are: what must come next.
#[derive(Debug)]
pub(crate) struct Continuity {
    stats: Arc<async_nats::Statistics>,
    epoch: u64,
    /// The consumer sequence of the last delivery received in order.
    delivered: u64,
    /// The highest stream sequence among the deliveries received in order.
    stream_sequence: u64,
}

/// What a delivery says about continuity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// It is the next one.
    InOrder,
    /// Deliveries before it were lost.
    Gap,
}

impl Continuity {
    /// Starts after `delivered`, the consumer's delivery sequence when the subscription began.
    pub(crate) fn new(client: &async_nats::Client, delivered: u64, stream_sequence: u64) -> Self {
        let stats = client.statistics();
        let epoch = stats.connects.load(Ordering::Relaxed);
        Self {
            stats,
            epoch,
            delivered,
            stream_sequence,
        }
    }

    /// Checks a delivery and, if it is the next one, records it.
    pub(crate) fn check(&mut self, message: &jetstream::Message) -> Check {
        let Some(info) = message.reply.as_deref().and_then(ack_info) else {
            return Check::InOrder;
        };
        if info.delivery_sequence > self.delivered + 1 {
            return Check::Gap;
        }
        self.delivered = self.delivered.max(info.delivery_sequence);
        self.stream_sequence = self.stream_sequence.max(info.stream_sequence);
        Check::InOrder
    }

    /// Has the client reconnected since the last look?
    pub(crate) fn reconnected(&self) -> bool {
        self.stats.connects.load(Ordering::Relaxed) != self.epoch
    }
}

/// A recovery under way: the deliveries held back since it started.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pub(crate) held_back: Vec<jetstream::Message>,
}

/// What to do with one message in the recovery, in stream order.
enum Action {
    /// A lost message the client can read: give it back.
    GiveBack(u64),
    /// A held-back delivery: give it back through its own reply subject.
    Release(async_nats::Subject),
    /// A message the client cannot parse: dead-letter it and terminate it.
    Terminate(Box<RawMessage>),
}

/// Ends a recovery (the pull request has ended, so nothing more can arrive): asks the consumer
/// what it delivered, deals with each message that may have been lost, gives back what was held
/// back, and moves `continuity` to where the consumer is. `Err`: the consumer could not be asked
/// (the caller tries again shortly).
pub(crate) async fn finish(
    ctx: &ConsumerContext,
    consumer: &mut PullConsumer,
    continuity: &mut Continuity,
    recovery: Recovery,
) -> Result<(), Recovery> {
    let info = match tokio::time::timeout(API_TIMEOUT, consumer.info()).await {
        Ok(Ok(info)) => info.clone(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "consumer info unavailable; recovering later");
            return Err(recovery);
        }
        Err(_) => {
            tracing::warn!("consumer info timed out; recovering later");
            return Err(recovery);
        }
    };
    let delivered = info.delivered.consumer_sequence;
    let newest = info.delivered.stream_sequence;
    let floor = info.ack_floor.stream_sequence;
    let held_back: Vec<(u64, async_nats::Subject)> = recovery
        .held_back
        .into_iter()
        .filter_map(|m| {
            let info = m.reply.as_deref().and_then(ack_info)?;
            Some((info.stream_sequence, m.message.reply?))
        })
        .collect();
    let lost = delivered.saturating_sub(continuity.delivered + held_back.len() as u64);
    let mut actions: Vec<(u64, Action)> = held_back
        .iter()
        .map(|(sequence, reply)| (*sequence, Action::Release(reply.clone())))
        .collect();
    if lost > 0 {
        let skip: Vec<u64> = held_back.iter().map(|(s, _)| *s).collect();
        // New deliveries come in stream order: those lost are after the newest received.
        let found = probe(ctx, continuity.stream_sequence + 1, newest, &skip, u64::MAX).await;
        let more = lost.saturating_sub(found.len() as u64);
        for raw in found {
            actions.push(action_for(raw));
        }
        if more > 0 {
            // Some were redeliveries of older events: look below, past what this subscriber
            // holds.
            let held = ctx.held.sequences();
            let mut skip = skip;
            skip.extend(held);
            let older = probe(
                ctx,
                floor + 1,
                continuity.stream_sequence,
                &skip,
                MAX_OLDER_PROBES,
            )
            .await;
            for raw in older {
                actions.push(action_for(raw));
            }
        }
    }
    actions.sort_by_key(|(sequence, _)| *sequence);
    let mut terminated = 0;
    let mut given_back = 0;
    for (sequence, action) in actions {
        match action {
            Action::Release(reply) => {
                ctx.nak_reply(reply, std::time::Duration::ZERO).await;
                given_back += 1;
            }
            Action::GiveBack(sequence) => {
                let subject = ack_subject(ctx, sequence, delivered);
                ctx.nak_reply(subject.into(), std::time::Duration::ZERO)
                    .await;
                given_back += 1;
            }
            Action::Terminate(raw) => {
                let defect = raw.defect.clone().unwrap_or_default();
                let original = Original {
                    subject: &raw.subject,
                    headers: Some(&raw.headers),
                    payload: &raw.payload,
                };
                let error = format!(
                    "the NATS client cannot read this message's headers ({defect}); its \
                     delivery broke the connection"
                );
                ctx.dead_letter_unparseable(sequence, &original, &error)
                    .await;
                if !ctx
                    .confirm(
                        ack_subject(ctx, sequence, delivered).into(),
                        jetstream::AckKind::Term.into(),
                    )
                    .await
                {
                    tracing::warn!(
                        stream_sequence = sequence,
                        "termination of an unparseable message not confirmed"
                    );
                }
                terminated += 1;
            }
        }
    }
    let _ = ctx.client.flush().await;
    tracing::warn!(
        stream = %ctx.stream,
        consumer = %ctx.consumer,
        lost,
        terminated,
        given_back,
        "deliveries were lost on the way (the connection broke); they are delivered again"
    );
    continuity.delivered = delivered;
    continuity.stream_sequence = continuity.stream_sequence.max(newest);
    continuity.epoch = continuity.stats.connects.load(Ordering::Relaxed);
    Ok(())
}

fn action_for(raw: RawMessage) -> (u64, Action) {
    let sequence = raw.sequence;
    if raw.defect.is_some() {
        (sequence, Action::Terminate(Box::new(raw)))
    } else {
        (sequence, Action::GiveBack(sequence))
    }
}

/// The acknowledgement subject of the message at `sequence` for this consumer. The server looks
/// a pending message up by its stream sequence; the delivery sequence only has to be one it
/// has delivered (`delivered`, the consumer's latest).
fn ack_subject(ctx: &ConsumerContext, sequence: u64, delivered: u64) -> String {
    format!(
        "$JS.ACK.{}.{}.1.{sequence}.{delivered}.0.0",
        ctx.stream, ctx.consumer
    )
}

/// The messages on the consumer's subjects with a stream sequence in `from..=to`, except
/// `skip`, read through the JSON API; at most `limit` of them.
async fn probe(
    ctx: &ConsumerContext,
    from: u64,
    to: u64,
    skip: &[u64],
    limit: u64,
) -> Vec<RawMessage> {
    let mut out = Vec::new();
    let mut next = from.max(1);
    let mut looked = 0;
    while next <= to && looked < limit {
        // The first message at or after `next` on any of the consumer's subjects.
        let mut first: Option<RawMessage> = None;
        for subject in ctx.subjects.iter() {
            let request = MsgGet {
                seq: Some(next),
                next_by_subj: Some(subject),
                ..MsgGet::default()
            };
            match api::msg_get(&ctx.client, &ctx.stream, &request, API_TIMEOUT).await {
                Ok(Some(raw)) if first.as_ref().is_none_or(|f| raw.sequence < f.sequence) => {
                    first = Some(raw);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "a lost message could not be looked at");
                    return out;
                }
            }
        }
        let Some(raw) = first else {
            break;
        };
        if raw.sequence > to {
            break;
        }
        next = raw.sequence + 1;
        looked += 1;
        if !skip.contains(&raw.sequence) {
            out.push(raw);
        }
    }
    out
}
