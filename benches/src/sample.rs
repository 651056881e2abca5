//! A small aggregate for the repository cases: a ledger of ~500-byte entries.

use cim_nats::{Aggregate, EventId, NatsEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "ledger", aggregate = "book")]
pub(crate) enum LedgerEvent {
    #[nats_event(operation = "recorded")]
    Recorded {
        #[nats_event(event_id)]
        id: EventId,
        amount: i64,
        memo: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Ledger {
    pub(crate) entries: u64,
    pub(crate) balance: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("amount must not be zero")]
pub(crate) struct ZeroAmount;

impl Aggregate for Ledger {
    type Event = LedgerEvent;
    type Command = i64;
    type Error = ZeroAmount;
    const TYPE: &'static str = "ledger";

    fn handle(&self, amount: i64) -> Result<Vec<LedgerEvent>, ZeroAmount> {
        if amount == 0 {
            return Err(ZeroAmount);
        }
        Ok(vec![LedgerEvent::Recorded {
            id: EventId::new(),
            amount,
            memo: "x".repeat(440),
        }])
    }

    fn apply(&mut self, event: &LedgerEvent) {
        let LedgerEvent::Recorded { amount, .. } = event;
        self.entries += 1;
        self.balance += amount;
    }
}

/// The events the load cases' large stream holds (`large.item.{created,updated}.{id}`), for a
/// repository reading it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "large", aggregate = "item")]
pub(crate) enum ItemEvent {
    #[nats_event(operation = "created", event_type = "created")]
    Created { pad: String },
    #[nats_event(operation = "updated", event_type = "updated")]
    Updated { pad: String },
}

/// An item of the large stream: how many events it has seen.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Item {
    pub(crate) events: u64,
}

impl Aggregate for Item {
    type Event = ItemEvent;
    type Command = ();
    type Error = std::convert::Infallible;
    const TYPE: &'static str = "item";

    fn handle(&self, (): ()) -> Result<Vec<ItemEvent>, Self::Error> {
        Ok(vec![ItemEvent::Updated {
            pad: "x".repeat(476),
        }])
    }

    fn apply(&mut self, _: &ItemEvent) {
        self.events += 1;
    }
}
