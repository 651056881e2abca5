//! Aggregates: decide in [`Aggregate::handle`], change state only in [`Aggregate::apply`].

use serde::{de::DeserializeOwned, Serialize};

use crate::event::NatsEvent;

/// An event-sourced aggregate: the consistency unit, one version sequence per instance.
///
/// `Default` is the state before the first event; `Clone`, because a repository decides a
/// group of queued commands on a copy of the state (see [`crate::Repository`]). [`Aggregate::handle`] decides which events a
/// command produces without changing anything; [`Aggregate::apply`] changes the state from an
/// event and never fails (an event is a fact). Serialisable, so that a repository can keep
/// snapshots; bump [`Aggregate::SNAPSHOT_VERSION`] when the serialised shape changes, and old
/// snapshots are ignored rather than misread.
///
/// ```
/// use cim_nats::{Aggregate, EventId, NatsEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
/// #[nats_event(domain = "bank", aggregate = "account")]
/// enum AccountEvent {
///     #[nats_event(operation = "deposited")]
///     Deposited { #[nats_event(event_id)] id: EventId, amount: u64 },
/// }
///
/// #[derive(Debug, Clone, Default, Serialize, Deserialize)]
/// struct Account { balance: u64 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("amount must be positive")]
/// struct ZeroAmount;
///
/// impl Aggregate for Account {
///     type Event = AccountEvent;
///     type Command = u64;
///     type Error = ZeroAmount;
///
///     fn handle(&self, amount: u64) -> Result<Vec<AccountEvent>, ZeroAmount> {
///         if amount == 0 {
///             return Err(ZeroAmount);
///         }
///         Ok(vec![AccountEvent::Deposited { id: EventId::new(), amount }])
///     }
///
///     fn apply(&mut self, event: &AccountEvent) {
///         match event {
///             AccountEvent::Deposited { amount, .. } => self.balance += amount,
///         }
///     }
/// }
/// ```
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The domain events of this aggregate.
    type Event: NatsEvent;
    /// The commands it decides on.
    type Command: Send + 'static;
    /// Why a command is refused (invariants).
    type Error: std::error::Error + Send + Sync + 'static;
    /// The aggregate type's name (for snapshot keys, logs and errors). By default the domain of
    /// its events, right for a domain with one kind of aggregate; a domain with several names
    /// each.
    const TYPE: &'static str = <Self::Event as NatsEvent>::DOMAIN;
    /// Version of the snapshot encoding of the state.
    const SNAPSHOT_VERSION: u32 = 1;

    /// Decides which events `command` produces, without changing the state.
    ///
    /// # Errors
    ///
    /// The domain error when the command breaks an invariant.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Changes the state from an event. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// What `event` does to a value unique across the aggregates of the domain
    /// ([`crate::reservation`]), if anything: such an event is stored under the reservation's
    /// id ([`crate::Reservation::id`]), not the aggregate's, in the same atomic write as the
    /// other events of its command, checked by the server to find the value free (or, for a
    /// release, held by this aggregate); it is not applied to the aggregate. A command whose
    /// value is taken fails with [`crate::StoreErrorKind::Reserved`] naming the holder. By
    /// default no event claims anything.
    fn claim(event: &Self::Event) -> Option<crate::Claim> {
        let _ = event;
        None
    }

    /// Rebuilds a state from events, in order.
    fn from_events<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        let mut state = Self::default();
        for e in events {
            state.apply(e);
        }
        state
    }
}
