//! A small sample aggregate for repository and projection tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use cim_nats::{Aggregate, EventId, NatsEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "bank", aggregate = "account")]
pub enum AccountEvent {
    #[nats_event(operation = "opened")]
    Opened {
        #[nats_event(event_id)]
        id: EventId,
        owner: String,
    },
    #[nats_event(operation = "deposited")]
    Deposited {
        #[nats_event(event_id)]
        id: EventId,
        amount: u64,
    },
    #[nats_event(operation = "withdrawn")]
    Withdrawn {
        #[nats_event(event_id)]
        id: EventId,
        amount: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccountCommand {
    Open { owner: String },
    Deposit(u64),
    Withdraw(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: u64, asked: u64 },
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub owner: Option<String>,
    pub balance: u64,
    pub operations: u64,
}

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = AccountError;
    const TYPE: &'static str = "account";

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner } => {
                if self.owner.is_some() {
                    return Err(AccountError::AlreadyOpen);
                }
                Ok(vec![AccountEvent::Opened {
                    id: EventId::unassigned(),
                    owner,
                }])
            }
            AccountCommand::Deposit(amount) => {
                if self.owner.is_none() {
                    return Err(AccountError::NotOpen);
                }
                Ok(vec![AccountEvent::Deposited {
                    id: EventId::unassigned(),
                    amount,
                }])
            }
            AccountCommand::Withdraw(amount) => {
                if self.owner.is_none() {
                    return Err(AccountError::NotOpen);
                }
                if amount > self.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: self.balance,
                        asked: amount,
                    });
                }
                Ok(vec![AccountEvent::Withdrawn {
                    id: EventId::unassigned(),
                    amount,
                }])
            }
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        self.operations += 1;
        match event {
            AccountEvent::Opened { owner, .. } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount, .. } => self.balance += amount,
            AccountEvent::Withdrawn { amount, .. } => self.balance -= amount,
        }
    }
}
