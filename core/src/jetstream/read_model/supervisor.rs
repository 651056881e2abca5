//! The task of a read model's runner: it drives the runner of the live bucket and, while a
//! rebuild is under way, the runner that builds the new generation's bucket beside it, both in
//! one task (so that an abort stops both at once, as a crash would); it watches the pointer for
//! both, serves rebuild requests while its version is live, and once the new bucket is live
//! goes on with its runner as the live one, the handle then speaking of it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::watch;

use super::partitioned::{last_event, view_reader};
use super::rebuild::{rebuild_subject, RebuildAnswer};
use super::{
    check_name, launch, open_model_bucket, reader, setup_error, write_pointer, Build, Ended,
    KeyedProjection, Lane, NatsEvent, Opened, OrderedReader, Pointer, PointerSeen, Progress,
    ReadModelHandle, ReadModelOptions, ReadSpec, Rebuild, Source, Start,
};
use crate::jetstream::store::JetStreamEventStore;
use crate::projection::ProjectionError;

/// The queue group the runners of a model serve rebuild requests in.
const QUEUE: &str = "cim-rebuild";
/// How often the task sets up again a pointer watch or a request subscription that failed.
const RETRY: Duration = Duration::from_secs(1);

/// What every bucket's runner of this task is made of.
struct Setup<P> {
    store: JetStreamEventStore,
    projection: Arc<P>,
    options: ReadModelOptions,
    source: Source,
    pointers: kv::Store,
    /// Held by every bucket runner's task while it runs (see [`ReadModelHandle::abort`]).
    alive: watch::Sender<()>,
}

impl<P: KeyedProjection> Setup<P> {
    /// The partition worked, of how many.
    fn partitions(&self) -> (u32, u32) {
        match &self.source {
            Source::Stream => (0, 1),
            Source::View { lease, .. } => (lease.partition, lease.partitions),
        }
    }

    /// The last event the model is to reflect of what the stream holds now.
    async fn target(&self) -> Result<u64, ProjectionError> {
        match &self.source {
            Source::Stream => Ok(crate::store::EventStore::last_sequence(&self.store)
                .await
                .map_err(|e| ProjectionError::Store {
                    projection: P::NAME.to_owned(),
                    source: e,
                })?
                .0),
            Source::View { .. } => last_event::<P>(&self.store).await,
        }
    }

    /// Sets up the runner of a bucket: the live one (`Build::Live`) or a rebuild's, whose
    /// pointer moves only once it has reached `floor` too.
    async fn lane(
        &self,
        build: &Build,
        pointer: watch::Receiver<PointerSeen>,
        floor: Option<watch::Receiver<u64>>,
    ) -> Result<Lane, ProjectionError> {
        let opened = Opened::open::<P>(
            &self.store,
            &self.options,
            &self.pointers,
            self.partitions(),
            build,
        )
        .await?;
        let start = opened.checkpoint.as_ref().map_or(0, |c| c.sequence);
        let projection = Arc::clone(&self.projection);
        let options = self.options.clone();
        match &self.source {
            Source::Stream => {
                let reader = OrderedReader::start(
                    self.store.client().clone(),
                    ReadSpec {
                        stream: self.store.stream_name().to_owned(),
                        filter: Some(<P::Event as NatsEvent>::DOMAIN_WILDCARD.to_owned()),
                        start: Start::Sequence(start + 1),
                        follow: true,
                        timeout: self.store.request_timeout(),
                    },
                );
                // A bucket built beside the live one goes live once it has read what the stream
                // held now (for a rebuild: when it was asked for).
                let target = match build {
                    Build::Rebuild(r) => r.target,
                    Build::Live => self.target().await?,
                };
                let progress = reader.progress();
                Ok(launch(
                    opened,
                    projection,
                    options,
                    (reader, progress),
                    target,
                    None,
                    pointer,
                    floor,
                    self.alive.clone(),
                ))
            }
            Source::View { view, lease } => {
                let view_sequence = opened.checkpoint.as_ref().and_then(|c| c.view_sequence);
                let (reading, feed) = view_reader::<P>(
                    &self.store,
                    view,
                    self.partitions(),
                    opened.checkpoint.as_ref(),
                );
                let target = match build {
                    Build::Rebuild(r) => r.target,
                    Build::Live => last_event::<P>(&self.store).await?,
                };
                tracing::info!(read_model = P::NAME, partition = lease.partition,
                    partitions = lease.partitions, group = %lease.group, member = %lease.member,
                    epoch = lease.epoch, bucket = %opened.bucket_name, checkpoint = start,
                    view_sequence = view_sequence.unwrap_or(0), "read model partition starting");
                Ok(launch(
                    opened,
                    projection,
                    options,
                    reading,
                    target,
                    Some(feed),
                    pointer,
                    floor,
                    self.alive.clone(),
                ))
            }
        }
    }
}

/// What the handle shows: the current (live) bucket's runner's, forwarded by the task.
struct Shown {
    committed: watch::Sender<u64>,
    progress: watch::Sender<watch::Receiver<Progress>>,
    live: watch::Sender<bool>,
    bucket: watch::Sender<String>,
    rebuilding: watch::Sender<Option<String>>,
}

/// Starts the runner's task of read model `P` read from `source`.
pub(super) async fn start<P: KeyedProjection>(
    store: &JetStreamEventStore,
    projection: P,
    options: ReadModelOptions,
    source: Source,
) -> Result<ReadModelHandle<P>, ProjectionError> {
    check_name(P::NAME)?;
    let pointers = crate::jetstream::kv::open_bucket(
        store.context(),
        &options.pointer_bucket,
        "read model pointers: the live bucket of each model (cim-nats)",
        store.config().replicas,
    )
    .await
    .map_err(|e| setup_error(P::NAME, &options.pointer_bucket, e))?;
    // Watched before the bucket's runner reads the pointer: no later change is missed.
    let pointer_watch = pointers
        .watch_with_history(P::NAME)
        .await
        .map_err(|e| setup_error(P::NAME, &options.pointer_bucket, e))?;
    let (pointer, pointer_rx) = watch::channel(None);
    let (alive_tx, alive) = watch::channel(());
    let setup = Setup {
        store: store.clone(),
        projection: Arc::new(projection),
        options,
        source,
        pointers,
        alive: alive_tx,
    };
    let current = setup.lane(&Build::Live, pointer_rx, None).await?;
    let (committed_tx, committed) = watch::channel(*current.committed.borrow());
    let (progress_tx, progress) = watch::channel(current.progress.clone());
    let (live_tx, live) = watch::channel(*current.live.borrow());
    let (bucket_tx, bucket) = watch::channel(current.bucket.clone());
    let (rebuilding_tx, rebuilding) = watch::channel(None);
    let (wanted, wanted_rx) = watch::channel(0u64);
    let (stop, stop_rx) = watch::channel(false);
    let stopped = Arc::new(std::sync::Mutex::new(None));
    let mut task = Task {
        setup,
        pointer_watch: Some(pointer_watch),
        pointer,
        current,
        building: None,
        requests: None,
        shown: Shown {
            committed: committed_tx,
            progress: progress_tx,
            live: live_tx,
            bucket: bucket_tx,
            rebuilding: rebuilding_tx,
        },
    };
    // A live runner answers requests from the moment it is started.
    let is_live = *task.current.live.borrow();
    task.serve_requests(is_live).await;
    let stopped_in_task = Arc::clone(&stopped);
    let task = tokio::spawn(async move {
        if let Err(e) = task.run(stop_rx, wanted_rx).await {
            tracing::error!(read_model = P::NAME, error = %e, "read model runner stopped");
            if let Ok(mut slot) = stopped_in_task.lock() {
                *slot = Some(Arc::new(e));
            }
        }
        // Its channels close only now: a waiter woken by their end finds the cause.
        drop(task);
    });
    Ok(ReadModelHandle {
        committed,
        progress,
        live,
        bucket,
        rebuilding,
        wanted,
        stop,
        stopped,
        task,
        alive,
        _projection: std::marker::PhantomData,
    })
}

/// Waits for the next change of `rx`; never, once its sender is gone.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The runner's task.
struct Task<P> {
    setup: Setup<P>,
    /// The pointer's changes (`None` after a failure, set up again every [`RETRY`]).
    pointer_watch: Option<kv::Watch>,
    /// The pointer as last seen, for the buckets' runners.
    pointer: watch::Sender<PointerSeen>,
    /// The runner of the live bucket (or of a new version's, built beside an older one).
    current: Lane,
    /// The runner of a rebuild under way.
    building: Option<Lane>,
    /// Rebuild requests, while the version is live.
    requests: Option<async_nats::Subscriber>,
    shown: Shown,
}

impl<P: KeyedProjection> Task<P> {
    async fn run(
        &mut self,
        mut stop: watch::Receiver<bool>,
        mut wanted: watch::Receiver<u64>,
    ) -> Result<(), ProjectionError> {
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return self.shut_down().await,
                ended = &mut self.current.work => {
                    let wanted = *wanted.borrow();
                    if !self.current_ended(ended, wanted).await? {
                        return Ok(());
                    }
                }
                ended = async {
                    match &mut self.building {
                        Some(lane) => (&mut lane.work).await,
                        None => std::future::pending().await,
                    }
                }, if self.building.is_some() => {
                    self.building_ended(ended).await;
                }
                () = changed(&mut wanted) => {
                    let want = *wanted.borrow_and_update();
                    self.current.wanted.send_replace(want);
                }
                () = changed(&mut self.current.committed) => {
                    let committed = *self.current.committed.borrow_and_update();
                    self.shown.committed.send_replace(committed);
                }
                () = changed(&mut self.current.live) => {
                    let live = *self.current.live.borrow_and_update();
                    self.shown.live.send_replace(live);
                    // The live bucket replaced by this runner's rebuild: it goes on serving
                    // through the hand-over to the rebuilt bucket's runner.
                    self.serve_requests(live || self.building.is_some()).await;
                }
                entry = async {
                    match &mut self.pointer_watch {
                        Some(watch) => watch.next().await,
                        None => std::future::pending().await,
                    }
                }, if self.pointer_watch.is_some() => {
                    self.pointer_entry(entry).await;
                }
                request = async {
                    match &mut self.requests {
                        Some(requests) => requests.next().await,
                        None => std::future::pending().await,
                    }
                }, if self.requests.is_some() => {
                    match request {
                        Some(request) => self.answer(request).await,
                        None => self.requests = None,
                    }
                }
                _ = retry.tick() => {
                    if self.pointer_watch.is_none() {
                        self.pointer_watch =
                            self.setup.pointers.watch_with_history(P::NAME).await.ok();
                    }
                    let live = *self.current.live.borrow();
                    self.serve_requests(live || self.building.is_some()).await;
                }
            }
        }
    }

    /// Stops both runners, each committing what it applied; the live one's outcome.
    async fn shut_down(&mut self) -> Result<(), ProjectionError> {
        let _ = self.current.stop.send(true);
        if let Some(lane) = &self.building {
            let _ = lane.stop.send(true);
        }
        let ended = (&mut self.current.work).await;
        self.shown
            .committed
            .send_replace(*self.current.committed.borrow_and_update());
        if let Some(mut lane) = self.building.take() {
            if let Err(e) = (&mut lane.work).await {
                tracing::warn!(read_model = P::NAME, bucket = %lane.bucket, error = %e,
                    "the rebuild's runner stopped with an error");
            }
        }
        if let Some(mut requests) = self.requests.take() {
            let _ = requests.unsubscribe().await;
        }
        ended.map(|_| ())
    }

    /// The live bucket's runner ended: replaced by the rebuild's (which goes on as the live
    /// one), or with an error (the task stops with it). `false`: the task ends.
    async fn current_ended(
        &mut self,
        ended: Result<Ended, ProjectionError>,
        wanted: u64,
    ) -> Result<bool, ProjectionError> {
        // What it last said (a runner stopped by a newer version is no longer live).
        self.shown
            .committed
            .send_replace(*self.current.committed.borrow_and_update());
        self.shown
            .live
            .send_replace(*self.current.live.borrow_and_update());
        match ended {
            Ok(Ended::Stopped) => Ok(false),
            Ok(Ended::Replaced) => {
                let live = self
                    .pointer
                    .borrow()
                    .as_ref()
                    .map(|(p, _)| p.bucket.clone());
                let next = match self.building.take() {
                    Some(lane) if live.as_deref() == Some(lane.bucket.as_str()) => lane,
                    other => {
                        if let Some(lane) = other {
                            self.stop_lane(lane).await;
                        }
                        // Another process's rebuild went live: this runner goes on in its bucket.
                        self.setup
                            .lane(&Build::Live, self.pointer.subscribe(), None)
                            .await?
                    }
                };
                tracing::info!(read_model = P::NAME, from = %self.current.bucket,
                    to = %next.bucket, "the runner goes on in the rebuilt bucket");
                self.promote(next, wanted);
                // Serving again at once: a request right after the switch finds a runner.
                let live = *self.current.live.borrow();
                self.serve_requests(live).await;
                Ok(true)
            }
            Err(e) => {
                if let Some(lane) = self.building.take() {
                    let bucket = lane.bucket.clone();
                    self.stop_lane(lane).await;
                    if matches!(e, ProjectionError::Superseded { .. }) {
                        // A newer version is live: the rebuild of this one has no reader.
                        self.delete_bucket(&bucket).await;
                    }
                }
                self.shown.rebuilding.send_replace(None);
                Err(e)
            }
        }
    }

    /// The rebuild's runner ended before it became the live one.
    async fn building_ended(&mut self, ended: Result<Ended, ProjectionError>) {
        let Some(lane) = self.building.take() else {
            return;
        };
        self.shown.rebuilding.send_replace(None);
        match ended {
            Ok(Ended::Stopped) => {}
            Ok(Ended::Replaced) | Err(ProjectionError::Superseded { .. }) => {
                self.delete_bucket(&lane.bucket).await;
            }
            Err(ProjectionError::Contended(reason)) => {
                tracing::info!(read_model = P::NAME, bucket = %lane.bucket, %reason,
                    "another runner builds this part of the rebuild");
            }
            Err(e) => {
                tracing::error!(read_model = P::NAME, bucket = %lane.bucket, error = %e,
                    "the rebuild failed: given up, the live bucket stays");
                self.give_up(&lane.bucket).await;
            }
        }
    }

    /// Makes `lane` the live runner: the handle speaks of it from now on.
    fn promote(&mut self, mut lane: Lane, wanted: u64) {
        self.shown
            .committed
            .send_replace(*lane.committed.borrow_and_update());
        self.shown.progress.send_replace(lane.progress.clone());
        self.shown.live.send_replace(*lane.live.borrow_and_update());
        self.shown.bucket.send_replace(lane.bucket.clone());
        self.shown.rebuilding.send_replace(None);
        lane.wanted.send_replace(wanted);
        self.current = lane;
    }

    /// Stops a runner and waits until it has committed what it applied.
    async fn stop_lane(&mut self, mut lane: Lane) {
        let _ = lane.stop.send(true);
        if let Err(e) = (&mut lane.work).await {
            tracing::debug!(read_model = P::NAME, bucket = %lane.bucket, error = %e,
                "a bucket's runner stopped with an error");
        }
    }

    async fn delete_bucket(&mut self, bucket: &str) {
        if let Err(e) = self.setup.store.context().delete_key_value(bucket).await {
            tracing::warn!(read_model = P::NAME, %bucket, error = %e,
                "a rebuild's bucket could not be deleted");
        }
    }

    /// Gives up the rebuild into `bucket`: the pointer no longer records it (the other
    /// partitions' runners stop theirs, a tool following it sees it end), and its bucket is
    /// deleted.
    async fn give_up(&mut self, bucket: &str) {
        let pointers = &self.setup.pointers.clone();
        if let Ok(Some((pointer, revision))) = reader::read_pointer(pointers, P::NAME).await {
            if pointer.rebuild.as_ref().is_some_and(|r| r.bucket == bucket) {
                let cleared = Pointer {
                    rebuild: None,
                    ..pointer
                };
                if let Err(e) = write_pointer(pointers, P::NAME, &cleared, Some(revision)).await {
                    tracing::warn!(read_model = P::NAME, error = %e,
                        "the given-up rebuild could not be cleared from the pointer");
                }
            }
        }
        self.delete_bucket(bucket).await;
    }

    /// A change of the pointer: handed to the buckets' runners; a rebuild it records is
    /// started (or one it no longer records stopped).
    async fn pointer_entry(&mut self, entry: Option<Result<kv::Entry, kv::WatcherError>>) {
        let entry = match entry {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => {
                tracing::warn!(read_model = P::NAME, error = %e,
                    "watching the pointer failed; watching again");
                self.pointer_watch = None;
                return;
            }
            None => {
                self.pointer_watch = None;
                return;
            }
        };
        if entry.operation != kv::Operation::Put {
            return;
        }
        let pointer = match serde_json::from_slice::<Pointer>(&entry.value) {
            Ok(pointer) => pointer,
            Err(e) => {
                tracing::warn!(read_model = P::NAME, error = %e, "the pointer does not decode");
                return;
            }
        };
        self.pointer
            .send_replace(Some((pointer.clone(), entry.revision)));
        if pointer.version != P::VERSION {
            return;
        }
        let on_live = pointer.bucket == self.current.bucket;
        let building = self.building.as_ref().map(|lane| lane.bucket.clone());
        match (pointer.rebuild, building) {
            (Some(rebuild), None) if on_live => self.start_building(rebuild).await,
            (Some(rebuild), Some(bucket)) if rebuild.bucket != bucket => {
                if let Some(lane) = self.building.take() {
                    self.stop_lane(lane).await;
                }
                if on_live {
                    self.start_building(rebuild).await;
                }
            }
            (None, Some(bucket)) if pointer.bucket != bucket => {
                // Given up by another runner of the model.
                tracing::info!(read_model = P::NAME, %bucket,
                    "the rebuild is no longer recorded: stopping its runner");
                if let Some(lane) = self.building.take() {
                    self.stop_lane(lane).await;
                }
                self.shown.rebuilding.send_replace(None);
            }
            _ => {}
        }
    }

    /// Starts building `rebuild` beside the live bucket (resuming from the new bucket's
    /// checkpoint when a runner had begun it).
    async fn start_building(&mut self, rebuild: Rebuild) {
        let floor = Some(self.current.committed.clone());
        let built = self
            .setup
            .lane(
                &Build::Rebuild(rebuild.clone()),
                self.pointer.subscribe(),
                floor,
            )
            .await;
        match built {
            Ok(lane) => {
                tracing::info!(read_model = P::NAME, live = %self.current.bucket,
                    bucket = %lane.bucket, target = rebuild.target,
                    resumed_from = *lane.committed.borrow(), "rebuilding the read model");
                self.shown
                    .rebuilding
                    .send_replace(Some(lane.bucket.clone()));
                self.building = Some(lane);
            }
            Err(e) => {
                tracing::error!(read_model = P::NAME, bucket = %rebuild.bucket, error = %e,
                    "the rebuild could not be started: given up, the live bucket stays");
                self.give_up(&rebuild.bucket).await;
            }
        }
    }

    /// Serves rebuild requests while the version is live (and no longer once it is not).
    async fn serve_requests(&mut self, live: bool) {
        if live && self.requests.is_none() {
            let client = self.setup.store.client();
            let subject = rebuild_subject(&self.setup.options.pointer_bucket, P::NAME);
            match client
                .queue_subscribe(subject.clone(), QUEUE.to_owned())
                .await
            {
                Ok(requests) => {
                    // The server has the subscription before a request is made after start.
                    if let Err(e) = client.flush().await {
                        tracing::debug!(read_model = P::NAME, error = %e, "flush after subscribing");
                    }
                    self.requests = Some(requests);
                }
                Err(e) => {
                    tracing::warn!(read_model = P::NAME, %subject, error = %e,
                        "rebuild requests cannot be served for now; trying again");
                }
            }
        } else if !live {
            if let Some(mut requests) = self.requests.take() {
                let _ = requests.unsubscribe().await;
            }
        }
    }

    /// Answers a rebuild request.
    async fn answer(&mut self, request: async_nats::Message) {
        let Some(reply) = request.reply.clone() else {
            return;
        };
        let answer = self.rebuild_requested().await;
        let body = match serde_json::to_vec(&answer) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(read_model = P::NAME, error = %e, "a rebuild answer does not encode");
                return;
            }
        };
        if let Err(e) = self.setup.store.client().publish(reply, body.into()).await {
            tracing::warn!(read_model = P::NAME, error = %e, "a rebuild's answer was not sent");
        }
    }

    /// Records a rebuild in the pointer (its bucket made first, its target the stream's last
    /// event now), or says why not.
    async fn rebuild_requested(&mut self) -> RebuildAnswer {
        let (name, version) = (P::NAME, P::VERSION);
        let refuse = |reason: String| RebuildAnswer::refused(name, version, reason);
        let partitions = self.setup.partitions().1;
        let pointers = &self.setup.pointers.clone();
        let (pointer, revision) = match reader::read_pointer(pointers, name).await {
            Ok(Some(found)) => found,
            Ok(None) => return refuse(format!("read model {name} has no live version")),
            Err(e) => return refuse(format!("the pointer of {name} cannot be read: {e}")),
        };
        if pointer.version > version {
            return refuse(format!(
                "version {version} of {name} is replaced: version {} is live",
                pointer.version
            ));
        }
        if pointer.version < version {
            return refuse(format!(
                "version {version} of {name} is not live yet (version {} is): it is being built",
                pointer.version
            ));
        }
        if let Some(rebuild) = &pointer.rebuild {
            return RebuildAnswer::of((name, version), &pointer.bucket, rebuild, partitions, false);
        }
        if pointer.bucket != self.current.bucket {
            return refuse(format!(
                "this runner of {name} is switching to {}: ask again",
                pointer.bucket
            ));
        }
        let target = match self.setup.target().await {
            Ok(target) => target,
            Err(e) => return refuse(format!("the stream's last event cannot be read: {e}")),
        };
        // A bucket left by a rebuild that was given up (its deletion failed) is not reused: it
        // may hold what another version of the code made.
        let context = self.setup.store.context();
        let mut generation = pointer.generation + 1;
        let mut bucket = self
            .setup
            .options
            .generation_bucket(name, version, generation);
        while context.get_key_value(&bucket).await.is_ok() {
            generation += 1;
            bucket = self
                .setup
                .options
                .generation_bucket(name, version, generation);
        }
        let replicas = self.setup.store.config().replicas;
        if let Err(e) = open_model_bucket(context, name, &bucket, replicas).await {
            return refuse(format!("the bucket {bucket} cannot be made: {e}"));
        }
        let rebuild = Rebuild {
            bucket: bucket.clone(),
            generation,
            target,
        };
        let recorded = Pointer {
            rebuild: Some(rebuild.clone()),
            ..pointer.clone()
        };
        if write_pointer(pointers, name, &recorded, Some(revision))
            .await
            .is_err()
        {
            self.delete_bucket(&bucket).await;
            return match reader::read_pointer(pointers, name).await {
                Ok(Some((now, _))) if now.version == version && now.rebuild.is_some() => {
                    let under_way = now.rebuild.as_ref().map(|r| {
                        RebuildAnswer::of((name, version), &now.bucket, r, partitions, false)
                    });
                    under_way.unwrap_or_else(|| refuse("the pointer changed meanwhile".into()))
                }
                _ => refuse(format!(
                    "the pointer of {name} changed meanwhile: ask again"
                )),
            };
        }
        tracing::info!(read_model = name, live = %pointer.bucket, %bucket, generation, target,
            "rebuild asked for");
        RebuildAnswer::of((name, version), &pointer.bucket, &rebuild, partitions, true)
    }
}
