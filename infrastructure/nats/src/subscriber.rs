//! Subscribing to infrastructure events on JetStream consumers: durable or ephemeral,
//! acknowledged after the handler succeeds, retried with backoff, dead-lettered after the last
//! delivery, with per-aggregate order kept.
//!
//! ```no_run
//! use cim_infrastructure_nats::{
//!     subjects::subjects,
//!     subscriber::{EventSubscriberBuilder, FnEventHandler},
//!     StoredEvent,
//! };
//! use std::sync::Arc;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://localhost:4222").await?;
//! let handler = Arc::new(FnEventHandler::new(|event: StoredEvent| {
//!     println!("{} {}", event.event_type, event.subject);
//!     Ok(())
//! }));
//! let handle = EventSubscriberBuilder::new()
//!     .client(client)
//!     .subject(subjects::all_compute_events())
//!     .durable("inventory")
//!     .handler(handler)
//!     .build()?
//!     .subscribe()
//!     .await?;
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```

pub use cim_nats::jetstream::subscriber::*;
pub use cim_nats::subscriber::*;
