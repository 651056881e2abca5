//! `cim-nats status`: the server, each stream with its consumers, the read models (checkpoint
//! and lag) and the dead letters.

use async_nats::jetstream::{self, kv};
use cim_nats::jetstream::group::{GroupStatus, GROUPS_BUCKET};
use cim_nats::jetstream::{checkpoint_partition, Checkpoint, CheckpointFront, Pointer};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

use crate::output::{read_model_table, table, text};
use crate::Error;

/// The error for a stream that is not there.
pub(crate) fn no_stream(name: &str, e: &dyn std::fmt::Display) -> Error {
    format!("no stream {name} on the server ({e})").into()
}

fn time(t: time::OffsetDateTime) -> String {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

pub(crate) async fn run(client: &async_nats::Client, as_json: bool) -> Result<(), Error> {
    let info = client.server_info();
    let js = jetstream::new(client.clone());
    let account = js
        .query_account()
        .await
        .map_err(|e| format!("JetStream does not answer on {} ({e})", info.host))?;

    let mut streams = Vec::new();
    let mut last_sequences = std::collections::HashMap::new();
    let mut names = js.stream_names();
    let mut all = Vec::new();
    while let Some(name) = names.try_next().await? {
        all.push(name);
    }
    all.sort();
    for name in &all {
        if name.starts_with("KV_") || name.starts_with("OBJ_") {
            continue;
        }
        let mut stream = js.get_stream(name).await?;
        let info = stream.info().await?.clone();
        last_sequences.insert(name.clone(), info.state.last_sequence);
        let mut consumers = Vec::new();
        let mut list = stream.consumers();
        while let Some(consumer) = list.try_next().await? {
            consumers.push(json!({
                "name": consumer.name,
                "durable": consumer.config.durable_name.is_some(),
                "pending": consumer.num_pending,
                "ack_pending": consumer.num_ack_pending,
                "redelivered": consumer.num_redelivered,
                "acknowledged_up_to": consumer.ack_floor.stream_sequence,
            }));
        }
        streams.push(json!({
            "name": name,
            "subjects": info.config.subjects,
            "events": info.state.messages,
            "bytes": info.state.bytes,
            "first_sequence": info.state.first_sequence,
            "last_sequence": info.state.last_sequence,
            "last_time": (info.state.last_sequence > 0).then(|| time(info.state.last_timestamp)),
            "consumers": consumers,
        }));
    }

    let read_models = read_models(&js, &last_sequences).await?;
    let views: Vec<String> = all
        .iter()
        .filter_map(|n| n.strip_suffix("_PARTITIONED").map(str::to_owned))
        .collect();
    let groups = groups(client, &js, &views).await?;

    let mut dead_letters = Vec::new();
    if let Ok(dlq) = js.get_stream("DLQ").await {
        let mut subjects = dlq.info_with_subjects("dlq.>").await?;
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry?;
            // dlq.{stream}.{consumer}
            let mut parts = subject.splitn(3, '.').skip(1);
            dead_letters.push(json!({
                "stream": parts.next().unwrap_or_default(),
                "consumer": parts.next().unwrap_or_default(),
                "letters": count,
                "parked_aggregates": 0,
            }));
        }
        // Sequenced dead letters: the aggregates parked behind them, per consumer.
        let letters = cim_nats::jetstream::subscriber::DeadLetters::new(
            client.clone(),
            cim_nats::jetstream::subscriber::DeadLetterConfig::default(),
        );
        for parked in letters.parked(None, None).await? {
            if let Some(row) = dead_letters.iter_mut().find(|d| {
                d["stream"] == parked.stream.as_str() && d["consumer"] == parked.consumer.as_str()
            }) {
                row["parked_aggregates"] =
                    json!(row["parked_aggregates"].as_u64().unwrap_or(0) + 1);
            }
        }
    }

    let status = json!({
        "server": {
            "version": info.version,
            "name": info.server_name,
            "jetstream": info.jetstream,
            "streams": account.streams,
            "consumers": account.consumers,
        },
        "streams": streams,
        "read_models": read_models,
        "groups": groups,
        "dead_letters": dead_letters,
    });
    if as_json {
        println!("{status}");
        return Ok(());
    }
    print_tables(&status);
    Ok(())
}

/// Each read model of bucket `READ_MODELS`: its live bucket, checkpoint and lag.
pub(crate) async fn read_models(
    js: &jetstream::Context,
    last_sequences: &std::collections::HashMap<String, u64>,
) -> Result<Vec<Value>, Error> {
    let Ok(pointers) = js.get_key_value("READ_MODELS").await else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut keys: Vec<String> = pointers.keys().await?.try_collect().await?;
    keys.sort();
    for name in keys {
        let Some(value) = pointers.get(&name).await? else {
            continue;
        };
        let pointer: Pointer = match serde_json::from_slice(&value) {
            Ok(pointer) => pointer,
            Err(e) => {
                out.push(json!({ "name": name, "error": format!("pointer: {e}") }));
                continue;
            }
        };
        let (checkpoint, stream) = checkpoint(js, &pointer.bucket).await?;
        let lag = stream
            .as_ref()
            .and_then(|s| last_sequences.get(s))
            .zip(checkpoint)
            .map(|(last, at)| last.saturating_sub(at));
        out.push(json!({
            "name": name,
            "version": pointer.version,
            "bucket": pointer.bucket,
            "stream": stream,
            "checkpoint": checkpoint,
            "lag": lag,
        }));
    }
    Ok(out)
}

/// Each consumer group of bucket `CIM_GROUPS`: members, and each partition's holder, epoch and
/// (for a subscriber group) lag.
async fn groups(
    client: &async_nats::Client,
    js: &jetstream::Context,
    views: &[String],
) -> Result<Vec<Value>, Error> {
    let Ok(bucket) = js.get_key_value(GROUPS_BUCKET).await else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = bucket
        .keys()
        .await?
        .try_collect::<Vec<String>>()
        .await?
        .into_iter()
        .filter_map(|k| k.strip_suffix(".config").map(str::to_owned))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let status = GroupStatus::read(client, GROUPS_BUCKET, &name).await?;
        // A subscriber group's partitions are consumers of one stream's partitioned view.
        let mut lag = Vec::new();
        for stream in views {
            if let Ok(found) = status.subscriber_lag(client, stream).await {
                if !found.is_empty() {
                    lag = found;
                    break;
                }
            }
        }
        let partitions: Vec<Value> = status
            .leases
            .iter()
            .map(|l| {
                let lag = lag.iter().find(|x| x.partition == l.partition);
                json!({
                    "partition": l.partition,
                    "member": l.member,
                    "epoch": l.epoch,
                    "pending": lag.map(|x| x.pending),
                    "ack_pending": lag.map(|x| x.ack_pending),
                })
            })
            .collect();
        out.push(json!({
            "group": name,
            "partitions": status.partitions,
            "members": status.members.iter().map(|m| json!({
                "member": m.member,
                "host": m.host,
                "pid": m.pid,
                "joined": m.joined,
                "partitions": m.partitions,
            })).collect::<Vec<_>>(),
            "leases": partitions,
        }));
    }
    Ok(out)
}

/// The sequence a model's bucket reflects (the smallest of its partitions' checkpoints) and
/// the stream it reads.
async fn checkpoint(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<(Option<u64>, Option<String>), Error> {
    let Ok(store) = js.get_key_value(bucket).await else {
        return Ok((None, None));
    };
    let mut front = CheckpointFront::default();
    let mut reached = None;
    let mut stream = None;
    let mut watch = store.watch_with_history("_cim.checkpoint.>").await?;
    let pending = store.status().await?.values();
    if pending == 0 {
        return Ok((None, None));
    }
    // The last checkpoint of each partition, as the watch delivers them first.
    while let Ok(Some(entry)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), watch.next()).await
    {
        let entry: kv::Entry = entry?;
        if checkpoint_partition(&entry.key).is_none() {
            continue;
        }
        if let Ok(c) = serde_json::from_slice::<Checkpoint>(&entry.value) {
            if !c.stream.is_empty() {
                stream = Some(c.stream.clone());
            }
            reached = front.observe(&c).or(reached);
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok((reached, stream))
}

fn print_tables(status: &Value) {
    let server = &status["server"];
    println!(
        "server: nats-server {} ({}), JetStream {}, {} streams, {} consumers",
        server["version"].as_str().unwrap_or(""),
        server["name"].as_str().unwrap_or(""),
        if server["jetstream"].as_bool() == Some(true) {
            "enabled"
        } else {
            "disabled"
        },
        server["streams"],
        server["consumers"],
    );
    let mut streams = table(&[
        "stream",
        "subjects",
        "events",
        "bytes",
        "first",
        "last",
        "last stored",
    ]);
    let mut consumers = table(&[
        "stream",
        "consumer",
        "durable",
        "pending",
        "ack pending",
        "redelivered",
        "acked up to",
    ]);
    let mut any_consumer = false;
    for s in status["streams"].as_array().into_iter().flatten() {
        let subjects = s["subjects"]
            .as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        streams.add_row(vec![
            text(&s["name"]),
            subjects,
            text(&s["events"]),
            text(&s["bytes"]),
            text(&s["first_sequence"]),
            text(&s["last_sequence"]),
            text(&s["last_time"]),
        ]);
        for c in s["consumers"].as_array().into_iter().flatten() {
            any_consumer = true;
            consumers.add_row(vec![
                text(&s["name"]),
                text(&c["name"]),
                text(&c["durable"]),
                text(&c["pending"]),
                text(&c["ack_pending"]),
                text(&c["redelivered"]),
                text(&c["acknowledged_up_to"]),
            ]);
        }
    }
    println!("\nstreams\n{streams}");
    if any_consumer {
        println!("\nconsumers\n{consumers}");
    }
    let models = status["read_models"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !models.is_empty() {
        println!("\nread models\n{}", read_model_table(&models));
    }
    for g in status["groups"].as_array().into_iter().flatten() {
        let members = g["members"].as_array().map_or(0, Vec::len);
        let mut rows = table(&["partition", "member", "epoch", "pending", "ack pending"]);
        for l in g["leases"].as_array().into_iter().flatten() {
            rows.add_row(vec![
                text(&l["partition"]),
                text(&l["member"]),
                text(&l["epoch"]),
                text(&l["pending"]),
                text(&l["ack_pending"]),
            ]);
        }
        println!(
            "\ngroup {}: {} partitions, members: {members}\n{rows}",
            text(&g["group"]),
            text(&g["partitions"]),
        );
    }
    let letters = status["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !letters.is_empty() {
        let mut rows = table(&["stream", "consumer", "dead letters", "parked aggregates"]);
        for l in &letters {
            rows.add_row(vec![
                text(&l["stream"]),
                text(&l["consumer"]),
                text(&l["letters"]),
                text(&l["parked_aggregates"]),
            ]);
        }
        println!("\ndead letters\n{rows}");
    }
}
