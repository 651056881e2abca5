//! Values unique across the aggregates of a domain (a hostname, a user name): a
//! [`Reservation`] is a small stream of its own, whose events say who holds the value.
//!
//! An aggregate says which of its events take or give up a reservation
//! ([`crate::Aggregate::claim`]). The repository stores such an event under the reservation's
//! id, in the same atomic write as the other events of its command, with, as the server-checked
//! expectation, the reservation's version as read: the value was free (never taken, or given up
//! last), or, for a release, held by this aggregate. Two commands taking the same value at once
//! on two aggregates (or in two processes): one write is stored, the other is refused whole and,
//! decided again, finds the value taken: [`StoreErrorKind::Reserved`] names the holder.
//!
//! # Wire format
//!
//! A reservation of `value` of kind `kind` has the aggregate id [`Reservation::id`]: the UUID
//! v5 of `{kind}:{value}` in the namespace [`RESERVATION_NAMESPACE`], so any value (dots, any
//! length, any characters) is one subject token, and no reservation's id meets an aggregate's
//! (a UUID v5 is never a UUID v4 or v7, the ids the framework gives aggregates). Its events are
//! the domain's own (typed readers and projections of the domain read them), on the subjects the
//! domain gives them, e.g. `infrastructure.hostname.reserved.{id}`; the value and the holder are
//! in their bodies.

use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

/// The namespace of reservation ids ([`Reservation::id`]).
pub const RESERVATION_NAMESPACE: uuid::Uuid = uuid::uuid!("4a0c6e52-64a1-4c8c-9b3e-6d1c2a7f5e10");

/// A value of some kind, held by at most one aggregate at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reservation {
    kind: String,
    value: String,
}

impl Reservation {
    /// The reservation of `value` of kind `kind` (e.g. `("hostname", "web-01.dc1")`). Values are
    /// compared as given: normalise them first where the domain treats some as equal (a
    /// hostname's case).
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Its value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The aggregate id its events are stored under: the UUID v5 of `{kind}:{value}` in
    /// [`RESERVATION_NAMESPACE`].
    pub fn id(&self) -> AggregateId {
        let name = format!("{}:{}", self.kind, self.value);
        AggregateId::from(uuid::Uuid::new_v5(&RESERVATION_NAMESPACE, name.as_bytes()))
    }
}

impl std::fmt::Display for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.kind, self.value)
    }
}

/// What an event does to a reservation ([`crate::Aggregate::claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The event takes the value for `holder` (it must be free).
    Take {
        /// The value.
        reservation: Reservation,
        /// The aggregate that holds it (the one whose command decided the event).
        holder: AggregateId,
    },
    /// The event gives the value up (it must be free, or held by `holder`).
    Release {
        /// The value.
        reservation: Reservation,
        /// The aggregate that held it.
        holder: AggregateId,
    },
}

impl Claim {
    /// The reservation it is about.
    pub fn reservation(&self) -> &Reservation {
        match self {
            Self::Take { reservation, .. } | Self::Release { reservation, .. } => reservation,
        }
    }

    /// The holder it names.
    pub fn holder(&self) -> &AggregateId {
        match self {
            Self::Take { holder, .. } | Self::Release { holder, .. } => holder,
        }
    }
}

/// Who holds a reservation, as its last event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Held {
    /// Free (never taken, or given up last) at this version.
    Free(u64),
    /// Held by this aggregate, at this version.
    By(AggregateId, u64),
}

impl Held {
    pub(crate) fn version(&self) -> u64 {
        match self {
            Self::Free(v) | Self::By(_, v) => *v,
        }
    }

    /// The state after `claim`, or why it cannot be made.
    pub(crate) fn after(&self, claim: &Claim) -> Result<Self, StoreError> {
        let version = self.version() + 1;
        match (self, claim) {
            (Self::Free(_), Claim::Take { holder, .. }) => Ok(Self::By(holder.clone(), version)),
            (Self::By(by, _), Claim::Take { reservation, .. }) => {
                Err(StoreError::new(StoreErrorKind::Reserved {
                    kind: reservation.kind().to_owned(),
                    value: reservation.value().to_owned(),
                    holder: by.clone(),
                }))
            }
            (Self::Free(_), Claim::Release { .. }) => Ok(Self::Free(version)),
            (Self::By(by, _), Claim::Release { holder, .. }) if by == holder => {
                Ok(Self::Free(version))
            }
            (
                Self::By(by, _),
                Claim::Release {
                    reservation,
                    holder,
                },
            ) => Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
                "{holder} gives up {reservation}, which {by} holds"
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_tokens_apart_from_aggregate_ids() {
        let web = Reservation::new("hostname", "web-01.dc1.example.com");
        assert_eq!(
            web.id(),
            Reservation::new("hostname", "web-01.dc1.example.com").id()
        );
        assert_ne!(
            web.id(),
            Reservation::new("hostname", "web-02.dc1.example.com").id()
        );
        assert_ne!(
            web.id(),
            Reservation::new("username", "web-01.dc1.example.com").id()
        );
        let id = uuid::Uuid::parse_str(web.id().as_str()).unwrap();
        assert_eq!(id.get_version_num(), 5);
        assert!(!web.id().as_str().contains('.'));
    }

    #[test]
    fn a_value_is_taken_once_and_given_up_by_its_holder() {
        let r = Reservation::new("hostname", "db");
        let (a, b) = (
            AggregateId::new("a").unwrap(),
            AggregateId::new("b").unwrap(),
        );
        let take = |holder: &AggregateId| Claim::Take {
            reservation: r.clone(),
            holder: holder.clone(),
        };
        let release = |holder: &AggregateId| Claim::Release {
            reservation: r.clone(),
            holder: holder.clone(),
        };
        let held = Held::Free(0).after(&take(&a)).unwrap();
        assert_eq!(held, Held::By(a.clone(), 1));
        let err = held.after(&take(&b)).unwrap_err();
        assert!(matches!(err.kind(), StoreErrorKind::Reserved { holder, .. } if *holder == a));
        assert!(held.after(&release(&b)).is_err());
        let free = held.after(&release(&a)).unwrap();
        assert_eq!(free, Held::Free(2));
        assert_eq!(free.after(&take(&b)).unwrap(), Held::By(b, 3));
    }
}
