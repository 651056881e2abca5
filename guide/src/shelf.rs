//! The shelf: a read model kept per book in JetStream KV.

// ANCHOR: shelf
use async_trait::async_trait;
use cim_nats::jetstream::{KeyedProjection, Rows};
use cim_nats::{Envelope, ProjectionError};
use serde::{Deserialize, Serialize};

use crate::domain::LibraryEvent;

/// A book on the shelf: a row of table [`Shelf::TABLE`], keyed by the book's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShelfRow {
    /// The title.
    pub title: String,
    /// Copies owned.
    pub copies: u32,
    /// Copies out on loan.
    pub on_loan: u32,
    /// Loans ever made: applying an event twice would show here.
    pub times_lent: u64,
}

/// The shelf read model: what each book has on the shelf.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shelf;

impl Shelf {
    /// Its one table: a row per book.
    pub const TABLE: &'static str = "book";
}

#[async_trait]
impl KeyedProjection for Shelf {
    type Event = LibraryEvent;
    type Row = ShelfRow;
    const NAME: &'static str = "shelf";

    async fn apply(
        &self,
        event: &Envelope<LibraryEvent>,
        rows: &mut Rows<'_, ShelfRow>,
    ) -> Result<(), ProjectionError> {
        let book = event.aggregate_id().as_str();
        let mut row = match &event.event {
            LibraryEvent::BookAdded { title, copies, .. } => ShelfRow {
                title: title.clone(),
                copies: *copies,
                on_loan: 0,
                times_lent: 0,
            },
            _ => rows
                .get(Self::TABLE, book)
                .await?
                .ok_or_else(|| ProjectionError::Apply {
                    projection: Self::NAME.to_owned(),
                    sequence: event.sequence().0,
                    reason: format!("no book {book} on the shelf"),
                })?,
        };
        match &event.event {
            LibraryEvent::BookAdded { .. } => {}
            LibraryEvent::CopyAdded { .. } => row.copies += 1,
            LibraryEvent::CopyLent { .. } => {
                row.on_loan += 1;
                row.times_lent += 1;
            }
            LibraryEvent::CopyReturned { .. } => row.on_loan -= 1,
        }
        rows.put(Self::TABLE, book, row)
    }
}
// ANCHOR_END: shelf
