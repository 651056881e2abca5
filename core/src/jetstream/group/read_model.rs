//! A read model worked as a consumer group: each member runs the partitions it holds.

use std::time::Duration;

use crate::jetstream::group::{check_partitions, GroupMember, GroupOptions, PartitionWork};
use crate::jetstream::{
    JetStreamEventStore, KeyedProjection, PartitionedView, ReadModelOptions, ReadModelRunner,
};
use crate::projection::ProjectionError;
use crate::store::{StoreError, StoreErrorKind};

/// How often a partition's work looks whether its runner stopped on its own.
const RUNNER_POLL: Duration = Duration::from_millis(200);

impl ReadModelRunner {
    /// Works read model `P` as a member of consumer group `group`: the model's events are
    /// split into [`GroupOptions::partitions`] partitions of the aggregates (the stream's
    /// [`PartitionedView`]), and this member runs the partitions it holds
    /// ([`ReadModelRunner::start_partition`], a projection made by `make` for each), each
    /// committing its rows with its own checkpoint key, fenced: a member deposed while it
    /// commits has its commit refused, so each event's effect is stored exactly once.
    ///
    /// The model must write only rows of its event's aggregate (a row written from two
    /// partitions would be written by two members without a common fence). A model that joins
    /// aggregates (e.g. connections between machines) keys each row by one aggregate and
    /// stores the other side's data in a row of its own, or is run as one partition.
    ///
    /// Readers are unchanged: [`ReadModel`](crate::jetstream::ReadModel) reads the rows and
    /// waits for a sequence across every partition's checkpoint.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Group`] when the group cannot be joined (another partition count, the
    /// group bucket refused), [`ProjectionError::Store`] when the partitioned view cannot be
    /// set up.
    pub async fn join_group<P, F>(
        store: &JetStreamEventStore,
        group: &str,
        make: F,
        options: ReadModelOptions,
        mut group_options: GroupOptions,
    ) -> Result<GroupMember, ProjectionError>
    where
        P: KeyedProjection,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let group_error = |source| ProjectionError::Group {
            projection: P::NAME.to_owned(),
            source,
        };
        if group_options.replicas.is_none() {
            group_options.replicas = Some(store.config().replicas);
        }
        check_partitions(store.client(), group, &group_options)
            .await
            .map_err(group_error)?;
        let view = PartitionedView::ensure(store, group_options.partitions)
            .await
            .map_err(|e| ProjectionError::Store {
                projection: P::NAME.to_owned(),
                source: StoreError::with_source(StoreErrorKind::StreamNotFound, e),
            })?;
        let client = store.client().clone();
        let store = store.clone();
        let make = std::sync::Arc::new(make);
        let work: PartitionWork = std::sync::Arc::new(move |lease, mut stop| {
            let store = store.clone();
            let view = view.clone();
            let options = options.clone();
            let make = std::sync::Arc::clone(&make);
            Box::pin(async move {
                let handle =
                    ReadModelRunner::start_partition(&store, &view, make(), options, &lease)
                        .await
                        .map_err(|e| e.to_string())?;
                loop {
                    tokio::select! {
                        () = stop.stopped() => {
                            return handle.shutdown().await.map_err(|e| e.to_string());
                        }
                        () = tokio::time::sleep(RUNNER_POLL) => {
                            if handle.is_finished() {
                                return match handle.shutdown().await {
                                    Ok(()) => Err("the partition's runner stopped".to_owned()),
                                    Err(e) => Err(e.to_string()),
                                };
                            }
                        }
                    }
                }
            })
        });
        GroupMember::start(client, group, group_options, work)
            .await
            .map_err(group_error)
    }
}
