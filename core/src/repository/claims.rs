//! The events of a command that take or give up reservations ([`Aggregate::claim`]): set apart
//! from the aggregate's own events, checked against the reservations as stored, and turned into
//! the parts of the multi-aggregate append that stores them with the command.

use std::collections::HashMap;

use crate::aggregate::Aggregate;
use crate::encode::encode_claims;
use crate::identity::MessageIdentity;
use crate::reservation::{Claim, Held};
use crate::store::{AggregateAppend, EventStore, ExpectedVersion, NewEvent};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

/// Checks that the events claiming reservations among `events` name `holder` (the aggregate
/// deciding); returns how many claim.
pub(super) fn check<A: Aggregate>(
    holder: &AggregateId,
    events: &[A::Event],
) -> Result<usize, StoreError> {
    let mut claiming = 0;
    for claim in events.iter().filter_map(A::claim) {
        if claim.holder() != holder {
            return Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
                "an event of aggregate {holder} claims {} for {}",
                claim.reservation(),
                claim.holder()
            ))));
        }
        claiming += 1;
    }
    Ok(claiming)
}

/// A command's events: the aggregate's own, and those claiming reservations.
pub(super) type Split<E> = (Vec<E>, Vec<E>);

/// Splits a command's events into the aggregate's own and those claiming a reservation, each
/// in its order.
pub(super) fn split<A: Aggregate>(
    holder: &AggregateId,
    events: Vec<A::Event>,
) -> Result<Split<A::Event>, StoreError> {
    let claiming = check::<A>(holder, &events)?;
    if claiming > 0 && claiming == events.len() {
        return Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
            "a command of aggregate {holder} claims reservations without an event of its own"
        ))));
    }
    Ok(events.into_iter().partition(|e| A::claim(e).is_none()))
}

/// The reservations the commands of one group claim: as read, and as the claims decided so
/// far leave them.
#[derive(Default)]
pub(super) struct Reservations {
    /// Each reservation's state as read (its version: the expectation of the group's first
    /// append that writes it).
    read: HashMap<AggregateId, Held>,
    /// ... and after the claims decided so far.
    now: HashMap<AggregateId, Held>,
}

impl Reservations {
    /// Reads the reservations `claimed` names that this group has not read yet.
    pub(super) async fn read<A: Aggregate>(
        &mut self,
        store: &dyn EventStore,
        claimed: &[A::Event],
    ) -> Result<(), StoreError> {
        for claim in claimed.iter().filter_map(A::claim) {
            let id = claim.reservation().id();
            if self.read.contains_key(&id) {
                continue;
            }
            let held = held::<A>(store, &id).await?;
            self.read.insert(id.clone(), held.clone());
            self.now.insert(id, held);
        }
        Ok(())
    }

    /// Checks one command's claim events against what the claims decided before left, and
    /// encodes them in place (grouped by reservation, each group in its order): returns them,
    /// each with its reservation's id. On an error (the value is held by another aggregate)
    /// nothing of this command counts.
    pub(super) fn add<A: Aggregate>(
        &mut self,
        claimed: &mut [A::Event],
        identity: Option<&MessageIdentity>,
    ) -> Result<Vec<(AggregateId, NewEvent)>, StoreError> {
        let id_of = |e: &A::Event| A::claim(e).map(|c| c.reservation().id());
        claimed.sort_by_key(|e| id_of(e));
        let mut out = Vec::with_capacity(claimed.len());
        let mut states = Vec::new();
        let mut start = 0;
        while start < claimed.len() {
            let Some(id) = id_of(&claimed[start]) else {
                unreachable!("only claiming events are given")
            };
            let end = start
                + claimed[start..]
                    .iter()
                    .take_while(|e| id_of(e).as_ref() == Some(&id))
                    .count();
            let before = self.now.get(&id).cloned().ok_or_else(|| {
                StoreError::new(StoreErrorKind::UnexpectedAnswer(format!(
                    "reservation {id} was not read before its claim"
                )))
            })?;
            let mut held = before.clone();
            for claim in claimed[start..end].iter().filter_map(A::claim) {
                held = held.after(&claim)?;
            }
            let new = encode_claims(
                &id,
                ExpectedVersion::from_loaded(before.version()),
                &mut claimed[start..end],
                identity,
            )?;
            out.extend(new.into_iter().map(|n| (id.clone(), n)));
            states.push((id, held));
            start = end;
        }
        // Checked and encoded: now it counts.
        for (id, held) in states {
            self.now.insert(id, held);
        }
        Ok(out)
    }

    /// Each reservation's version as read.
    pub(super) fn versions(&self) -> HashMap<AggregateId, u64> {
        self.read
            .iter()
            .map(|(id, held)| (id.clone(), held.version()))
            .collect()
    }
}

/// The parts of an append that store `claims` (in order), each reservation at the version in
/// `versions` (its version before these claims).
pub(super) fn parts<'a>(
    claims: impl Iterator<Item = &'a (AggregateId, NewEvent)>,
    versions: &HashMap<AggregateId, u64>,
) -> Vec<AggregateAppend> {
    let mut parts: Vec<AggregateAppend> = Vec::new();
    for (id, new) in claims {
        match parts.iter_mut().find(|p| p.aggregate_id == *id) {
            Some(part) => part.events.push(new.clone()),
            None => parts.push(AggregateAppend::new(
                id.clone(),
                ExpectedVersion::from_loaded(versions.get(id).copied().unwrap_or(0)),
                vec![new.clone()],
            )),
        }
    }
    parts
}

/// Who holds reservation `id`, as its last event says.
async fn held<A: Aggregate>(store: &dyn EventStore, id: &AggregateId) -> Result<Held, StoreError> {
    let Some(last) = store.last_event(id).await? else {
        return Ok(Held::Free(0));
    };
    let last = &last;
    let event = last
        .decode::<A::Event>()
        .map_err(|e| crate::typed::undecodable::<A::Event>(last, e))?;
    match A::claim(&event) {
        Some(Claim::Take { holder, .. }) => Ok(Held::By(holder, last.aggregate_version)),
        Some(Claim::Release { .. }) => Ok(Held::Free(last.aggregate_version)),
        None => Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
            "reservation {id} holds a {} event, which claims nothing",
            last.event_type
        )))),
    }
}
