//! The library domain built in `docs/new-domain.md`: books, their copies and loans, event
//! sourced on NATS JetStream with cim-nats. Every Rust block of the guide is a part of this
//! crate between `// ANCHOR: name` and `// ANCHOR_END: name`, checked by `tests/guide_blocks.rs`.

pub mod domain;
pub mod restock;
pub mod service;
pub mod shelf;

pub use domain::{Book, BookCommand, BookError, BookId, LibraryEvent, MemberId};
pub use restock::restock;
pub use service::{Library, LibraryError, RESTOCK};
pub use shelf::{Shelf, ShelfRow};
