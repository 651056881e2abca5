//! Test support (feature `testing`): a real nats-server per test.
//!
//! [`NatsServer::start`] runs nats-server with JetStream on a free loopback port with its own
//! store directory, waits until it accepts connections, and kills it and removes the directory
//! when dropped. It can be killed and restarted on the same port and store for fault tests, and
//! [`NatsCluster`] starts several as a JetStream cluster.
//!
//! The binary is taken from `NATS_SERVER_BIN`, else from a project-local `.tools/nats-server`
//! folder found in the current directory or one of its parents, else from `PATH`. A binary of a
//! version not in [`crate::jetstream::ACCEPTED_SERVER_VERSIONS`] is skipped with a message saying
//! so.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cim_nats::testing::NatsServer;
//!
//! let server = NatsServer::start()?;
//! let client = async_nats::connect(server.url()).await?;
//! # Ok(()) }
//! ```

mod binary;
mod fixture;
mod raw;
mod server;
mod wait;

pub use binary::{find_nats_server, NatsServerBinary, LOCAL_DIR};
pub use fixture::{RawEvent, TestStore};
pub use raw::publish_raw;
pub use server::{NatsCluster, NatsServer, NatsServerBuilder, TestServerError};
pub use wait::wait_until;
