//! A given/when/then harness for aggregates, for domains' unit tests.
//!
//! ```
//! # use cim_nats::{Aggregate, EventId, NatsEvent};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
//! # #[nats_event(domain = "bank", aggregate = "account")]
//! # enum AccountEvent {
//! #     #[nats_event(operation = "deposited")]
//! #     Deposited { amount: u64 },
//! # }
//! # #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! # struct Account { balance: u64 }
//! # #[derive(Debug, PartialEq, thiserror::Error)]
//! # #[error("amount must be positive")]
//! # struct ZeroAmount;
//! # impl Aggregate for Account {
//! #     type Event = AccountEvent;
//! #     type Command = u64;
//! #     type Error = ZeroAmount;
//! #     const TYPE: &'static str = "account";
//! #     fn handle(&self, amount: u64) -> Result<Vec<AccountEvent>, ZeroAmount> {
//! #         if amount == 0 { return Err(ZeroAmount); }
//! #         Ok(vec![AccountEvent::Deposited { amount }])
//! #     }
//! #     fn apply(&mut self, event: &AccountEvent) {
//! #         match event { AccountEvent::Deposited { amount } => self.balance += amount }
//! #     }
//! # }
//! use cim_nats::harness::AggregateTest;
//!
//! AggregateTest::<Account>::given(vec![AccountEvent::Deposited { amount: 5 }])
//!     .when(10)
//!     .then_expect(vec![AccountEvent::Deposited { amount: 10 }]);
//!
//! AggregateTest::<Account>::given_no_events()
//!     .when(0)
//!     .then_expect_error(ZeroAmount);
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;

/// The state built from the `given` events, ready for a command.
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

/// The outcome of a command, to check.
#[derive(Debug)]
pub struct AggregateResult<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Error>,
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// An aggregate that has had these events.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for e in events {
            state.apply(&e);
        }
        Self { state }
    }

    /// An aggregate with no events.
    pub fn given_no_events() -> Self {
        Self {
            state: A::default(),
        }
    }

    /// Handles a command.
    pub fn when(self, command: A::Command) -> AggregateResult<A> {
        AggregateResult {
            result: self.state.handle(command),
            state: self.state,
        }
    }

    /// Handles a command in an async test (the harness itself is synchronous: `handle` decides
    /// without I/O), for symmetry with async fixtures.
    pub async fn when_async(self, command: A::Command) -> AggregateResult<A> {
        self.when(command)
    }
}

impl<A: Aggregate> AggregateResult<A>
where
    A::Event: PartialEq + Debug,
{
    /// Asserts that the command produced exactly these events.
    ///
    /// # Panics
    ///
    /// If it produced others or failed.
    #[track_caller]
    pub fn then_expect(self, expected: Vec<A::Event>) -> A {
        let Self { result, state } = self;
        match result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                apply_all(state, &events)
            }
            Err(e) => panic!("expected events {expected:?}, the command failed: {e}"),
        }
    }

    /// Asserts that the command produced events that satisfy `check` (for events with fresh
    /// ids or timestamps), and returns the state after them.
    ///
    /// # Panics
    ///
    /// If the command failed or `check` panics.
    #[track_caller]
    pub fn then_expect_events(self, check: impl FnOnce(&[A::Event])) -> A {
        let Self { result, state } = self;
        match result {
            Ok(events) => {
                check(&events);
                apply_all(state, &events)
            }
            Err(e) => panic!("expected events, the command failed: {e}"),
        }
    }

    /// Asserts that the command was refused with this error.
    ///
    /// # Panics
    ///
    /// If it succeeded or failed otherwise.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, the command produced {events:?}"),
            Err(e) => assert_eq!(e, expected, "the command failed with another error"),
        }
    }

    /// Asserts that the command was refused with an error that satisfies `check`.
    ///
    /// # Panics
    ///
    /// If it succeeded or `check` returns false.
    #[track_caller]
    pub fn then_expect_error_matching(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("expected an error, the command produced {events:?}"),
            Err(e) => assert!(
                check(&e),
                "the command failed with an unexpected error: {e:?}"
            ),
        }
    }
}

fn apply_all<A: Aggregate>(mut state: A, events: &[A::Event]) -> A {
    for e in events {
        state.apply(e);
    }
    state
}
