//! The library as a service: the store, the repository, the shelf and the restock policy.

// ANCHOR: service
use std::sync::Arc;

use cim_nats::jetstream::{
    JetStreamEventStore, ReadModelHandle, ReadModelOptions, SubscriptionHandle,
};
use cim_nats::{ProjectionError, Repository, SetupError, SubscriberError};

use crate::domain::{Book, LibraryEvent};
use crate::restock::restock;
use crate::shelf::Shelf;

/// The durable name of the restock policy's consumer.
pub const RESTOCK: &str = "library-restock";

/// Why the library could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The event store could not be opened.
    #[error(transparent)]
    Store(#[from] SetupError),
    /// The shelf could not start, or stopped with an error.
    #[error(transparent)]
    Shelf(#[from] ProjectionError),
    /// The restock policy could not subscribe, or stopped with an error.
    #[error(transparent)]
    Restock(#[from] SubscriberError),
}

/// The library, running.
#[derive(Debug)]
pub struct Library {
    /// The event store: stream `LIBRARY_EVENTS` on `library.>`.
    pub store: JetStreamEventStore,
    /// The books, for commands.
    pub books: Arc<Repository<Book>>,
    /// The shelf read model, following the stream.
    pub shelf: ReadModelHandle<Shelf>,
    /// The restock policy's subscription.
    pub restock: SubscriptionHandle,
}

impl Library {
    /// Opens the store (creating its stream if needed), starts the shelf (resumed from its
    /// checkpoint) and subscribes the restock policy (resumed where its consumer stopped).
    ///
    /// # Errors
    ///
    /// When the store, the read model or the subscription cannot be set up.
    pub async fn start(client: async_nats::Client) -> Result<Self, LibraryError> {
        let store = JetStreamEventStore::for_events::<LibraryEvent>(client).await?;
        let books = Arc::new(store.repository::<Book>());
        let shelf = store.read_model(Shelf, ReadModelOptions::default()).await?;
        let restock = store
            .subscriber()
            .subject(LibraryEvent::COPY_LENT_EVENTS)
            .handler(restock(Arc::clone(&books)))
            .durable(RESTOCK)
            .build()?
            .subscribe()
            .await?;
        Ok(Self {
            store,
            books,
            shelf,
            restock,
        })
    }

    /// Stops the policy (after the events in hand), then the shelf (committing what it applied).
    ///
    /// # Errors
    ///
    /// The error either stopped with.
    pub async fn shutdown(self) -> Result<(), LibraryError> {
        self.restock.shutdown().await?;
        self.shelf.shutdown().await?;
        Ok(())
    }
}
// ANCHOR_END: service
