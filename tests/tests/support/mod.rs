//! Shared helpers of the cross-crate tests.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod balances;
pub mod bank;
pub mod hostile;
pub mod infra;
pub mod reliability;
pub mod subscriber;

use cim_nats::testing::NatsServer;

/// A server of its own with the `bank` domain's stream, a store on it and a repository of
/// accounts.
pub async fn bank_store() -> (
    NatsServer,
    async_nats::Client,
    cim_nats::jetstream::JetStreamEventStore,
    std::sync::Arc<cim_nats::Repository<bank::Account>>,
) {
    let (server, client) = server().await;
    let store = cim_nats::jetstream::JetStreamEventStore::new(
        client.clone(),
        cim_nats::jetstream::StoreConfig::for_domain("bank"),
    )
    .await
    .expect("store");
    let repo = std::sync::Arc::new(cim_nats::Repository::<bank::Account>::new(store.clone()));
    (server, client, store, repo)
}

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
