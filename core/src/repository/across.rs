//! Decisions over several aggregates: load them, decide once over their states, append each
//! one's events in one atomic write with one server-checked expectation each (an aggregate the
//! decision only read is checked too), or nothing at all.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use super::lane::panic_message;
use super::{claims, CommandError, CommandOutcome, Loaded, Repository};
use crate::aggregate::Aggregate;
use crate::encode::encode_events;
use crate::identity::MessageIdentity;
use crate::store::{AggregateAppend, AppendResult, StoreError, StoreErrorKind};
use crate::subject::AggregateId;

/// Within one repository, decisions over the same aggregates are made one after another: each
/// takes a lock per aggregate, in id order (no deadlock), for its load, decision and append, so
/// that they do not conflict with each other (other writers still can: the server's checks
/// decide).
#[derive(Debug, Default)]
pub(super) struct Locks(Mutex<HashMap<AggregateId, Arc<tokio::sync::Mutex<()>>>>);

impl Locks {
    async fn lock(&self, ids: &[&AggregateId]) -> Vec<OwnedMutexGuard<()>> {
        let mut sorted: Vec<&AggregateId> = ids.to_vec();
        sorted.sort();
        let mut guards = Vec::with_capacity(sorted.len());
        for id in sorted {
            let lock = {
                let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
                Arc::clone(locks.entry(id.clone()).or_default())
            };
            guards.push(lock.lock_owned().await);
        }
        guards
    }

    /// Drops the locks of `ids` nobody holds or waits for.
    fn release(&self, ids: &[&AggregateId], guards: Vec<OwnedMutexGuard<()>>) {
        drop(guards);
        let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            if locks.get(*id).is_some_and(|l| Arc::strong_count(l) == 1) {
                locks.remove(*id);
            }
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// Decides over `N` aggregates at once and stores the decision atomically: loads each
    /// (through the cache and snapshots, as [`Repository::load_cached`]), calls `decide` with
    /// their states, in the order of `ids`, and appends the events it returns for each in one
    /// atomic write, each aggregate checked at the version decided on; an aggregate given no
    /// events is checked all the same (the decision read it: it holds only if it has not
    /// moved). All are stored or none.
    ///
    /// When another writer moved one of them first, the aggregates are read again and `decide`
    /// called again, up to `retries` times (0: one attempt; the conflict names the aggregate
    /// that moved). A write whose outcome is unknown is sent again unchanged, as single
    /// commands are.
    ///
    /// ```
    /// # use cim_nats::{Aggregate, AggregateId, EventId, NatsEvent, Repository};
    /// # use cim_nats::memory::InMemoryEventStore;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, Serialize, Deserialize, NatsEvent)]
    /// # #[nats_event(domain = "bank", aggregate = "account")]
    /// # enum Moved {
    /// #     #[nats_event(operation = "credited")]
    /// #     Credited { #[nats_event(event_id)] id: EventId, amount: u64 },
    /// #     #[nats_event(operation = "debited")]
    /// #     Debited { #[nats_event(event_id)] id: EventId, amount: u64 },
    /// # }
    /// # #[derive(Debug, Default, Clone, Serialize, Deserialize)]
    /// # struct Account { balance: u64 }
    /// # #[derive(Debug, thiserror::Error)]
    /// # #[error("insufficient funds")]
    /// # struct Insufficient;
    /// # impl Aggregate for Account {
    /// #     type Event = Moved;
    /// #     type Command = ();
    /// #     type Error = Insufficient;
    /// #     fn handle(&self, _: ()) -> Result<Vec<Moved>, Insufficient> { Ok(vec![]) }
    /// #     fn apply(&mut self, e: &Moved) {
    /// #         match e {
    /// #             Moved::Credited { amount, .. } => self.balance += amount,
    /// #             Moved::Debited { amount, .. } => self.balance -= amount,
    /// #         }
    /// #     }
    /// # }
    /// # impl Account {
    /// #     fn debit(&self, amount: u64) -> Result<Vec<Moved>, Insufficient> {
    /// #         if self.balance < amount { return Err(Insufficient); }
    /// #         Ok(vec![Moved::Debited { id: EventId::unassigned(), amount }])
    /// #     }
    /// #     fn credit(&self, amount: u64) -> Result<Vec<Moved>, Insufficient> {
    /// #         Ok(vec![Moved::Credited { id: EventId::unassigned(), amount }])
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let repo = Repository::<Account>::new(InMemoryEventStore::new());
    /// # let (from, to) = (AggregateId::new("acc-1")?, AggregateId::new("acc-2")?);
    /// # repo.execute_across([&from], |[a]| Ok([a.credit(100)?]), 0).await?;
    /// // A transfer: debit one account and credit another, or neither.
    /// let [debit, credit] = repo
    ///     .execute_across([&from, &to], |[a, b]| Ok([a.debit(30)?, b.credit(30)?]), 5)
    ///     .await?;
    /// assert_eq!((debit.version, credit.version), (2, 1));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`CommandError::Rejected`] with `decide`'s error; [`CommandError::Panicked`] when it
    /// panicked; [`CommandError::Store`] for a conflict ([`CommandError::is_conflict`], naming
    /// the aggregate that moved) when the retries run out, an invalid append (the same aggregate
    /// twice, more than the server's batch limit, an event of another domain), or a store
    /// failure.
    pub async fn execute_across<const N: usize>(
        &self,
        ids: [&AggregateId; N],
        decide: impl FnMut([&A; N]) -> Result<[Vec<A::Event>; N], A::Error> + Send,
        retries: usize,
    ) -> Result<[CommandOutcome<A::Event>; N], CommandError<A::Error>> {
        self.across(ids, decide, None, retries).await
    }

    /// [`Repository::execute_across`] on behalf of `identity` (see
    /// [`Repository::execute_as`]).
    ///
    /// # Errors
    ///
    /// As [`Repository::execute_across`].
    pub async fn execute_across_as<const N: usize>(
        &self,
        ids: [&AggregateId; N],
        decide: impl FnMut([&A; N]) -> Result<[Vec<A::Event>; N], A::Error> + Send,
        identity: &MessageIdentity,
        retries: usize,
    ) -> Result<[CommandOutcome<A::Event>; N], CommandError<A::Error>> {
        self.across(ids, decide, Some(identity), retries).await
    }

    async fn across<const N: usize>(
        &self,
        ids: [&AggregateId; N],
        mut decide: impl FnMut([&A; N]) -> Result<[Vec<A::Event>; N], A::Error> + Send,
        identity: Option<&MessageIdentity>,
        mut retries: usize,
    ) -> Result<[CommandOutcome<A::Event>; N], CommandError<A::Error>> {
        for (i, id) in ids.iter().enumerate() {
            if ids[..i].contains(id) {
                return Err(CommandError::Store(StoreError::new(
                    StoreErrorKind::InvalidAppend(format!(
                        "aggregate {id} appears twice in one decision: decide its events together"
                    )),
                )));
            }
        }
        let guards = self.across.lock(&ids).await;
        let result = self
            .decide_across(ids, &mut decide, identity, &mut retries)
            .await;
        self.across.release(&ids, guards);
        result
    }

    async fn decide_across<const N: usize>(
        &self,
        ids: [&AggregateId; N],
        decide: &mut (impl FnMut([&A; N]) -> Result<[Vec<A::Event>; N], A::Error> + Send),
        identity: Option<&MessageIdentity>,
        retries: &mut usize,
    ) -> Result<[CommandOutcome<A::Event>; N], CommandError<A::Error>> {
        // Reading before anything is sent is safe to try again while the server is away (a
        // leader election): until the outcome deadline.
        let deadline = Instant::now() + self.outcome_deadline;
        let mut pause = Duration::from_millis(20);
        loop {
            let mut loaded = Vec::with_capacity(N);
            let mut unavailable = None;
            for id in ids {
                match self.load_cached(id).await {
                    Ok(state) => loaded.push(state),
                    Err(e) if e.is_transient() && Instant::now() < deadline => {
                        unavailable = Some(e);
                        break;
                    }
                    Err(e) => return Err(CommandError::Store(e)),
                }
            }
            if let Some(e) = unavailable {
                tracing::debug!(error = %e, "loading for a decision failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
            let states: [&A; N] = std::array::from_fn(|i| &loaded[i].state);
            let decided = match catch_unwind(AssertUnwindSafe(|| decide(states))) {
                Err(panic) => return Err(CommandError::Panicked(panic_message(&panic))),
                Ok(Err(e)) => return Err(CommandError::Rejected(e)),
                Ok(Ok(decided)) => decided,
            };
            let mut decided: Vec<Vec<A::Event>> = decided.into_iter().collect();
            if decided.iter().all(Vec::is_empty) {
                return Ok(outcomes(loaded, decided, None));
            }
            let mut parts = Vec::with_capacity(N);
            let mut reservations = claims::Reservations::default();
            let mut claimed_parts = Vec::new();
            let mut claims_failed = None;
            for (state, events) in loaded.iter().zip(decided.iter_mut()) {
                let expected = state.expected_version();
                let (mut own, mut claimed) = claims::split::<A>(&state.id, std::mem::take(events))?;
                if !claimed.is_empty() && claims_failed.is_none() {
                    let checked = match reservations.read::<A>(&*self.store, &claimed).await {
                        Ok(()) => reservations.add::<A>(&mut claimed, identity),
                        Err(e) => Err(e),
                    };
                    match checked {
                        Ok(encoded) => claimed_parts.extend(encoded),
                        Err(e) => claims_failed = Some(e),
                    }
                }
                let new = encode_events(&state.id, expected, &mut own, identity)?;
                parts.push(AggregateAppend::new(state.id.clone(), expected, new));
                *events = own;
            }
            if let Some(e) = claims_failed {
                // The reservations as stored may be newer than the states decided on: then
                // it is a conflict, decided again.
                let mut moved = None;
                for state in &loaded {
                    let stored = self.store.aggregate_version(&state.id).await?;
                    if stored.unwrap_or(0) != state.version {
                        moved = Some(StoreError::new(StoreErrorKind::WrongExpectedVersion {
                            aggregate_id: state.id.clone(),
                            expected: state.expected_version(),
                            actual: stored,
                        }));
                        break;
                    }
                }
                let Some(conflict) = moved else {
                    return Err(CommandError::Store(e));
                };
                for id in ids {
                    self.forget(id);
                }
                if *retries == 0 {
                    return Err(CommandError::Store(conflict));
                }
                *retries -= 1;
                continue;
            }
            let written = parts.len();
            parts.extend(claims::parts(
                claimed_parts.iter(),
                &reservations.versions(),
            ));
            match self.append_multi_resending(parts).await {
                Ok(mut results) => {
                    results.truncate(written);
                    for ((state, events), result) in loaded.iter_mut().zip(&decided).zip(&results) {
                        // A lane of this aggregate reads what it lacks before its next command;
                        // the cache keeps the state as stored.
                        self.forget(&state.id);
                        if events.is_empty() {
                            continue;
                        }
                        for event in events {
                            state.state.apply(event);
                        }
                        state.version = result.version;
                        if let Some(last) = result.last_sequence() {
                            state.sequence = last;
                        }
                        self.put_cached(state.clone());
                    }
                    return Ok(outcomes(loaded, decided, Some(results)));
                }
                Err(e) if matches!(e.kind(), StoreErrorKind::WrongExpectedVersion { .. }) => {
                    for id in ids {
                        self.forget(id);
                    }
                    if *retries == 0 {
                        return Err(CommandError::Store(e));
                    }
                    *retries -= 1;
                }
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
    }

    /// [`crate::EventStore::append_multi`], sent again unchanged while the outcome is unknown,
    /// until the outcome deadline.
    pub(super) async fn append_multi_resending(
        &self,
        parts: Vec<AggregateAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        let deadline = Instant::now() + self.outcome_deadline;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.store.append_multi(parts.clone()).await {
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "multi-aggregate append outcome unknown; sending it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }
}

/// Each aggregate's outcome: its events (applied to its state), where they were stored, its
/// version after.
fn outcomes<A: Aggregate, const N: usize>(
    loaded: Vec<Loaded<A>>,
    decided: Vec<Vec<A::Event>>,
    results: Option<Vec<AppendResult>>,
) -> [CommandOutcome<A::Event>; N] {
    let mut results = results.map(Vec::into_iter);
    let mut out: Vec<CommandOutcome<A::Event>> = loaded
        .into_iter()
        .zip(decided)
        .map(|(state, events)| {
            let result = results.as_mut().and_then(Iterator::next);
            match result {
                Some(result) if !events.is_empty() => CommandOutcome {
                    version: result.version,
                    events,
                    append: Some(result),
                },
                _ => CommandOutcome {
                    events: Vec::new(),
                    append: None,
                    version: state.version,
                },
            }
        })
        .collect();
    std::array::from_fn(|_| out.remove(0))
}
