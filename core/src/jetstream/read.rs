//! Reading the whole stream in order with bounded memory.

use futures::stream::{self, Stream, StreamExt};
use tokio::task::JoinHandle;

use crate::envelope::StoredEvent;
use crate::error::{StoreError, StoreErrorKind};
use crate::jetstream::api::Page;
use crate::jetstream::codec::decode_stored;
use crate::jetstream::store::{JetStreamEventStore, PageStart};
use crate::store::ReadFrom;

enum State {
    /// Not polled yet: nothing is fetched until the stream is polled.
    Start(PageStart),
    /// The next page is being fetched in the background.
    Fetching(JoinHandle<Result<Page, StoreError>>),
    Done,
}

fn fetch(store: &JetStreamEventStore, from: PageStart) -> State {
    let store = store.clone();
    State::Fetching(tokio::spawn(async move { store.page(from).await }))
}

/// Every event from `from` on, a page of batched direct gets at a time, the next page fetched
/// while the current one is consumed (so at most two pages are held). No consumer is created, so
/// none can leak. A message that is not a readable event is an `Err` item naming its sequence;
/// reading goes on after it.
pub(crate) fn stream_all(
    store: JetStreamEventStore,
    from: ReadFrom,
) -> impl Stream<Item = Result<StoredEvent, StoreError>> + Send + 'static {
    let start = match from {
        ReadFrom::Start => PageStart::Sequence(1),
        ReadFrom::Sequence(seq) => PageStart::Sequence(seq.0.max(1)),
        ReadFrom::Time(t) => PageStart::Time(t),
    };
    stream::unfold(State::Start(start), move |state| {
        let store = store.clone();
        async move {
            let state = match state {
                State::Start(from) => fetch(&store, from),
                other => other,
            };
            let State::Fetching(handle) = state else {
                return None;
            };
            let page = match handle.await {
                Ok(page) => page,
                Err(e) => Err(StoreError::with_source(StoreErrorKind::Connection, e)),
            };
            match page {
                Err(e) => Some((vec![Err(e)], State::Done)),
                Ok(page) => {
                    let next = match page.messages.last() {
                        Some(last) if page.pending > 0 => {
                            fetch(&store, PageStart::Sequence(last.sequence + 1))
                        }
                        _ => State::Done,
                    };
                    let items: Vec<_> = page.messages.into_iter().map(decode_stored).collect();
                    if items.is_empty() {
                        None
                    } else {
                        Some((items, next))
                    }
                }
            }
        }
    })
    .flat_map(stream::iter)
}
