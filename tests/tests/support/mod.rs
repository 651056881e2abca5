//! Shared helpers of the cross-crate tests.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod balances;
pub mod bank;
pub mod hostile;
pub mod infra;
pub mod reliability;
pub mod subscriber;

use cim_nats::testing::NatsServer;

/// Starts a JetStream server for one test and connects a client to it.
pub async fn server() -> (NatsServer, async_nats::Client) {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = server
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.url()));
    (server, client)
}

pub use cim_nats::testing::wait_until;
