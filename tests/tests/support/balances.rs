//! A per-key read model of the bank domain that writes only its event's aggregate's row, so
//! that it can be worked in partitions (`scale_out_*` tests and their member program).
#![allow(dead_code, unreachable_pub, missing_docs)]

use async_trait::async_trait;
use cim_nats::jetstream::{KeyedProjection, Rows};
use cim_nats::{Envelope, ProjectionError};
use serde::{Deserialize, Serialize};

use super::bank::AccountEvent;

/// One account's row: its balance, the events applied and the last version applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow {
    pub balance: u64,
    pub events: u64,
    pub version: u64,
}

/// The `balances` model, table `account`, one row per account.
pub struct Balances;

#[async_trait]
impl KeyedProjection for Balances {
    type Event = AccountEvent;
    type Row = AccountRow;
    const NAME: &'static str = "balances";

    async fn apply(
        &self,
        event: &Envelope<AccountEvent>,
        rows: &mut Rows<'_, AccountRow>,
    ) -> Result<(), ProjectionError> {
        let id = event.aggregate_id().to_string();
        let mut row = rows.get("account", &id).await?.unwrap_or_default();
        let version = event.version();
        if version != row.version + 1 {
            return Err(ProjectionError::Apply {
                projection: "balances".into(),
                sequence: event.sequence().0,
                reason: format!(
                    "account {id}: version {version} applied after {}",
                    row.version
                ),
            });
        }
        match &event.event {
            AccountEvent::Opened { .. } => {}
            AccountEvent::Deposited { amount, .. } => row.balance += amount,
            AccountEvent::Withdrawn { amount, .. } => row.balance -= amount,
        }
        row.events += 1;
        row.version = version;
        rows.put("account", &id, row)
    }
}
