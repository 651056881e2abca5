//! `cim-nats projection rebuild NAME`: asks the running service to rebuild a read model
//! (`cim_nats::jetstream::request_rebuild`, served on `_CIM.rebuild.READ_MODELS.{NAME}`), then
//! follows it: the new bucket's checkpoints against the rebuild's target, until the pointer in
//! `READ_MODELS` names the new bucket (readers switched).
//!
//! On a terminal the progress is a bar on standard error; elsewhere (scripts, CI) a plain line
//! about once a second; `--json` prints JSON lines on standard output instead.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use cim_nats::jetstream::{
    checkpoint_key, request_rebuild, Checkpoint, CheckpointFront, Pointer, Rebuild,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::output::confirm;
use crate::Error;

/// The bucket of the read models' pointers.
const POINTERS: &str = "READ_MODELS";
/// How often the new bucket's checkpoints and the pointer are read.
const POLL: Duration = Duration::from_millis(200);
/// How often a plain progress line (or a JSON one) is printed.
const EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    client: &async_nats::Client,
    name: &str,
    yes: bool,
    as_json: bool,
    timeout: u64,
) -> Result<(), Error> {
    confirm(&format!("rebuild read model {name}"), yes)?;
    let timeout = Duration::from_secs(timeout.max(1));
    let started = Instant::now();
    let answer = request_rebuild(client, POINTERS, name, timeout).await?;
    let Some(rebuild) = answer.rebuild() else {
        return Err(format!(
            "{name}: the rebuild was refused: {}",
            answer.reason.as_deref().unwrap_or("no reason given")
        )
        .into());
    };
    if as_json {
        let mut line = serde_json::to_value(&answer)?;
        line["type"] = "answer".into();
        println!("{line}");
    } else if answer.under_way {
        eprintln!(
            "a rebuild of {name} is already under way (generation {} into {}): following it",
            rebuild.generation, rebuild.bucket
        );
    }
    let partitions = answer.partitions.unwrap_or(1);
    let js = jetstream::new(client.clone());
    let pointers = js.get_key_value(POINTERS).await?;
    let mut follow = Follow {
        name,
        rebuild: &rebuild,
        version: answer.version,
        partitions,
        bucket: None,
        shown: Shown::new(name, &rebuild, as_json),
    };
    let result = follow
        .until_switched(&js, &pointers, started, timeout)
        .await;
    follow.shown.clear();
    let done = result?;
    let seconds = done.elapsed.as_secs_f64();
    let rate = done.rate();
    if as_json {
        println!(
            "{}",
            json!({
                "type": "done",
                "name": name,
                "bucket": rebuild.bucket,
                "generation": rebuild.generation,
                "events": done.position,
                "seconds": (seconds * 10.0).round() / 10.0,
                "events_per_second": rate.round(),
                "switched": true,
            })
        );
    } else {
        println!(
            "{name} rebuilt into {}: {} events in {seconds:.1} s ({:.0} events/s); readers \
             switched",
            rebuild.bucket, done.position, rate
        );
    }
    Ok(())
}

/// How a followed rebuild ended: where its checkpoints were when the pointer moved, and from
/// where and for how long it was followed.
struct Done {
    position: u64,
    from: u64,
    elapsed: Duration,
}

impl Done {
    fn rate(&self) -> f64 {
        rate(self.position.saturating_sub(self.from), self.elapsed)
    }
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        events as f64 / seconds
    } else {
        0.0
    }
}

/// Following one rebuild.
struct Follow<'a> {
    name: &'a str,
    rebuild: &'a Rebuild,
    /// The version rebuilt.
    version: u32,
    partitions: u32,
    /// The new bucket, once it could be opened.
    bucket: Option<kv::Store>,
    shown: Shown,
}

impl Follow<'_> {
    /// The sequence the new bucket reflects: the smallest of its partitions' checkpoints (0
    /// while one has none).
    async fn position(&mut self, js: &jetstream::Context) -> Result<u64, Error> {
        if self.bucket.is_none() {
            self.bucket = js.get_key_value(&self.rebuild.bucket).await.ok();
        }
        let Some(bucket) = &self.bucket else {
            return Ok(0);
        };
        let mut front = CheckpointFront::default();
        let mut reached = None;
        for partition in 0..self.partitions {
            match bucket.get(checkpoint_key(partition)).await? {
                Some(value) => {
                    let checkpoint: Checkpoint = serde_json::from_slice(&value)
                        .map_err(|e| format!("checkpoint {partition} does not decode: {e}"))?;
                    reached = front.observe(&checkpoint);
                }
                None => return Ok(0),
            }
        }
        Ok(reached.unwrap_or(0))
    }

    /// Follows the rebuild until the pointer names its bucket; an error when it is given up,
    /// superseded, or makes no progress for `timeout`.
    async fn until_switched(
        &mut self,
        js: &jetstream::Context,
        pointers: &kv::Store,
        started: Instant,
        timeout: Duration,
    ) -> Result<Done, Error> {
        let name = self.name;
        let target = self.rebuild.target;
        let mut from = None;
        let mut last = (0, Instant::now());
        let mut printed: Option<Instant> = None;
        loop {
            let pointer = match pointers.get(name).await? {
                Some(value) => serde_json::from_slice::<Pointer>(&value)
                    .map_err(|e| format!("the pointer of {name} does not decode: {e}"))?,
                None => return Err(format!("read model {name} has no pointer any more").into()),
            };
            // Read after the pointer: once it names the new bucket, this is at least where the
            // rebuild was when it went live.
            let position = match self.position(js).await {
                Ok(position) => position,
                // The bucket is being made or deleted: judged by the pointer.
                Err(_) => last.0,
            };
            let from = *from.get_or_insert(position);
            let now = Instant::now();
            if pointer.bucket == self.rebuild.bucket {
                return Ok(Done {
                    position: position.max(last.0),
                    from,
                    elapsed: started.elapsed(),
                });
            }
            if pointer.rebuild.as_ref().map(|r| &r.bucket) != Some(&self.rebuild.bucket) {
                return Err(if pointer.version != self.version {
                    format!(
                        "the rebuild of {name} is given up: version {} of it is live ({})",
                        pointer.version, pointer.bucket
                    )
                } else {
                    format!(
                        "the rebuild of {name} into {} was given up by its runner (see the \
                         service's log); readers stay on {}",
                        self.rebuild.bucket, pointer.bucket
                    )
                }
                .into());
            }
            if position > last.0 {
                last = (position, now);
            } else if now.duration_since(last.1) >= timeout {
                return Err(format!(
                    "the rebuild of {name} made no progress for {} s (at {position}/{target} \
                     events): its runner may have stopped; it goes on when the service runs \
                     again",
                    timeout.as_secs()
                )
                .into());
            }
            let speed = rate(position.saturating_sub(from), started.elapsed());
            if printed.is_none_or(|at| now.duration_since(at) >= EVERY) {
                self.shown.line(position, speed);
                printed = Some(now);
            }
            self.shown.bar(position, speed);
            tokio::time::sleep(POLL).await;
        }
    }
}

/// How progress is shown: a bar on a terminal, plain lines elsewhere, JSON lines with `--json`.
struct Shown {
    name: String,
    bucket: String,
    target: u64,
    json: bool,
    bar: Option<ProgressBar>,
}

impl Shown {
    fn new(name: &str, rebuild: &Rebuild, json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(rebuild.target), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "rebuilding {prefix} [{bar:30}] {pos}/{len} events ({percent}%), {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(name.to_owned());
            bar
        });
        Self {
            name: name.to_owned(),
            bucket: rebuild.bucket.clone(),
            target: rebuild.target,
            json,
            bar,
        }
    }

    fn eta(&self, position: u64, speed: f64) -> Option<f64> {
        let left = self.target.saturating_sub(position);
        if left == 0 {
            Some(0.0)
        } else if speed > 0.0 {
            Some(left as f64 / speed)
        } else {
            None
        }
    }

    /// The bar, at every poll (on a terminal).
    fn bar(&self, position: u64, speed: f64) {
        if let Some(bar) = &self.bar {
            bar.set_length(self.target.max(position));
            bar.set_position(position);
            let eta = self
                .eta(position, speed)
                .map_or("-".to_owned(), |s| format!("{s:.0}s"));
            bar.set_message(format!("{speed:.0} events/s, ETA {eta}"));
        }
    }

    /// A progress line, about once a second (not on a terminal, or as JSON).
    fn line(&self, position: u64, speed: f64) {
        if self.bar.is_some() {
            return;
        }
        let percent = (position.min(self.target) * 100)
            .checked_div(self.target)
            .unwrap_or(100);
        let eta = self.eta(position, speed);
        if self.json {
            println!(
                "{}",
                json!({
                    "type": "progress",
                    "name": self.name,
                    "bucket": self.bucket,
                    "position": position,
                    "target": self.target,
                    "percent": percent,
                    "events_per_second": speed.round(),
                    "eta_seconds": eta.map(|s| s.round()),
                })
            );
        } else {
            let eta = eta.map_or("-".to_owned(), |s| format!("{s:.0}s"));
            eprintln!(
                "rebuilding {}: {position}/{} events ({percent}%), {speed:.0} events/s, ETA {eta}",
                self.name, self.target
            );
        }
    }

    fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
