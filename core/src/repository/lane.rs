//! The command lane of one aggregate: within a process, the commands for one aggregate are
//! decided one after another on the state in memory and committed in order, so that concurrent
//! commands never reload the aggregate nor conflict with each other; across processes the
//! store's concurrency check still decides.
//!
//! There is no task of its own: the caller whose command finds the lane idle leads it. The
//! leader takes the waiting commands (one, or a group when one atomic append is cheaper than
//! one append each, see [`CommitCost`]), decides them, appends their events and answers each
//! caller; when its own command is answered it hands the lane to the next waiting caller. A
//! leader that is cancelled (or panics) hands over the same way; an append it had sent is kept
//! and sent again, unchanged, by the next leader, so that its outcome is learned rather than
//! guessed.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::claims;
use super::{CommandError, CommandOutcome, CommitStats, Loaded, Repository};
use crate::aggregate::Aggregate;
use crate::encode::encode_events;
use crate::event::EventId;
use crate::identity::MessageIdentity;
use crate::store::MAX_EVENTS_PER_APPEND;
use crate::store::{
    AggregateAppend, AppendResult, ExpectedVersion, NewEvent, StoreError, StoreErrorKind,
};
use crate::subject::AggregateId;

/// Most commands one group takes from a lane.
const MAX_GROUP: usize = 256;
/// A group of this many commands is tried now and then, to learn (again) what a group costs.
const PROBE_GROUP: usize = 8;

/// What a command's caller gets.
pub(super) type Answer<A> =
    Result<CommandOutcome<<A as Aggregate>::Event>, CommandError<<A as Aggregate>::Error>>;

/// Where a command comes from: given once, or made again for each attempt.
pub(super) enum Source<C> {
    /// One command, one attempt.
    Once(Option<C>),
    /// A maker of the command, called for each attempt.
    Again(Box<dyn FnMut() -> C + Send>),
}

impl<C> Source<C> {
    fn next(&mut self) -> Option<C> {
        match self {
            Self::Once(command) => command.take(),
            Self::Again(make) => Some(make()),
        }
    }

    fn can_retry(&self) -> bool {
        matches!(self, Self::Again(_))
    }
}

/// A command as queued: what it is, on whose behalf, and how many conflicts with other
/// processes it may still meet before its caller gets the conflict.
pub(super) struct Request<A: Aggregate> {
    pub(super) source: Source<A::Command>,
    pub(super) identity: Option<MessageIdentity>,
    pub(super) retries: usize,
}

/// What a waiting caller is told.
pub(super) enum Note<A: Aggregate> {
    /// Its command's outcome.
    Done(Answer<A>),
    /// The lane is now its to lead.
    Lead,
}

/// Where a waiting caller is told its answer, or that the lane is its to lead: one small
/// allocation per command (a channel would allocate a block of slots for at most two notes).
pub(super) struct Reply<A: Aggregate> {
    slot: Mutex<Slot<A>>,
    wake: Notify,
}

struct Slot<A: Aggregate> {
    answer: Option<Answer<A>>,
    /// An answer was given (and maybe taken).
    answered: bool,
    lead: bool,
    /// The caller went away.
    closed: bool,
}

impl<A: Aggregate> Reply<A> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(Slot {
                answer: None,
                answered: false,
                lead: false,
                closed: false,
            }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slot<A>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the caller; `false` when it went away.
    fn send(&self, note: Note<A>) -> bool {
        {
            let mut slot = self.lock();
            if slot.closed {
                return false;
            }
            match note {
                Note::Done(answer) => {
                    slot.answer = Some(answer);
                    slot.answered = true;
                }
                Note::Lead => slot.lead = true,
            }
        }
        // One waiter: a wake-up given before it waits is kept for it.
        self.wake.notify_one();
        true
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The next note: the answer first, else the lead.
    async fn recv(&self) -> Note<A> {
        loop {
            {
                let mut slot = self.lock();
                if let Some(answer) = slot.answer.take() {
                    return Note::Done(answer);
                }
                if std::mem::take(&mut slot.lead) {
                    return Note::Lead;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Marks the caller gone; `true` when the lane had been handed to it unread.
    fn close(&self) -> bool {
        let mut slot = self.lock();
        slot.closed = true;
        std::mem::take(&mut slot.lead)
    }
}

struct Entry<A: Aggregate> {
    ticket: u64,
    request: Request<A>,
    reply: Arc<Reply<A>>,
    /// The trace context of the caller's span, for its events' headers (`crate::trace`).
    trace: Option<crate::trace::TraceContext>,
    _permit: OwnedSemaphorePermit,
}

impl<A: Aggregate> Entry<A> {
    fn answer(&self, answer: Answer<A>) {
        // A caller that went away does not need its answer.
        let _ = self.reply.send(Note::Done(answer));
    }
}

impl<A: Aggregate> Drop for Entry<A> {
    fn drop(&mut self) {
        // A command dropped unanswered (its leader panicked while deciding) fails rather than
        // leaving its caller waiting.
        if !self.reply.lock().answered {
            self.answer(Err(CommandError::Store(StoreError::new(
                StoreErrorKind::UnexpectedAnswer(
                    "the command was dropped before it was answered".to_owned(),
                ),
            ))));
        }
    }
}

/// One aggregate's queue and the state its commands are decided on.
pub(super) struct Lane<A: Aggregate> {
    permits: Arc<Semaphore>,
    tickets: AtomicU64,
    inner: Mutex<LaneInner<A>>,
}

struct LaneInner<A: Aggregate> {
    queue: VecDeque<Entry<A>>,
    leading: bool,
    /// The committed state (`None`: to be loaded).
    state: Option<Loaded<A>>,
    /// A copy of `state` with the events of the commands decided but not yet stored applied
    /// (`None`: none made, or no longer valid), kept from group to group so that deciding a
    /// group does not copy a large state each time.
    work: Option<Loaded<A>>,
    /// Events may have been stored that `state` lacks: read them before the next decision.
    stale: bool,
    /// A group whose append was sent but not answered when its leader went away.
    in_flight: Option<Group<A>>,
}

impl<A: Aggregate> Lane<A> {
    pub(super) fn new(capacity: usize, state: Option<Loaded<A>>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(capacity.max(1))),
            tickets: AtomicU64::new(0),
            inner: Mutex::new(LaneInner {
                queue: VecDeque::new(),
                leading: false,
                state,
                work: None,
                stale: false,
                in_flight: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LaneInner<A>> {
        // The lane's data is consistent between statements: a panic elsewhere leaves it usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the state as possibly behind the store.
    pub(super) fn mark_stale(&self) {
        self.lock().stale = true;
    }

    /// Is nobody leading or waiting, and nothing in flight? Then the state is handed back.
    pub(super) fn retire(&self) -> Option<Option<Loaded<A>>> {
        let mut inner = self.lock();
        if inner.leading || !inner.queue.is_empty() || inner.in_flight.is_some() {
            return None;
        }
        inner.work = None;
        let state = if inner.stale {
            None
        } else {
            inner.state.take()
        };
        Some(state)
    }
}

/// How one decided command stands.
enum Decided<A: Aggregate> {
    /// Its events, encoded; `first` is the version of the first.
    Events {
        events: Vec<A::Event>,
        first: u64,
        new: Vec<NewEvent>,
        /// Its events claiming reservations, encoded, each with its reservation's id.
        claims: Vec<(AggregateId, NewEvent)>,
    },
    /// Nothing to do.
    Nothing,
    /// The aggregate refused it (answered once the commands before it are stored).
    Rejected(A::Error),
    /// It failed alone: its `handle` panicked, or its events could not be encoded.
    Failed(CommandError<A::Error>),
    /// Its claims did not hold, and the state it was decided on is behind the store: decided
    /// again once the state has caught up (while it has retries), else answered with this
    /// conflict.
    Stale(StoreError),
}

struct Member<A: Aggregate> {
    entry: Entry<A>,
    decided: Decided<A>,
}

/// Commands decided together, to be appended in order: their events in as few appends as the
/// store takes (whole commands, at most [`MAX_EVENTS_PER_APPEND`] events each).
struct Group<A: Aggregate> {
    members: Vec<Member<A>>,
    /// Members below this index are stored (or needed no append).
    stored: usize,
    /// The version of each reservation the members claim, before the members not yet stored.
    reservations: HashMap<AggregateId, u64>,
}

/// The client's view of what an append costs, to choose between one append per command and
/// one atomic append for a group: the time of a single-event append and of a multi-event
/// (atomic batch) append, as moving averages. On a file store an atomic batch costs the server
/// a fixed ~2 ms, so a group pays off from ~15 commands; in memory it pays off from 2.
#[derive(Debug, Default)]
pub(super) struct CommitCost {
    single_ns: AtomicU64,
    batch_ns: AtomicU64,
    decisions: AtomicU64,
    appends: AtomicU64,
    commands: AtomicU64,
}

impl CommitCost {
    fn record(&self, events: usize, commands: usize, took: Duration) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.commands.fetch_add(commands as u64, Ordering::Relaxed);
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let slot = if events == 1 {
            &self.single_ns
        } else {
            &self.batch_ns
        };
        let old = slot.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        slot.store(new, Ordering::Relaxed);
    }

    /// How many of `waiting` commands to take: one, or a group.
    fn take(&self, waiting: usize) -> usize {
        if waiting < 2 {
            return waiting;
        }
        let single = self.single_ns.load(Ordering::Relaxed);
        let batch = self.batch_ns.load(Ordering::Relaxed);
        let probe = waiting >= PROBE_GROUP
            && (single == 0
                || batch == 0
                || self
                    .decisions
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(512));
        let cheaper = single > 0 && batch > 0 && (waiting as u64).saturating_mul(single) > batch;
        if probe || cheaper {
            waiting.min(MAX_GROUP)
        } else {
            1
        }
    }

    fn stats(&self) -> CommitStats {
        CommitStats {
            appends: self.appends.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            single_append_micros: self.single_ns.load(Ordering::Relaxed) / 1000,
            group_append_micros: self.batch_ns.load(Ordering::Relaxed) / 1000,
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// Queues `request` on the aggregate's lane (waiting while the lane is full), leads the
    /// lane when it is idle, and returns the command's answer.
    pub(super) async fn submit(&self, id: &AggregateId, request: Request<A>) -> Answer<A> {
        let (lane, reply, ticket, lead) = self.enqueue(id, request).await;
        let waiter = Waiter {
            repository: self,
            id,
            lane: &lane,
            ticket,
            reply,
        };
        if lead {
            self.lead(id, &lane, ticket).await;
        }
        loop {
            match waiter.reply.recv().await {
                Note::Done(answer) => return answer,
                Note::Lead => self.lead(id, &lane, ticket).await,
            }
        }
    }

    /// Hands the lane on from the caller `ticket` (which stops leading or waiting) to the next
    /// waiting caller; retires the lane when nobody is left.
    fn pass_on(&self, id: &AggregateId, lane: &Arc<Lane<A>>, ticket: u64) {
        let idle = {
            let mut inner = lane.lock();
            inner.leading = hand_over(&mut inner, ticket);
            !inner.leading && inner.queue.is_empty() && inner.in_flight.is_none()
        };
        if idle {
            self.retire(id, lane);
        }
    }

    /// Commands admitted to the aggregate's queue: waiting, being decided or being stored.
    pub(super) fn queued(&self, id: &AggregateId) -> usize {
        self.lanes_lock().get(id).map_or(0, |lane| {
            self.queue_capacity
                .saturating_sub(lane.permits.available_permits())
        })
    }

    async fn enqueue(
        &self,
        id: &AggregateId,
        request: Request<A>,
    ) -> (Arc<Lane<A>>, Arc<Reply<A>>, u64, bool) {
        let mut request = Some(request);
        loop {
            let lane = self.lane(id);
            let Ok(permit) = Arc::clone(&lane.permits).acquire_owned().await else {
                continue;
            };
            let lanes = self.lanes_lock();
            if !lanes.get(id).is_some_and(|l| Arc::ptr_eq(l, &lane)) {
                // Retired while this caller waited for room: queue on the lane now in use.
                continue;
            }
            let Some(request) = request.take() else {
                unreachable!("the request is queued once")
            };
            let reply = Reply::new();
            let ticket = lane.tickets.fetch_add(1, Ordering::Relaxed);
            let lead = {
                let mut inner = lane.lock();
                inner.queue.push_back(Entry {
                    ticket,
                    request,
                    reply: Arc::clone(&reply),
                    trace: crate::trace::current(),
                    _permit: permit,
                });
                let lead = !inner.leading;
                inner.leading = true;
                lead
            };
            drop(lanes);
            return (lane, reply, ticket, lead);
        }
    }

    /// Leads `lane` until the command `ticket` is answered and another caller can take over,
    /// or nothing is left to do.
    async fn lead(&self, id: &AggregateId, lane: &Arc<Lane<A>>, ticket: u64) {
        let mut lead = Leadership::take(self, id, lane, ticket);
        loop {
            if let Some(group) = lead.group.take() {
                // Sent by a leader that went away: send it again, unchanged.
                self.commit(&mut lead, group).await;
                if lead.answered(ticket) && lead.others_waiting() {
                    return;
                }
                continue;
            }
            // Nothing can be decided without the state: while the server is away (a leader
            // election, a reconnection) it is read again until the outcome deadline; then, or
            // on another error, every waiting command fails.
            let deadline = Instant::now() + self.outcome_deadline;
            let mut pause = Duration::from_millis(20);
            loop {
                match self.refresh(&mut lead).await {
                    Ok(()) => break,
                    Err(e) if e.is_transient() && Instant::now() < deadline => {
                        tracing::debug!(aggregate = %id, error = %e, "loading the aggregate failed; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => {
                        for entry in lead.take_entries(usize::MAX) {
                            entry.answer(Err(CommandError::Store(e.clone())));
                        }
                        return;
                    }
                }
            }
            let waiting = lead.live_waiting();
            if waiting == 0 {
                return;
            }
            let entries = lead.take_entries(self.cost.take(waiting));
            let group = self.decide(&mut lead, entries).await;
            self.commit(&mut lead, group).await;
            if lead.answered(ticket) && lead.others_waiting() {
                return;
            }
        }
    }

    /// Loads the state if the lane has none, and reads what it may lack.
    async fn refresh(&self, lead: &mut Leadership<'_, A>) -> Result<(), StoreError> {
        let stale = std::mem::take(&mut lead.lane.lock().stale);
        if stale || lead.state.is_none() {
            lead.work = None;
        }
        match &mut lead.state {
            None => lead.state = Some(self.load(lead.id).await?),
            Some(state) if stale => {
                if let Err(e) = self.catch_up(state).await {
                    lead.state = None;
                    return Err(e);
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Decides each entry on the state left by the ones before it: the first on the committed
    /// state, the others on the working copy, which has the earlier commands' events applied
    /// (made when a group first needs it, then kept in step with the committed state).
    async fn decide(&self, lead: &mut Leadership<'_, A>, entries: Vec<Entry<A>>) -> Group<A> {
        let Some(committed) = lead.state.as_ref() else {
            unreachable!("the state is loaded before deciding")
        };
        let count = entries.len();
        let work = &mut lead.work;
        let mut members = Vec::with_capacity(count);
        let mut reservations = claims::Reservations::default();
        for (i, mut entry) in entries.into_iter().enumerate() {
            let current = work.as_ref().unwrap_or(committed);
            let decided = match entry.request.source.next() {
                None => Decided::Failed(CommandError::Store(StoreError::new(
                    StoreErrorKind::UnexpectedAnswer("the command was already used".to_owned()),
                ))),
                Some(command) => {
                    let handled = catch_unwind(AssertUnwindSafe(|| current.state.handle(command)));
                    match handled {
                        Err(panic) => {
                            Decided::Failed(CommandError::Panicked(panic_message(&panic)))
                        }
                        Ok(Err(e)) => Decided::Rejected(e),
                        Ok(Ok(events)) if events.is_empty() => Decided::Nothing,
                        Ok(Ok(events)) => {
                            let expected = current.expected_version();
                            let identity = entry.request.identity.as_ref();
                            // Events claiming reservations are checked against them now: a
                            // value taken fails this command alone, its events not applied.
                            let mut claims_failed = false;
                            let split = match claims::split::<A>(lead.id, events) {
                                Ok((own, claimed)) if claimed.is_empty() => Ok((own, Vec::new())),
                                Ok((own, mut claimed)) => {
                                    let checked = match reservations
                                        .read::<A>(&*self.store, &claimed)
                                        .await
                                    {
                                        Ok(()) => reservations.add::<A>(&mut claimed, identity),
                                        Err(e) => Err(e),
                                    };
                                    claims_failed = checked.is_err();
                                    checked.map(|claims| (own, claims))
                                }
                                Err(e) => Err(e),
                            };
                            match split.and_then(|(mut events, claims)| {
                                encode_events(lead.id, expected, &mut events, identity)
                                    .map(|new| (events, new, claims))
                            }) {
                                Err(e) if claims_failed => {
                                    // The reservations as stored may be newer than the state
                                    // this was decided on: then it is a conflict.
                                    match self.store.aggregate_version(lead.id).await {
                                        Ok(stored) if stored.unwrap_or(0) != committed.version => {
                                            Decided::Stale(StoreError::new(
                                                StoreErrorKind::WrongExpectedVersion {
                                                    aggregate_id: lead.id.clone(),
                                                    expected: committed.expected_version(),
                                                    actual: stored,
                                                },
                                            ))
                                        }
                                        _ => Decided::Failed(CommandError::Store(e)),
                                    }
                                }
                                Err(e) => Decided::Failed(CommandError::Store(e)),
                                Ok((events, new, claims)) => {
                                    let first = current.version + 1;
                                    if i + 1 < count || work.is_some() {
                                        let next = work.get_or_insert_with(|| committed.clone());
                                        for event in &events {
                                            next.state.apply(event);
                                        }
                                        next.version += events.len() as u64;
                                    }
                                    Decided::Events {
                                        events,
                                        first,
                                        new,
                                        claims,
                                    }
                                }
                            }
                        }
                    }
                }
            };
            members.push(Member { entry, decided });
        }
        Group {
            members,
            stored: 0,
            reservations: reservations.versions(),
        }
    }

    /// Appends the group's events in order and answers its commands.
    async fn commit(&self, lead: &mut Leadership<'_, A>, mut group: Group<A>) {
        while group.stored < group.members.len() {
            let (start, end, events) = next_append(&group);
            if events.is_empty() {
                // Refusals and commands with nothing to do, on a state that is stored.
                self.answer_settled(lead, &mut group, end, None);
                continue;
            }
            let expected = match &group.members[start..end]
                .iter()
                .find_map(|m| match &m.decided {
                    Decided::Events { first, .. } => Some(*first),
                    _ => None,
                }) {
                Some(first) => ExpectedVersion::from_loaded(first - 1),
                None => unreachable!("an append has events"),
            };
            let count = events.len();
            let commands = group.members[start..end]
                .iter()
                .filter(|m| matches!(m.decided, Decided::Events { .. }))
                .count();
            let parts = claims::parts(
                group.members[start..end]
                    .iter()
                    .flat_map(|m| match &m.decided {
                        Decided::Events { claims, .. } => claims.as_slice(),
                        _ => &[],
                    }),
                &group.reservations,
            );
            // Each command's events carry the trace context of the caller that sent it.
            let traces: HashMap<EventId, crate::trace::TraceContext> = group.members[start..end]
                .iter()
                .filter_map(|m| match (&m.decided, &m.entry.trace) {
                    (Decided::Events { new, claims, .. }, Some(trace)) => Some(
                        new.iter()
                            .chain(claims.iter().map(|(_, e)| e))
                            .map(|e| (e.event_id, trace.clone()))
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .flatten()
                .collect();
            lead.group = Some(group);
            let started = Instant::now();
            let result = crate::trace::scope(traces, async {
                if parts.is_empty() {
                    self.append_resending(lead.id, expected, events).await
                } else {
                    // With the reservations they claim, in one atomic write.
                    let written: Vec<(AggregateId, u64)> = parts
                        .iter()
                        .map(|p| (p.aggregate_id.clone(), p.events.len() as u64))
                        .collect();
                    let mut all = Vec::with_capacity(parts.len() + 1);
                    all.push(AggregateAppend::new(lead.id.clone(), expected, events));
                    all.extend(parts);
                    let result = self.append_multi_resending(all).await;
                    if result.is_ok() {
                        if let Some(group) = lead.group.as_mut() {
                            for (id, n) in written {
                                *group.reservations.entry(id).or_insert(0) += n;
                            }
                        }
                    }
                    result.and_then(|mut results| {
                        if results.is_empty() {
                            Err(StoreError::new(StoreErrorKind::UnexpectedAnswer(
                                "a multi-aggregate append answered with no results".to_owned(),
                            )))
                        } else {
                            Ok(results.remove(0))
                        }
                    })
                }
            })
            .await;
            let Some(g) = lead.group.take() else {
                unreachable!("the group is kept by the leader")
            };
            group = g;
            match result {
                Ok(result) => {
                    self.cost.record(count, commands, started.elapsed());
                    self.answer_settled(lead, &mut group, end, Some(result));
                    self.snapshot_if_due(lead).await;
                }
                Err(e) if is_conflict(&e) => {
                    // Another process appended first: what this group decided after the stored
                    // part is void. Read what it appended, then decide those commands again.
                    lead.work = None;
                    if let Some(state) = &mut lead.state {
                        if self.catch_up(state).await.is_err() {
                            lead.state = None;
                        }
                    }
                    let rest = group.members.split_off(group.stored);
                    let mut again = Vec::new();
                    for member in rest {
                        match member.decided {
                            Decided::Failed(error) => member.entry.answer(Err(error)),
                            _ if member.entry.request.source.can_retry()
                                && member.entry.request.retries > 0 =>
                            {
                                let mut entry = member.entry;
                                entry.request.retries -= 1;
                                again.push(entry);
                            }
                            _ => member.entry.answer(Err(CommandError::Store(e.clone()))),
                        }
                    }
                    lead.requeue_front(again);
                    return;
                }
                Err(e) => {
                    // Not stored (or, after the resend deadline, not known): this group's
                    // remaining commands fail with the same error; the state stays as stored.
                    lead.work = None;
                    if e.is_transient() {
                        lead.state = None;
                    }
                    tracing::debug!(aggregate = %lead.id, error = %e, "a group's append failed");
                    for member in group.members.drain(group.stored..) {
                        match member.decided {
                            Decided::Failed(error) => member.entry.answer(Err(error)),
                            _ => member.entry.answer(Err(CommandError::Store(e.clone()))),
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Answers the members up to `end`, now stored (with `result`, the append of their events),
    /// and applies their events to the committed state.
    fn answer_settled(
        &self,
        lead: &mut Leadership<'_, A>,
        group: &mut Group<A>,
        end: usize,
        result: Option<AppendResult>,
    ) {
        let total = result.as_ref().map_or(0, |r| r.sequences.len());
        let mut offset = 0;
        let mut again = Vec::new();
        for member in group.members.drain(group.stored..end) {
            let answer = match member.decided {
                Decided::Stale(conflict) => {
                    lead.lane.mark_stale();
                    let mut entry = member.entry;
                    if entry.request.source.can_retry() && entry.request.retries > 0 {
                        entry.request.retries -= 1;
                        again.push(entry);
                        continue;
                    }
                    entry.answer(Err(CommandError::Store(conflict)));
                    continue;
                }
                Decided::Failed(error) => Err(error),
                Decided::Rejected(error) => Err(CommandError::Rejected(error)),
                Decided::Nothing => Ok(CommandOutcome {
                    events: Vec::new(),
                    append: None,
                    version: lead.state.as_ref().map_or(0, |s| s.version),
                }),
                Decided::Events { events, .. } => {
                    let Some(result) = &result else {
                        unreachable!("events are answered with their append")
                    };
                    let n = events.len();
                    let sequences = result.sequences[offset..offset + n].to_vec();
                    offset += n;
                    // The version after this command: the append's last, less what follows.
                    let version = result.version - (total - offset) as u64;
                    if let Some(state) = &mut lead.state {
                        for event in &events {
                            state.state.apply(event);
                        }
                        state.version = version;
                        if let Some(last) = sequences.last() {
                            state.sequence = *last;
                        }
                    }
                    Ok(CommandOutcome {
                        events,
                        append: Some(AppendResult {
                            sequences,
                            version,
                            duplicate: result.duplicate,
                        }),
                        version,
                    })
                }
            };
            member.entry.answer(answer);
        }
        // `drain` removed the answered members; what is left starts at 0 again.
        group.stored = 0;
        if !again.is_empty() {
            lead.requeue_front(again);
        }
    }

    /// Appends, sending the same events again while the outcome is unknown (no answer, lost
    /// connection) until the server answers or `outcome_deadline` passes: the expectation and
    /// the event ids make a resend safe (stored once, recognised when already stored).
    async fn append_resending(
        &self,
        id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let deadline = Instant::now() + self.outcome_deadline;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.store.append(id, expected, events.clone()).await {
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::debug!(aggregate = %id, error = %e, "append outcome unknown; sending it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    async fn snapshot_if_due(&self, lead: &mut Leadership<'_, A>) {
        if let Some(state) = &mut lead.state {
            self.maybe_snapshot(state).await;
        }
    }

    /// What the lanes appended so far, and the costs they choose groups by.
    pub(super) fn commit_stats_inner(&self) -> CommitStats {
        self.cost.stats()
    }
}

/// The members from `group.stored` that make the next append: whole commands, their events
/// together at most [`MAX_EVENTS_PER_APPEND`] (one command with more is sent alone, for the
/// store to refuse). Returns the range's end and the events.
fn next_append<A: Aggregate>(group: &Group<A>) -> (usize, usize, Vec<NewEvent>) {
    let start = group.stored;
    let mut events = Vec::new();
    let mut end = start;
    for member in &group.members[start..] {
        if let Decided::Events { new, .. } = &member.decided {
            if !events.is_empty() && events.len() + new.len() > MAX_EVENTS_PER_APPEND {
                break;
            }
            events.extend(new.iter().cloned());
        }
        end += 1;
    }
    (start, end, events)
}

fn is_conflict(e: &StoreError) -> bool {
    matches!(e.kind(), StoreErrorKind::WrongExpectedVersion { .. })
}

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the aggregate's handle panicked".to_owned())
}

/// The leader's hold on a lane: the state and the group it works on. Dropped (when the leader
/// is done, cancelled or panics) it gives them back to the lane and hands the lane to the next
/// waiting caller, or retires an idle lane.
struct Leadership<'a, A: Aggregate> {
    repository: &'a Repository<A>,
    id: &'a AggregateId,
    lane: &'a Arc<Lane<A>>,
    ticket: u64,
    state: Option<Loaded<A>>,
    work: Option<Loaded<A>>,
    group: Option<Group<A>>,
}

impl<'a, A: Aggregate> Leadership<'a, A> {
    fn take(
        repository: &'a Repository<A>,
        id: &'a AggregateId,
        lane: &'a Arc<Lane<A>>,
        ticket: u64,
    ) -> Self {
        let mut inner = lane.lock();
        Self {
            repository,
            id,
            lane,
            ticket,
            state: inner.state.take(),
            work: inner.work.take(),
            group: inner.in_flight.take(),
        }
    }

    /// Waiting commands whose callers are still there (the others are dropped undecided).
    fn live_waiting(&self) -> usize {
        let mut inner = self.lane.lock();
        inner.queue.retain(|e| !e.reply.is_closed());
        inner.queue.len()
    }

    fn others_waiting(&self) -> bool {
        self.live_waiting() > 0
    }

    /// Is the command `ticket` answered (neither queued again nor in a group)?
    fn answered(&self, ticket: u64) -> bool {
        !self.lane.lock().queue.iter().any(|e| e.ticket == ticket)
    }

    fn take_entries(&self, n: usize) -> Vec<Entry<A>> {
        let mut inner = self.lane.lock();
        let n = n.min(inner.queue.len());
        inner.queue.drain(..n).collect()
    }

    fn requeue_front(&self, entries: Vec<Entry<A>>) {
        let mut inner = self.lane.lock();
        for entry in entries.into_iter().rev() {
            inner.queue.push_front(entry);
        }
    }
}

impl<A: Aggregate> Drop for Leadership<'_, A> {
    fn drop(&mut self) {
        {
            let mut inner = self.lane.lock();
            // A leader that panicked may have left the state half-applied: load it again.
            (inner.state, inner.work) = if std::thread::panicking() {
                (None, None)
            } else {
                (self.state.take(), self.work.take())
            };
            if let Some(group) = self.group.take() {
                inner.in_flight = Some(group);
            }
        }
        self.repository.pass_on(self.id, self.lane, self.ticket);
    }
}

/// A caller waiting for its command's answer. Dropped with a note to lead unread (the caller
/// went away just as the lane was handed to it), it hands the lane on.
struct Waiter<'a, A: Aggregate> {
    repository: &'a Repository<A>,
    id: &'a AggregateId,
    lane: &'a Arc<Lane<A>>,
    ticket: u64,
    reply: Arc<Reply<A>>,
}

impl<A: Aggregate> Drop for Waiter<'_, A> {
    fn drop(&mut self) {
        if self.reply.close() {
            self.repository.pass_on(self.id, self.lane, self.ticket);
        }
    }
}

/// Gives the lane to the first caller still waiting but `from`: one whose command is in
/// flight, else the first queued (callers that went away are dropped from the queue, their
/// commands undecided).
fn hand_over<A: Aggregate>(inner: &mut LaneInner<A>, from: u64) -> bool {
    if let Some(group) = &inner.in_flight {
        if group
            .members
            .iter()
            .filter(|m| m.entry.ticket != from)
            .any(|m| m.entry.reply.send(Note::Lead))
        {
            return true;
        }
    }
    let mut i = 0;
    while i < inner.queue.len() {
        let entry = &inner.queue[i];
        if entry.ticket == from {
            i += 1;
        } else if entry.reply.send(Note::Lead) {
            return true;
        } else {
            inner.queue.remove(i);
        }
    }
    false
}
