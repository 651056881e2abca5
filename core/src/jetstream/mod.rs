//! The JetStream implementations (feature `jetstream`, on by default).

mod api;
mod codec;
mod config;
pub mod group;
mod kv;
mod order;
mod partition;
mod projection;
mod read;
mod read_model;
mod reader;
pub mod setup;
mod snapshots;
mod store;

pub use crate::store::MAX_EVENTS_PER_APPEND;
pub use config::{Storage, StoreConfig};
pub use partition::{partition_of, PartitionedView, PARTITION_PREFIX};
pub use projection::{ProjectionHandle, ProjectionOptions, ProjectionRunner, Skipped};
pub use read_model::{
    checkpoint_key, checkpoint_partition, follow_bucket, parse_row_key, rebuild_subject,
    request_rebuild, row_key, BucketEntry, Checkpoint, CheckpointFront, KeyedProjection, Lag,
    Pointer, ReadModel, ReadModelHandle, ReadModelOptions, ReadModelRunner, Rebuild, RebuildAnswer,
    RowChange, Rows, CHECKPOINT_PREFIX, MAX_ROWS_PER_COMMIT,
};
pub use setup::{
    check_server_info, ServerVersion, SetupError, SetupErrorKind, ACCEPTED_SERVER_VERSIONS,
};
pub use snapshots::KvSnapshotStore;
pub use store::JetStreamEventStore;
pub mod subscriber;
pub use subscriber::{
    EventSubscriber, EventSubscriberBuilder, SubscriberError, SubscriberErrorKind,
    SubscriptionHandle,
};
