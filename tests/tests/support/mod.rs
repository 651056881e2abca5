//! Shared helpers of the cross-crate tests.
#![allow(dead_code, unreachable_pub)]

pub mod bank;

use std::time::{Duration, Instant};

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

/// Waits until `check` returns true, polling every 10 ms, or panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
