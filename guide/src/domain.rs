//! The library domain, pure: ids, events, commands and the `Book` aggregate. No I/O.

// ANCHOR: ids
use cim_nats::EntityId;
use uuid::Uuid;

/// A book of the catalogue: the aggregate's id, the last token of its events' subjects.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
#[entity_id(aggregate)]
pub struct BookId(Uuid);

/// A member of the library. Not an aggregate here, so it does not convert into an
/// `AggregateId`: it cannot be passed where a book's id is expected.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
pub struct MemberId(Uuid);
// ANCHOR_END: ids

// ANCHOR: events
use cim_nats::{EventId, NatsEvent};
use serde::{Deserialize, Serialize};

/// What happened to a book. Subjects: `library.{aggregate}.{operation}.{book_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "library", aggregate = "book", event_id = "event_id")]
pub enum LibraryEvent {
    /// A book entered the catalogue: `library.book.added`.
    #[nats_event(operation = "added")]
    BookAdded {
        /// The event's id, set by the store when it appends the event.
        event_id: EventId,
        /// The book. Only this event names its aggregate: the repository refuses to append
        /// it to another one.
        #[nats_event(aggregate_id)]
        book: BookId,
        /// Its title.
        title: String,
        /// Its first copies.
        copies: u32,
    },
    /// One more copy was bought: `library.book.restocked`.
    #[nats_event(operation = "restocked")]
    CopyAdded {
        /// The event's id.
        event_id: EventId,
    },
    /// A copy was lent: `library.loan.started`.
    #[nats_event(aggregate = "loan", operation = "started")]
    CopyLent {
        /// The event's id.
        event_id: EventId,
        /// Who has it.
        member: MemberId,
    },
    /// A copy came back: `library.loan.ended`.
    #[nats_event(aggregate = "loan", operation = "ended")]
    CopyReturned {
        /// The event's id.
        event_id: EventId,
        /// Who brought it back.
        member: MemberId,
    },
}
// ANCHOR_END: events

// ANCHOR: commands
/// What can be asked of a book.
#[derive(Debug, Clone)]
pub enum BookCommand {
    /// Put a book in the catalogue.
    Add {
        /// The new book's id.
        book: BookId,
        /// Its title.
        title: String,
        /// How many copies (at least one).
        copies: u32,
    },
    /// Lend a copy to a member.
    Lend {
        /// Who borrows it.
        member: MemberId,
    },
    /// Take a member's copy back.
    Return {
        /// Who brings it back.
        member: MemberId,
    },
    /// Buy one more copy if none is on the shelf; nothing otherwise.
    Restock,
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// `Add` on a book already in the catalogue.
    #[error("book {0} is already in the catalogue")]
    AlreadyAdded(BookId),
    /// A command on a book never added.
    #[error("the book is not in the catalogue")]
    NotInCatalogue,
    /// `Add` without a title or without copies.
    #[error("a book needs a title and at least one copy")]
    Invalid,
    /// Every copy is out.
    #[error("no copy of {title:?} is on the shelf")]
    NoCopyLeft {
        /// The book's title.
        title: String,
    },
    /// The member already has a copy of this book.
    #[error("member {0} already has a copy")]
    AlreadyBorrowed(MemberId),
    /// The member has no copy of this book to return.
    #[error("member {0} has no copy to return")]
    NotBorrowed(MemberId),
}
// ANCHOR_END: commands

// ANCHOR: aggregate
use std::collections::BTreeSet;

use cim_nats::Aggregate;

/// A book: its copies and who has them. The consistency unit: every event of one book is on
/// one version sequence, checked by the server on each append.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Book {
    id: Option<BookId>,
    title: String,
    copies: u32,
    borrowers: BTreeSet<MemberId>,
}

impl Book {
    /// Copies owned.
    pub fn copies(&self) -> u32 {
        self.copies
    }

    /// Copies on the shelf (owned and not lent).
    pub fn on_shelf(&self) -> usize {
        (self.copies as usize).saturating_sub(self.borrowers.len())
    }
}

impl Aggregate for Book {
    type Event = LibraryEvent;
    type Command = BookCommand;
    type Error = BookError;

    fn handle(&self, command: BookCommand) -> Result<Vec<LibraryEvent>, BookError> {
        use BookCommand as C;
        use LibraryEvent as E;
        // The store gives each event its id when it appends it (`EventId::derive`).
        let event_id = EventId::unassigned();
        let event = match command {
            C::Add {
                book,
                title,
                copies,
            } => {
                if let Some(id) = self.id {
                    return Err(BookError::AlreadyAdded(id));
                }
                if title.trim().is_empty() || copies == 0 {
                    return Err(BookError::Invalid);
                }
                E::BookAdded {
                    event_id,
                    book,
                    title,
                    copies,
                }
            }
            _ if self.id.is_none() => return Err(BookError::NotInCatalogue),
            C::Lend { member } => {
                if self.borrowers.contains(&member) {
                    return Err(BookError::AlreadyBorrowed(member));
                }
                if self.on_shelf() == 0 {
                    return Err(BookError::NoCopyLeft {
                        title: self.title.clone(),
                    });
                }
                E::CopyLent { event_id, member }
            }
            C::Return { member } => {
                if !self.borrowers.contains(&member) {
                    return Err(BookError::NotBorrowed(member));
                }
                E::CopyReturned { event_id, member }
            }
            // Nothing to do is no event, not an error: a repeated request is harmless.
            C::Restock if self.on_shelf() > 0 => return Ok(vec![]),
            C::Restock => E::CopyAdded { event_id },
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &LibraryEvent) {
        match event {
            LibraryEvent::BookAdded {
                book,
                title,
                copies,
                ..
            } => {
                self.id = Some(*book);
                self.title.clone_from(title);
                self.copies = *copies;
            }
            LibraryEvent::CopyAdded { .. } => self.copies += 1,
            LibraryEvent::CopyLent { member, .. } => {
                self.borrowers.insert(*member);
            }
            LibraryEvent::CopyReturned { member, .. } => {
                self.borrowers.remove(member);
            }
        }
    }
}
// ANCHOR_END: aggregate

#[cfg(test)]
mod tests {
    // ANCHOR: unit_tests
    use cim_nats::harness::AggregateTest;
    use cim_nats::{Aggregate, AggregateId, EventId, NatsEvent};

    use super::*;

    fn added(book: BookId, copies: u32) -> LibraryEvent {
        let title = "Dune".to_owned();
        LibraryEvent::BookAdded {
            event_id: EventId::unassigned(),
            book,
            title,
            copies,
        }
    }

    fn lent(member: MemberId) -> LibraryEvent {
        LibraryEvent::CopyLent {
            event_id: EventId::unassigned(),
            member,
        }
    }

    #[test]
    fn events_know_their_subjects() {
        let book = BookId::new();
        let id = AggregateId::from(book);
        assert_eq!(
            added(book, 1).subject(&id).as_str(),
            format!("library.book.added.{book}")
        );
        assert_eq!(added(book, 1).aggregate_id(), Ok(Some(id.clone())));
        assert_eq!(lent(MemberId::new()).aggregate_id(), Ok(None)); // takes the book's
        assert_eq!(LibraryEvent::COPY_LENT_EVENTS, "library.loan.started.*");
        assert_eq!(LibraryEvent::DOMAIN_WILDCARD, "library.>");
    }

    #[test]
    fn a_copy_is_lent_while_one_is_on_the_shelf() {
        let (book, ada) = (BookId::new(), MemberId::new());
        let state = AggregateTest::<Book>::given([added(book, 1)])
            .when(BookCommand::Lend { member: ada })
            .then_expect(vec![lent(ada)]);
        assert_eq!(state.on_shelf(), 0);
    }

    #[test]
    fn the_last_copy_is_lent_once() {
        let (book, ada, bob) = (BookId::new(), MemberId::new(), MemberId::new());
        AggregateTest::<Book>::given([added(book, 1), lent(ada)])
            .when(BookCommand::Lend { member: bob })
            .then_expect_error(BookError::NoCopyLeft {
                title: "Dune".into(),
            });
    }

    #[test]
    fn restocking_buys_a_copy_only_when_none_is_on_the_shelf() {
        let (book, ada) = (BookId::new(), MemberId::new());
        AggregateTest::<Book>::given([added(book, 1)])
            .when(BookCommand::Restock)
            .then_expect(vec![]);
        let book = AggregateTest::<Book>::given([added(book, 1), lent(ada)])
            .when(BookCommand::Restock)
            .then_expect(vec![LibraryEvent::CopyAdded {
                event_id: EventId::unassigned(),
            }]);
        assert_eq!((book.copies(), book.on_shelf()), (2, 1));
    }

    #[test]
    fn nothing_happens_to_a_book_never_added() {
        let state = Book::from_events([]);
        assert_eq!(
            state.handle(BookCommand::Restock),
            Err(BookError::NotInCatalogue)
        );
    }
    // ANCHOR_END: unit_tests
}
