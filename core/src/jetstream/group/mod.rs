//! Consumer groups: the same work (a subscriber, a read model) started in several processes
//! under one name shares its partitions, with per-aggregate order kept across processes,
//! fail-over and rebalancing.
//!
//! # How it works
//!
//! - The work is split into `P` partitions of the aggregates (the partitioned view of the
//!   stream, [`PartitionedView`](crate::jetstream::PartitionedView): FNV-1a-32 of the aggregate
//!   id, modulo `P`). `P` is fixed when the group is first joined (the key `{group}.config`);
//!   a member started with another count is refused ([`GroupErrorKind::PartitionMismatch`]).
//! - **Membership** lives in the KV bucket `CIM_GROUPS` ([`GroupOptions::bucket`]): each member
//!   puts `{group}.member.{member}` every heartbeat with a server-side time to live of one
//!   lease (`Nats-TTL`): a member that dies or is cut off disappears when the server expires
//!   its key; one that stops gracefully deletes it.
//! - **Leases**: partition `p` is worked by the member holding `{group}.lease.{p}`. It is taken
//!   by a write that expects the key to be absent, renewed every heartbeat by a write that
//!   expects the holder's last revision (`Nats-Expected-Last-Subject-Sequence`), each with the
//!   same time to live. A lease's **epoch** is the revision that took it: it only grows. The
//!   server expires the lease of a member that stops renewing; the member itself stops working
//!   a partition when it has not renewed for a lease less one heartbeat (so before anyone can
//!   take it), and at once when a renewal finds another holder.
//! - **Assignment**: every member computes the same owner of each partition from the live
//!   member list (rendezvous hashing, shares differing by at most one). A member takes the
//!   free partitions it owns; one holding a partition it no longer owns (a member joined) stops
//!   its work there gracefully and then deletes the lease, so the owner takes it at once.
//! - Every member watches the group's keys, so a released or expired lease is taken as soon as
//!   the server says so: take-over after a kill is the lease (default 5 s) plus the server's
//!   expiry tick. The watch is not trusted blindly: records and leases are rewritten every
//!   heartbeat, so a member or lease not seen written for a lease and a heartbeat counts as
//!   expired (the owner then tries to take it; the server refuses while it is held), and a
//!   watch silent for a whole lease (this member's own heartbeats no longer show: it missed
//!   its stream's leader change on a cluster) is started again.
//!
//! What a member costs the server: one KV write per heartbeat for itself and one per partition
//! it holds (default: each second), one KV watch, and what its work needs per partition (a
//! subscriber: one consumer per held partition).
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cim_nats::jetstream::group::{GroupMember, GroupOptions};
//!
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let member = GroupMember::join(client, "mailer", GroupOptions::default(), |lease, mut stop| async move {
//!     println!("working partition {} (epoch {})", lease.partition, lease.epoch);
//!     stop.stopped().await;
//!     Ok(())
//! })
//! .await?;
//! println!("{:?}", member.leases());
//! member.shutdown().await?;
//! # Ok(()) }
//! ```

mod assign;
mod read_model;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::subscriber::Lease;

/// The default bucket of group membership and leases.
pub const GROUPS_BUCKET: &str = "CIM_GROUPS";

/// How long a write to the bucket may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a member joins its group.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupOptions {
    /// The partition count, fixed by the first member (default 16, at most 1,024).
    pub partitions: u32,
    /// How long a member keeps a partition without renewing (default 5 s; whole seconds, at
    /// least 2): the bound on take-over after a member dies.
    pub lease: Duration,
    /// How often a member renews (default 1 s; less than half the lease).
    pub heartbeat: Duration,
    /// The KV bucket of membership and leases (default [`GROUPS_BUCKET`]).
    pub bucket: String,
    /// This member's id (letters, digits, `-`, `_`); default `{host}-{pid}-{random}`.
    pub member: Option<String>,
    /// Replicas of the bucket when it is created. `None` (the default): as many as the event
    /// stream's when the group is joined by a subscriber or a read model, else 1. A group on a
    /// cluster keeps its leases through the loss of a node only with 3.
    pub replicas: Option<usize>,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            partitions: 16,
            lease: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            bucket: GROUPS_BUCKET.to_owned(),
            member: None,
            replicas: None,
        }
    }
}

impl GroupOptions {
    /// Sets the partition count.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets the lease and the heartbeat.
    pub fn lease(mut self, lease: Duration, heartbeat: Duration) -> Self {
        self.lease = lease;
        self.heartbeat = heartbeat;
        self
    }

    /// Sets this member's id.
    pub fn member(mut self, member: impl Into<String>) -> Self {
        self.member = Some(member.into());
        self
    }

    /// Sets the bucket's replicas (when it is created).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = Some(replicas.max(1));
        self
    }

    fn validate(&self) -> Result<(), GroupError> {
        let invalid = |why: String| Err(GroupError::new(GroupErrorKind::InvalidConfig(why)));
        if self.partitions == 0 || self.partitions > 1024 {
            return invalid(format!(
                "a group has 1 to 1,024 partitions, not {}",
                self.partitions
            ));
        }
        if self.lease < Duration::from_secs(2) {
            return invalid(format!(
                "a lease is at least 2 s (the server's time to live counts whole seconds), not {:?}",
                self.lease
            ));
        }
        if self.heartbeat.is_zero() || self.heartbeat * 2 > self.lease {
            return invalid(format!(
                "the heartbeat ({:?}) must be less than half the lease ({:?})",
                self.heartbeat, self.lease
            ));
        }
        Ok(())
    }
}

/// What went wrong joining or running a group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupErrorKind {
    /// A name or option that cannot be used.
    InvalidConfig(String),
    /// The group exists with another partition count.
    PartitionMismatch {
        /// The group.
        group: String,
        /// Its partition count.
        group_partitions: u32,
        /// The count this member was started with.
        member_partitions: u32,
    },
    /// The server refused or did not answer.
    Server(String),
    /// Work of a partition did not stop in time at shutdown.
    ShutdownTimedOut {
        /// The partitions still running.
        partitions: Vec<u32>,
    },
}

/// An error of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupError {
    kind: GroupErrorKind,
}

impl GroupError {
    pub(crate) fn new(kind: GroupErrorKind) -> Self {
        Self { kind }
    }

    fn server(context: &str, e: impl fmt::Display) -> Self {
        Self::new(GroupErrorKind::Server(format!("{context}: {e}")))
    }

    /// What went wrong.
    pub fn kind(&self) -> &GroupErrorKind {
        &self.kind
    }
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            GroupErrorKind::InvalidConfig(why) => write!(f, "invalid group configuration: {why}"),
            GroupErrorKind::PartitionMismatch {
                group,
                group_partitions,
                member_partitions,
            } => write!(
                f,
                "group {group} has {group_partitions} partitions; this member was started with \
                 {member_partitions} (a group's partition count is fixed when it is created)"
            ),
            GroupErrorKind::Server(why) => write!(f, "group: {why}"),
            GroupErrorKind::ShutdownTimedOut { partitions } => write!(
                f,
                "the work of partitions {partitions:?} did not stop in time; their leases expire"
            ),
        }
    }
}

impl std::error::Error for GroupError {}

/// Tells a partition's work to stop (the lease moves to another member, or the member shuts
/// down). Work that ignores it is stopped when its lease is lost.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Has the stop been asked for?
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the stop is asked for.
    pub async fn stopped(&mut self) {
        // A dropped sender stops too.
        let _ = self.0.wait_for(|s| *s).await;
    }

    /// The underlying watch (set to `true` on stop).
    pub(crate) fn into_inner(self) -> watch::Receiver<bool> {
        self.0
    }
}

/// The key of the group's configuration.
fn config_key(group: &str) -> String {
    format!("{group}.config")
}

fn member_key(group: &str, member: &str) -> String {
    format!("{group}.member.{member}")
}

fn lease_key(group: &str, partition: u32) -> String {
    format!("{group}.lease.{partition}")
}

/// `{group}.config`: fixed when the group is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupConfig {
    partitions: u32,
}

/// `{group}.member.{member}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemberRecord {
    /// Its id.
    pub member: String,
    /// Its host.
    #[serde(default)]
    pub host: String,
    /// Its process id.
    #[serde(default)]
    pub pid: u32,
    /// When it joined (RFC 3339).
    #[serde(default)]
    pub joined: String,
    /// The partitions it holds.
    #[serde(default)]
    pub partitions: Vec<u32>,
}

/// `{group}.lease.{p}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRecord {
    member: String,
    /// 0 in the write that takes the lease (its revision is the epoch).
    #[serde(default)]
    epoch: u64,
}

/// A group as the bucket shows it ([`GroupStatus::read`], [`GroupMember::status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The group.
    pub group: String,
    /// Its partition count (0 while unknown).
    pub partitions: u32,
    /// Its live members, by id.
    pub members: Vec<MemberRecord>,
    /// Each held partition's holder and epoch.
    pub leases: Vec<PartitionLease>,
}

/// Who holds a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionLease {
    /// The partition.
    pub partition: u32,
    /// Its holder.
    pub member: String,
    /// The lease's epoch.
    pub epoch: u64,
}

/// How far behind one partition of a subscriber group is ([`GroupStatus::subscriber_lag`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionLag {
    /// The partition.
    pub partition: u32,
    /// Its holder.
    pub member: String,
    /// The lease's epoch.
    pub epoch: u64,
    /// Events of the partition not yet delivered.
    pub pending: u64,
    /// Events delivered and not yet acknowledged.
    pub ack_pending: u64,
}

/// The consumer of a subscriber group's partition `partition` in lease epoch `epoch`.
pub(crate) fn partition_consumer(group: &str, partition: u32, epoch: u64) -> String {
    format!("{group}_p{partition}_e{epoch}")
}

impl GroupStatus {
    /// Reads group `group` from `bucket` (e.g. [`GROUPS_BUCKET`]), from any process.
    ///
    /// # Errors
    ///
    /// [`GroupErrorKind::Server`] when the bucket cannot be read.
    pub async fn read(client: &Client, bucket: &str, group: &str) -> Result<Self, GroupError> {
        let js = jetstream::new(client.clone());
        let kv = js
            .get_key_value(bucket)
            .await
            .map_err(|e| GroupError::server(&format!("bucket {bucket}"), e))?;
        let mut watch = kv
            .watch_with_history(format!("{group}.>"))
            .await
            .map_err(|e| GroupError::server(&format!("bucket {bucket}"), e))?;
        let mut view = View::default();
        // The initial values end with the entry whose delta is 0; an empty group yields none.
        let status = kv
            .status()
            .await
            .map_err(|e| GroupError::server(&format!("bucket {bucket}"), e))?;
        if status.values() > 0 {
            loop {
                match tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
                    Ok(Some(Ok(entry))) => {
                        let last = entry.delta == 0;
                        view.apply(group, &entry);
                        if last {
                            break;
                        }
                    }
                    Ok(Some(Err(e))) => return Err(GroupError::server("watching the group", e)),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        Ok(view.status(group))
    }

    /// How far behind a subscriber group is, per held partition: the events of each partition's
    /// consumer (`{group}_p{p}_e{epoch}` on `{stream}_PARTITIONED`) not yet delivered and those
    /// delivered but not yet acknowledged. `stream` is the event stream (e.g.
    /// `INFRASTRUCTURE_EVENTS`). A partition whose consumer cannot be read (its holder is
    /// creating it) is left out.
    ///
    /// # Errors
    ///
    /// [`GroupErrorKind::Server`] when the partitioned view cannot be read.
    pub async fn subscriber_lag(
        &self,
        client: &Client,
        stream: &str,
    ) -> Result<Vec<PartitionLag>, GroupError> {
        let js = jetstream::new(client.clone());
        let view = format!("{stream}_PARTITIONED");
        let view_stream = js
            .get_stream_no_info(&view)
            .await
            .map_err(|e| GroupError::server(&format!("stream {view}"), e))?;
        let mut lag = Vec::with_capacity(self.leases.len());
        for lease in &self.leases {
            let name = partition_consumer(&self.group, lease.partition, lease.epoch);
            if let Ok(info) = view_stream.consumer_info(&name).await {
                lag.push(PartitionLag {
                    partition: lease.partition,
                    member: lease.member.clone(),
                    epoch: lease.epoch,
                    pending: info.num_pending,
                    ack_pending: u64::try_from(info.num_ack_pending).unwrap_or(0),
                });
            }
        }
        Ok(lag)
    }

    /// The partitions `member` holds.
    pub fn held_by(&self, member: &str) -> Vec<u32> {
        self.leases
            .iter()
            .filter(|l| l.member == member)
            .map(|l| l.partition)
            .collect()
    }
}

/// The group's keys as watched.
#[derive(Debug, Default, Clone)]
struct View {
    partitions: u32,
    members: BTreeMap<String, MemberRecord>,
    /// Held leases: record and revision.
    leases: BTreeMap<u32, (LeaseRecord, u64)>,
    /// Revision of the last delete or expiry of a lease key.
    gone: BTreeMap<u32, u64>,
    /// When each member's record was last seen written.
    member_seen: BTreeMap<String, Instant>,
    /// When each held lease was last seen written.
    lease_seen: BTreeMap<u32, Instant>,
}

impl View {
    fn apply(&mut self, group: &str, entry: &kv::Entry) {
        let Some(rest) = entry
            .key
            .strip_prefix(group)
            .and_then(|r| r.strip_prefix('.'))
        else {
            return;
        };
        let present = entry.operation == kv::Operation::Put;
        if rest == "config" {
            if let Ok(c) = serde_json::from_slice::<GroupConfig>(&entry.value) {
                self.partitions = c.partitions;
            }
        } else if let Some(member) = rest.strip_prefix("member.") {
            match serde_json::from_slice::<MemberRecord>(&entry.value) {
                Ok(record) if present => {
                    self.members.insert(member.to_owned(), record);
                    self.member_seen.insert(member.to_owned(), Instant::now());
                }
                _ => {
                    self.members.remove(member);
                    self.member_seen.remove(member);
                }
            }
        } else if let Some(p) = rest
            .strip_prefix("lease.")
            .and_then(|p| p.parse::<u32>().ok())
        {
            match serde_json::from_slice::<LeaseRecord>(&entry.value) {
                Ok(mut record) if present => {
                    if record.epoch == 0 {
                        record.epoch = entry.revision;
                    }
                    self.leases.insert(p, (record, entry.revision));
                    self.lease_seen.insert(p, Instant::now());
                    self.gone.remove(&p);
                }
                _ => {
                    self.leases.remove(&p);
                    self.lease_seen.remove(&p);
                    self.gone.insert(p, entry.revision);
                }
            }
        }
    }

    fn status(&self, group: &str) -> GroupStatus {
        GroupStatus {
            group: group.to_owned(),
            partitions: self.partitions,
            members: self.members.values().cloned().collect(),
            leases: self
                .leases
                .iter()
                .map(|(p, (r, _))| PartitionLease {
                    partition: *p,
                    member: r.member.clone(),
                    epoch: r.epoch,
                })
                .collect(),
        }
    }
}

/// The work of one partition, started when a lease is taken.
pub(crate) type PartitionWork =
    Arc<dyn Fn(Lease, StopSignal) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A running member of a group: its leases, the group as it sees it, stopping it.
///
/// Dropping it stops its work abruptly (the leases expire); [`GroupMember::shutdown`] hands
/// its partitions over at once.
pub struct GroupMember {
    member: Arc<str>,
    group: Arc<str>,
    state: watch::Receiver<MemberState>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), GroupError>>>,
}

/// What a member's loop publishes.
#[derive(Debug, Clone, Default)]
struct MemberState {
    leases: Vec<Lease>,
    status: GroupStatus,
}

impl fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMember")
            .field("group", &self.group)
            .field("member", &self.member)
            .field("leases", &self.leases())
            .finish_non_exhaustive()
    }
}

impl GroupMember {
    /// Joins group `group` and runs `work` for each partition this member holds, until its
    /// [`StopSignal`] says stop (the partition moves or the member shuts down).
    ///
    /// An error from `work` is logged and the partition's work started again (after 1 s,
    /// doubling up to 30 s) while the lease is held.
    ///
    /// # Errors
    ///
    /// [`GroupErrorKind::InvalidConfig`] for a bad name or option;
    /// [`GroupErrorKind::PartitionMismatch`] when the group has another partition count;
    /// [`GroupErrorKind::Server`] when the bucket cannot be set up (the server must run
    /// nats-server 2.11 or later for per-message time to live).
    pub async fn join<F, Fut>(
        client: Client,
        group: &str,
        options: GroupOptions,
        work: F,
    ) -> Result<Self, GroupError>
    where
        F: Fn(Lease, StopSignal) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let work: PartitionWork = Arc::new(move |lease, stop| Box::pin(work(lease, stop)));
        Self::start(client, group, options, work).await
    }

    pub(crate) async fn start(
        client: Client,
        group: &str,
        options: GroupOptions,
        work: PartitionWork,
    ) -> Result<Self, GroupError> {
        options.validate()?;
        validate_name("group", group)?;
        let member = match &options.member {
            Some(m) => m.clone(),
            None => default_member(),
        };
        validate_name("member", &member)?;
        let js = jetstream::new(client.clone());
        let kv = open_bucket(&js, &options).await?;
        let partitions = fix_partitions(&kv, group, options.partitions).await?;
        let watch = kv
            .watch_with_history(format!("{group}.>"))
            .await
            .map_err(|e| GroupError::server("watching the group", e))?;
        let group: Arc<str> = Arc::from(group);
        let member: Arc<str> = Arc::from(member.as_str());
        let (state_tx, state) = watch::channel(MemberState::default());
        let (stop, stop_rx) = watch::channel(false);
        let record = MemberRecord {
            member: member.to_string(),
            host: host(),
            pid: std::process::id(),
            joined: chrono::Utc::now().to_rfc3339(),
            partitions: Vec::new(),
        };
        let run = Run {
            js,
            kv,
            bucket: options.bucket.clone(),
            group: Arc::clone(&group),
            me: Arc::clone(&member),
            record,
            partitions,
            lease: options.lease,
            heartbeat: options.heartbeat,
            work,
            view: View::default(),
            synced: false,
            last_entry: Instant::now(),
            stale_tried: None,
            held: BTreeMap::new(),
            state: state_tx,
        };
        tracing::info!(group = %group, member = %member, partitions, "joining the group");
        let task = tokio::spawn(run.run(watch, stop_rx));
        Ok(Self {
            member,
            group,
            state,
            stop,
            task: Some(task),
        })
    }

    /// A view of this member's leases and of the group that can be kept elsewhere.
    pub fn observer(&self) -> GroupObserver {
        GroupObserver {
            member: Arc::clone(&self.member),
            group: Arc::clone(&self.group),
            state: self.state.clone(),
        }
    }

    /// This member's id.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The partitions this member works now.
    pub fn leases(&self) -> Vec<Lease> {
        self.observer().leases()
    }

    /// The group as this member sees it (members, leases).
    pub fn status(&self) -> GroupStatus {
        self.observer().status()
    }

    /// Waits until `condition` holds for this member's leases and the group, or `timeout`
    /// passes; returns whether it holds.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl FnMut(&[Lease], &GroupStatus) -> bool,
    ) -> bool {
        self.observer().wait_until(timeout, condition).await
    }

    /// Has the member stopped (shut down, or failed: see [`GroupMember::shutdown`])?
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Leaves the group gracefully: stops the work of each partition (waiting for it), then
    /// gives its leases and membership up, so the other members take the partitions at once.
    ///
    /// # Errors
    ///
    /// [`GroupErrorKind::ShutdownTimedOut`] when a partition's work did not stop within two
    /// leases (it was stopped; that lease expires on the server).
    pub async fn shutdown(mut self) -> Result<(), GroupError> {
        self.stop.send_replace(true);
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| GroupError::server("the member's task", e))?,
            None => Ok(()),
        }
    }
}

/// What a member holds and sees, readable while it runs ([`GroupMember::observer`]).
#[derive(Clone)]
pub struct GroupObserver {
    member: Arc<str>,
    group: Arc<str>,
    state: watch::Receiver<MemberState>,
}

impl fmt::Debug for GroupObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupObserver")
            .field("group", &self.group)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl GroupObserver {
    /// The member's id.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The partitions the member works now.
    pub fn leases(&self) -> Vec<Lease> {
        self.state.borrow().leases.clone()
    }

    /// The group as the member sees it.
    pub fn status(&self) -> GroupStatus {
        self.state.borrow().status.clone()
    }

    /// Waits until `condition` holds for the member's leases and the group, or `timeout`
    /// passes; returns whether it holds.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[Lease], &GroupStatus) -> bool,
    ) -> bool {
        let mut state = self.state.clone();
        tokio::time::timeout(timeout, state.wait_for(|s| condition(&s.leases, &s.status)))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Partition ids of a member name, group name: letters, digits, `-`, `_`.
fn validate_name(what: &str, name: &str) -> Result<(), GroupError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err(GroupError::new(GroupErrorKind::InvalidConfig(format!(
            "a {what} name is 1 to 128 letters, digits, '-' or '_', not {name:?}"
        ))));
    }
    Ok(())
}

fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

fn default_member() -> String {
    let host: String = host()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

/// Opens the membership bucket, creating it with markers for expired keys (which need
/// per-message time to live).
async fn open_bucket(
    js: &jetstream::Context,
    options: &GroupOptions,
) -> Result<kv::Store, GroupError> {
    let bucket = &options.bucket;
    if let Ok(store) = js.get_key_value(bucket).await {
        let mut stream = js
            .get_stream(format!("KV_{bucket}"))
            .await
            .map_err(|e| GroupError::server(&format!("bucket {bucket}"), e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| GroupError::server(&format!("bucket {bucket}"), e))?;
        if !info.config.allow_message_ttl {
            return Err(GroupError::new(GroupErrorKind::InvalidConfig(format!(
                "bucket {bucket} exists without per-message time to live; a group bucket is \
                 created with limit markers (delete it, or name another with GroupOptions::bucket)"
            ))));
        }
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.clone(),
            description: "consumer group members and partition leases (cim-nats)".to_owned(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: options.replicas.unwrap_or(1),
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        Err(e) => js.get_key_value(bucket).await.map_err(|_| {
            GroupError::server(
                &format!(
                    "creating bucket {bucket} (per-message time to live needs nats-server 2.11+)"
                ),
                e,
            )
        }),
    }
}

/// Fixes group `group`'s partition count (first member) or checks it (the others).
pub(crate) async fn check_partitions(
    client: &Client,
    group: &str,
    options: &GroupOptions,
) -> Result<u32, GroupError> {
    options.validate()?;
    validate_name("group", group)?;
    let js = jetstream::new(client.clone());
    let kv = open_bucket(&js, options).await?;
    fix_partitions(&kv, group, options.partitions).await
}

/// The group's partition count: fixed by the first member, checked for the others.
async fn fix_partitions(kv: &kv::Store, group: &str, partitions: u32) -> Result<u32, GroupError> {
    let key = config_key(group);
    let value = serde_json::to_vec(&GroupConfig { partitions })
        .map_err(|e| GroupError::server("encoding", e))?;
    for _ in 0..3 {
        match kv.entry(&key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                let have: GroupConfig = serde_json::from_slice(&entry.value).map_err(|e| {
                    GroupError::server(&format!("{key} is not a group configuration"), e)
                })?;
                if have.partitions != partitions {
                    return Err(GroupError::new(GroupErrorKind::PartitionMismatch {
                        group: group.to_owned(),
                        group_partitions: have.partitions,
                        member_partitions: partitions,
                    }));
                }
                return Ok(partitions);
            }
            Ok(_) => {
                if kv.create(&key, value.clone().into()).await.is_ok() {
                    return Ok(partitions);
                }
            }
            Err(e) => return Err(GroupError::server(&format!("reading {key}"), e)),
        }
    }
    Err(GroupError::server(&key, "could not be read or created"))
}

/// Why a conditional write failed.
enum WriteError {
    /// The key's last revision was not the expected one.
    Conflict,
    Other(String),
}

/// Writes `value` under `key` with a time to live, expecting the key's last revision to be
/// `expected` (0: no message for the key).
async fn write(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
    value: Bytes,
    expected: Option<u64>,
    ttl: Duration,
) -> Result<u64, WriteError> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-TTL", format!("{}s", ttl.as_secs().max(1)).as_str());
    if let Some(expected) = expected {
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
    }
    let subject = format!("$KV.{bucket}.{key}");
    let sent = async {
        js.publish_with_headers(subject, headers, value)
            .await
            .map_err(|e| WriteError::Other(e.to_string()))?
            .await
            .map_err(|e| {
                if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                    WriteError::Conflict
                } else {
                    WriteError::Other(e.to_string())
                }
            })
    };
    match tokio::time::timeout(WRITE_TIMEOUT, sent).await {
        Ok(Ok(ack)) => Ok(ack.sequence),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(WriteError::Other("timed out".to_owned())),
    }
}

/// A partition this member holds.
struct Holding {
    epoch: u64,
    /// The lease key's last revision (written by this member).
    revision: u64,
    /// When the last successful renewal was sent.
    renewed: Instant,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), String>>>,
    /// Handing it over: its work was asked to stop.
    releasing: bool,
    /// Work that ended on its own is started again at this time.
    restart_at: Option<Instant>,
    failures: u32,
}

struct Run {
    js: jetstream::Context,
    kv: kv::Store,
    bucket: String,
    group: Arc<str>,
    me: Arc<str>,
    record: MemberRecord,
    partitions: u32,
    lease: Duration,
    heartbeat: Duration,
    work: PartitionWork,
    view: View,
    /// The watch has delivered the keys as they were when it started.
    synced: bool,
    /// When the watch last delivered an entry (this member's own heartbeat is one each
    /// heartbeat): a watch silent for longer is started again.
    last_entry: Instant,
    /// When leases seen held but not renewed for longer than a lease were last tried.
    stale_tried: Option<Instant>,
    held: BTreeMap<u32, Holding>,
    state: watch::Sender<MemberState>,
}

impl Run {
    async fn run(
        mut self,
        mut watch: kv::Watch,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), GroupError> {
        // An empty group yields no initial entries.
        if self
            .kv
            .status()
            .await
            .map(|s| s.values() == 0)
            .unwrap_or(false)
        {
            self.synced = true;
        }
        self.beat().await;
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(Duration::from_millis(100));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break Ok(()),
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        self.last_entry = Instant::now();
                        if entry.delta == 0 {
                            self.synced = true;
                        }
                        self.view.apply(&self.group, &entry);
                        self.balance().await;
                    }
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::warn!(group = %self.group, error = %e, "watching the group failed; watching again");
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        match self.kv.watch_with_history(format!("{}.>", self.group)).await {
                            Ok(w) => {
                                watch = w;
                                self.view = View::default();
                                self.synced = false;
                            }
                            Err(e) => tracing::warn!(group = %self.group, error = %e, "watching the group again failed"),
                        }
                    }
                },
                _ = tick.tick() => {
                    self.beat().await;
                    self.renew().await;
                    // A watch that missed the server's loss of its stream's leader can stay
                    // silent without an error: this member's own heartbeats no longer show.
                    if self.last_entry.elapsed() > self.lease {
                        tracing::warn!(group = %self.group, silent = ?self.last_entry.elapsed(),
                            "the group's watch delivers nothing; watching again");
                        match self.kv.watch_with_history(format!("{}.>", self.group)).await {
                            Ok(w) => {
                                watch = w;
                                self.view = View::default();
                                self.synced = false;
                            }
                            Err(e) => tracing::warn!(group = %self.group, error = %e, "watching the group again failed"),
                        }
                        self.last_entry = Instant::now();
                    }
                    self.balance().await;
                }
                _ = check.tick() => self.balance().await,
            }
        };
        let left = self.leave().await;
        result.and(left)
    }

    /// Puts this member's record (with the partitions it holds).
    async fn beat(&mut self) {
        self.record.partitions = self.held.keys().copied().collect();
        let Ok(value) = serde_json::to_vec(&self.record) else {
            return;
        };
        let key = member_key(&self.group, &self.me);
        if let Err(WriteError::Other(e)) =
            write(&self.js, &self.bucket, &key, value.into(), None, self.lease).await
        {
            tracing::warn!(group = %self.group, member = %self.me, error = %e, "heartbeat not stored");
        }
    }

    /// Renews every held lease; a lease found taken is dropped at once, one not renewed for a
    /// lease less a heartbeat is dropped before anyone can take it.
    async fn renew(&mut self) {
        let mut lost = Vec::new();
        for (&partition, holding) in &mut self.held {
            let value = serde_json::to_vec(&LeaseRecord {
                member: self.me.to_string(),
                epoch: holding.epoch,
            })
            .unwrap_or_default();
            let sent = Instant::now();
            match write(
                &self.js,
                &self.bucket,
                &lease_key(&self.group, partition),
                value.into(),
                Some(holding.revision),
                self.lease,
            )
            .await
            {
                Ok(revision) => {
                    holding.revision = revision;
                    holding.renewed = sent;
                }
                Err(WriteError::Conflict) => {
                    tracing::warn!(group = %self.group, partition, epoch = holding.epoch,
                        "lease taken by another member; stopping the partition's work");
                    lost.push(partition);
                }
                Err(WriteError::Other(e)) => {
                    if sent.duration_since(holding.renewed) + self.heartbeat >= self.lease {
                        tracing::warn!(group = %self.group, partition, error = %e,
                            "lease not renewed in time; stopping the partition's work before it expires");
                        lost.push(partition);
                    } else {
                        tracing::debug!(group = %self.group, partition, error = %e, "lease not renewed");
                    }
                }
            }
        }
        for partition in lost {
            if let Some(mut holding) = self.held.remove(&partition) {
                if let Some(task) = holding.task.take() {
                    task.abort();
                }
            }
        }
        self.publish();
    }

    /// Takes the free partitions this member owns, hands over those it no longer owns, and
    /// restarts work that ended.
    async fn balance(&mut self) {
        if !self.synced {
            return;
        }
        // Records and leases are written each heartbeat: one not seen written for longer than
        // a lease and a heartbeat has expired on the server, whether the watch said so or not.
        let stale = self.lease + self.heartbeat;
        let mut live: BTreeSet<String> = self
            .view
            .members
            .keys()
            .filter(|m| {
                self.view
                    .member_seen
                    .get(*m)
                    .is_some_and(|t| t.elapsed() <= stale)
            })
            .cloned()
            .collect();
        live.insert(self.me.to_string());
        let try_stale = self
            .stale_tried
            .is_none_or(|t| t.elapsed() >= self.heartbeat);
        let mut tried_stale = false;
        let live: Vec<String> = live.into_iter().collect();
        let owners = assign::assign(&live, self.partitions);
        let now = Instant::now();
        for partition in 0..self.partitions {
            let owner = live[owners[partition as usize]].as_str();
            let mine = owner == &*self.me;
            let Some(holding) = self.held.get_mut(&partition) else {
                let seen = self.view.lease_seen.get(&partition);
                if mine && seen.is_none() {
                    self.acquire(partition).await;
                } else if mine && try_stale && seen.is_some_and(|t| t.elapsed() > stale) {
                    // Taken only if the server has no lease any more (`acquire` checks).
                    tried_stale = true;
                    self.acquire(partition).await;
                }
                continue;
            };
            let finished = holding.task.as_ref().is_none_or(JoinHandle::is_finished);
            if !mine && !holding.releasing {
                tracing::info!(group = %self.group, partition, to = owner, "handing the partition over");
                holding.releasing = true;
                holding.stop.send_replace(true);
            } else if holding.releasing {
                if finished {
                    self.release(partition).await;
                }
            } else if finished {
                self.restart(partition, now).await;
            }
        }
        if tried_stale {
            self.stale_tried = Some(Instant::now());
        }
        self.publish();
    }

    /// Work that ended while its lease is held: the end is logged, and the work started again
    /// after a backoff.
    async fn restart(&mut self, partition: u32, now: Instant) {
        let Some(holding) = self.held.get_mut(&partition) else {
            return;
        };
        match holding.restart_at {
            None => {
                let ended = match holding.task.take() {
                    Some(task) => task.await.map_err(|e| e.to_string()).and_then(|r| r),
                    None => Ok(()),
                };
                holding.failures += 1;
                let wait = Duration::from_secs(1 << holding.failures.clamp(1, 5).saturating_sub(1))
                    .min(Duration::from_secs(30));
                match ended {
                    Ok(()) => tracing::warn!(group = %self.group, partition, retry_in = ?wait,
                        "the partition's work ended; starting it again"),
                    Err(e) => {
                        tracing::error!(group = %self.group, partition, error = %e, retry_in = ?wait,
                        "the partition's work failed; starting it again")
                    }
                }
                holding.restart_at = Some(now + wait);
            }
            Some(at) if now >= at => {
                holding.restart_at = None;
                let lease = Lease {
                    group: Arc::clone(&self.group),
                    partition,
                    partitions: self.partitions,
                    epoch: holding.epoch,
                    member: Arc::clone(&self.me),
                };
                let (stop, stop_rx) = watch::channel(false);
                holding.stop = stop;
                holding.task = Some(tokio::spawn((self.work)(lease, StopSignal(stop_rx))));
            }
            Some(_) => {}
        }
    }

    /// Takes a free lease and starts its work.
    async fn acquire(&mut self, partition: u32) {
        let key = lease_key(&self.group, partition);
        let value: Bytes = serde_json::to_vec(&LeaseRecord {
            member: self.me.to_string(),
            epoch: 0,
        })
        .unwrap_or_default()
        .into();
        let mut expected = self.view.gone.get(&partition).copied().unwrap_or(0);
        for _ in 0..2 {
            let sent = Instant::now();
            match write(
                &self.js,
                &self.bucket,
                &key,
                value.clone(),
                Some(expected),
                self.lease,
            )
            .await
            {
                Ok(epoch) => {
                    let lease = Lease {
                        group: Arc::clone(&self.group),
                        partition,
                        partitions: self.partitions,
                        epoch,
                        member: Arc::clone(&self.me),
                    };
                    tracing::info!(group = %self.group, partition, epoch, member = %self.me, "partition taken");
                    let (stop, stop_rx) = watch::channel(false);
                    let task = tokio::spawn((self.work)(lease, StopSignal(stop_rx)));
                    self.held.insert(
                        partition,
                        Holding {
                            epoch,
                            revision: epoch,
                            renewed: sent,
                            stop,
                            task: Some(task),
                            releasing: false,
                            restart_at: None,
                            failures: 0,
                        },
                    );
                    return;
                }
                Err(WriteError::Conflict) => {
                    // Deleted or expired since (a marker, or nothing left): try its revision.
                    match self.kv.entry(&key).await {
                        Ok(Some(entry)) if entry.operation == kv::Operation::Put => return,
                        Ok(Some(entry)) => expected = entry.revision,
                        Ok(None) => expected = 0,
                        Err(_) => return,
                    }
                }
                Err(WriteError::Other(e)) => {
                    tracing::debug!(group = %self.group, partition, error = %e, "taking the partition failed");
                    return;
                }
            }
        }
    }

    /// Gives a lease up after its work stopped.
    async fn release(&mut self, partition: u32) {
        let Some(holding) = self.held.remove(&partition) else {
            return;
        };
        if let Err(e) = self
            .kv
            .delete_expect_revision(lease_key(&self.group, partition), Some(holding.revision))
            .await
        {
            tracing::debug!(group = %self.group, partition, error = %e, "lease not deleted; it expires");
        } else {
            tracing::info!(group = %self.group, partition, epoch = holding.epoch, "partition handed over");
        }
    }

    /// Stops every partition's work, gives the leases up and leaves.
    async fn leave(&mut self) -> Result<(), GroupError> {
        for holding in self.held.values_mut() {
            holding.stop.send_replace(true);
            holding.releasing = true;
        }
        let deadline = Instant::now() + self.lease * 2;
        let mut unfinished = Vec::new();
        let partitions: Vec<u32> = self.held.keys().copied().collect();
        for partition in partitions {
            let task = self.held.get_mut(&partition).and_then(|h| h.task.take());
            if let Some(mut task) = task {
                // Keep the lease while the work finishes.
                loop {
                    tokio::select! {
                        r = &mut task => {
                            if let Ok(Err(e)) = r {
                                tracing::warn!(group = %self.group, partition, error = %e, "the partition's work ended with an error");
                            }
                            break;
                        }
                        () = tokio::time::sleep(self.heartbeat) => {
                            if Instant::now() >= deadline {
                                task.abort();
                                unfinished.push(partition);
                                break;
                            }
                            self.renew().await;
                        }
                    }
                }
            }
            if !unfinished.contains(&partition) {
                self.release(partition).await;
            } else {
                self.held.remove(&partition);
            }
        }
        let _ = self.kv.delete(member_key(&self.group, &self.me)).await;
        tracing::info!(group = %self.group, member = %self.me, "left the group");
        self.publish();
        if unfinished.is_empty() {
            Ok(())
        } else {
            Err(GroupError::new(GroupErrorKind::ShutdownTimedOut {
                partitions: unfinished,
            }))
        }
    }

    fn publish(&self) {
        let leases = self
            .held
            .iter()
            .filter(|(_, h)| !h.releasing)
            .map(|(&partition, h)| Lease {
                group: Arc::clone(&self.group),
                partition,
                partitions: self.partitions,
                epoch: h.epoch,
                member: Arc::clone(&self.me),
            })
            .collect();
        let status = self.view.status(&self.group);
        self.state.send_modify(|s| {
            s.leases = leases;
            s.status = status;
        });
    }
}
