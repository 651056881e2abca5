//! Rebuilds of a read model, asked of its running runner: the subject they are asked on, the
//! answer, and [`request_rebuild`] to ask.
//!
//! A runner whose version is live serves requests on [`rebuild_subject`] in the queue group
//! `cim-rebuild` (one runner of the model answers; every runner of a partitioned model
//! subscribes). The request's body is ignored. The runner that takes it records the rebuild in
//! the pointer ([`super::Pointer::rebuild`]) and answers at once with a [`RebuildAnswer`]; the
//! model is then built afresh from the start of the stream into the new generation's bucket by
//! every runner of the model (each its own partition), beside the live bucket, and the pointer
//! moves to it once it has caught up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Rebuild;
use crate::projection::ProjectionError;
use crate::store::{StoreError, StoreErrorKind};

/// The subject the runners of read model `name` (whose pointer is in `pointer_bucket`) serve
/// rebuild requests on: `_CIM.rebuild.{pointer_bucket}.{name}`.
pub fn rebuild_subject(pointer_bucket: &str, name: &str) -> String {
    format!("_CIM.rebuild.{pointer_bucket}.{name}")
}

/// The answer to a rebuild request (JSON).
///
/// - Accepted: `{"accepted": true, "name", "version", "live", "bucket", "generation",
///   "target", "partitions"}`: the rebuild is recorded in the pointer and under way.
/// - A rebuild already under way: `{"accepted": false, "under_way": true, ...}` with the same
///   fields, those of the rebuild under way (follow that one), and `"reason"`.
/// - Refused: `{"accepted": false, "name", "version", "reason"}` (the version is not live, the
///   pointer could not be read or changed meanwhile, the new bucket could not be made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildAnswer {
    /// Did this request start a rebuild?
    pub accepted: bool,
    /// Not started by this request: a rebuild of the model was already under way (the fields
    /// below are its own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub under_way: bool,
    /// The read model's name.
    pub name: String,
    /// The version of the runner that answered.
    pub version: u32,
    /// The live bucket readers keep until the rebuild has caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// The bucket the rebuild builds into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The rebuild's generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    /// The event stream sequence the rebuild must reach before readers switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// How many partitions the model is worked as (one checkpoint key each in the new bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Why the request did not start a rebuild.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RebuildAnswer {
    /// A refusal of the runner of `version` of model `name`.
    pub(super) fn refused(name: &str, version: u32, reason: String) -> Self {
        Self {
            accepted: false,
            under_way: false,
            name: name.to_owned(),
            version,
            live: None,
            bucket: None,
            generation: None,
            target: None,
            partitions: None,
            reason: Some(reason),
        }
    }

    /// The rebuild `rebuild` of `version` of model `name`, replacing the live bucket `live`:
    /// started by this request when `accepted`, else already under way.
    pub(super) fn of(
        (name, version): (&str, u32),
        live: &str,
        rebuild: &Rebuild,
        partitions: u32,
        accepted: bool,
    ) -> Self {
        Self {
            accepted,
            under_way: !accepted,
            name: name.to_owned(),
            version,
            live: Some(live.to_owned()),
            bucket: Some(rebuild.bucket.clone()),
            generation: Some(rebuild.generation),
            target: Some(rebuild.target),
            partitions: Some(partitions),
            reason: (!accepted).then(|| {
                format!(
                    "a rebuild of {name} is already under way (generation {} into {}, target \
                     sequence {})",
                    rebuild.generation, rebuild.bucket, rebuild.target
                )
            }),
        }
    }

    /// The rebuild to follow, accepted or already under way: its bucket, generation and
    /// target.
    pub fn rebuild(&self) -> Option<Rebuild> {
        Some(Rebuild {
            bucket: self.bucket.clone()?,
            generation: self.generation?,
            target: self.target?,
        })
    }
}

/// Asks the running runner of read model `name` (pointer in `pointer_bucket`) to rebuild it,
/// and returns its answer: a rebuild started, one already under way, or a refusal with its
/// reason. Follow the rebuild through the pointer ([`super::Pointer::rebuild`], then the
/// pointer naming the new bucket) and the new bucket's checkpoints.
///
/// # Errors
///
/// [`ProjectionError::NotRunning`] when no runner of the model is running (nothing answers on
/// [`rebuild_subject`]); [`ProjectionError::Store`] when the request cannot be sent, nothing
/// answers within `timeout`, or the answer does not decode.
pub async fn request_rebuild(
    client: &async_nats::Client,
    pointer_bucket: &str,
    name: &str,
    timeout: Duration,
) -> Result<RebuildAnswer, ProjectionError> {
    let subject = rebuild_subject(pointer_bucket, name);
    let failed = |e: String| ProjectionError::Store {
        projection: name.to_owned(),
        source: StoreError::with_source(StoreErrorKind::Connection, e),
    };
    let request = client.request(subject.clone(), bytes::Bytes::new());
    let reply = match tokio::time::timeout(timeout, request).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(ProjectionError::NotRunning {
                projection: name.to_owned(),
                subject,
            })
        }
        Ok(Err(e)) => return Err(failed(format!("the rebuild request on {subject}: {e}"))),
        Err(_) => {
            return Err(failed(format!(
                "no answer to the rebuild request on {subject} within {timeout:?}"
            )))
        }
    };
    serde_json::from_slice(&reply.payload)
        .map_err(|e| failed(format!("the answer on {subject} does not decode: {e}")))
}
