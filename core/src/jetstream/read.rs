//! Reading the whole stream in order with bounded memory, through an
//! [`OrderedReader`](crate::jetstream::reader::OrderedReader): one pull consumer per read, no
//! acknowledgements, batches of up to 5,000 messages fetched ahead while the current ones are
//! consumed, created for the read and deleted when it ends or is dropped. (An aggregate load
//! never creates a consumer; a whole-stream read is the one place where a consumer is the fast
//! path.)

use futures::stream::{self, Stream};

use crate::envelope::StoredEvent;
use crate::jetstream::codec::{decode_stored, RawMessage};
use crate::jetstream::order::VersionOrder;
use crate::jetstream::reader::{OrderedReader, ReadSpec, Start};
use crate::store::ReadFrom;
use crate::store::StoreError;

/// Where a read of the stream starts, as a reader's start.
pub(crate) fn start_of(from: ReadFrom) -> Start {
    match from {
        ReadFrom::Start => Start::Sequence(1),
        ReadFrom::Sequence(seq) => Start::Sequence(seq.0.max(1)),
        ReadFrom::Time(t) => Start::Time(t),
    }
}

/// Every event from `from` to the end of the stream (as it grows while read), in order. A
/// message that is not a readable event (including one the NATS client cannot parse) is an `Err`
/// item naming its sequence; reading goes on after it. No message is skipped without an item:
/// the reader checks that every delivery follows the one before.
pub(crate) fn stream_all(
    client: async_nats::Client,
    stream: String,
    timeout: std::time::Duration,
    from: ReadFrom,
) -> impl Stream<Item = Result<StoredEvent, StoreError>> + Send + 'static {
    let reader = OrderedReader::start(
        client,
        ReadSpec {
            stream,
            filter: None,
            start: start_of(from),
            follow: false,
            timeout,
        },
    );
    let state = (
        reader,
        std::collections::VecDeque::<RawMessage>::new(),
        VersionOrder::default(),
    );
    stream::unfold(state, |(mut reader, mut buffered, mut order)| async move {
        loop {
            if let Some(raw) = buffered.pop_front() {
                if crate::store::is_check_marker(&raw.subject) {
                    // A check marker of an append to several aggregates: not an event.
                    continue;
                }
                let item = decode_in_order(raw, &mut order);
                return Some((item, (reader, buffered, order)));
            }
            match reader.next().await? {
                Ok(chunk) => buffered.extend(chunk),
                // The read cannot go on: this error is its last item.
                Err(e) => return Some((Err(e), (reader, buffered, order))),
            }
        }
    })
}

/// Decodes a message read in stream order; an event whose version is not above the previous one
/// of its aggregate (see `order.rs`) is an unreadable event at its sequence.
pub(crate) fn decode_in_order(
    raw: RawMessage,
    order: &mut VersionOrder,
) -> Result<StoredEvent, StoreError> {
    let event = decode_stored(raw)?;
    order
        .check(
            &event.aggregate_id,
            event.stream_sequence.0,
            event.aggregate_version,
        )
        .map_err(|reason| {
            StoreError::new(crate::store::StoreErrorKind::Decode {
                sequence: event.stream_sequence.0,
                reason,
            })
        })?;
    Ok(event)
}
