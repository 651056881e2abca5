//! The restock policy: a reaction inside the domain, on a typed subscriber.

// ANCHOR: restock
use std::sync::Arc;

use cim_nats::subscriber::{EventHandler, HandlerResultExt, TypedHandler};
use cim_nats::{Envelope, Repository};

use crate::domain::{Book, BookCommand, BookId, LibraryEvent};

/// When a loan leaves no copy of a book on the shelf, buy one more. Subscribe it to
/// [`LibraryEvent::COPY_LENT_EVENTS`].
///
/// Delivery is at least once: `Restock` decides no event while a copy is on the shelf, so a
/// second delivery of the same loan buys nothing more.
pub fn restock(books: Arc<Repository<Book>>) -> impl EventHandler {
    TypedHandler::new(move |lent: Envelope<LibraryEvent>| {
        let books = Arc::clone(&books);
        async move {
            // An id that does not parse never will: permanent, straight to the dead letter.
            let book: BookId = lent.typed_aggregate_id().permanent()?;
            // A conflict with a concurrent loan is decided again on the new state; an error
            // left has the event delivered again after a backoff.
            books
                .execute_with_retry(&book.into(), || BookCommand::Restock, 3)
                .await?;
            Ok(())
        }
    })
}
// ANCHOR_END: restock
