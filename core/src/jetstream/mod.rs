//! The JetStream implementations (feature `jetstream`, on by default).

mod api;
mod codec;
mod config;
mod kv;
mod order;
mod projection;
mod read;
mod reader;
mod server;
mod store;

pub use config::{Storage, StoreConfig};
pub use kv::KvSnapshotStore;
pub use projection::{ProjectionHandle, ProjectionOptions, ProjectionRunner, Skipped};
pub use server::{check_server_info, ServerVersion, ACCEPTED_SERVER_VERSIONS};
pub use store::{JetStreamEventStore, MAX_EVENTS_PER_APPEND};
pub mod subscriber;
pub use subscriber::{EventSubscriber, EventSubscriberBuilder, SubscriptionHandle};
