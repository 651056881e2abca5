//! One process of the two-process hot-aggregate test (`tests/tests/hot_aggregate.rs`): many
//! tasks register machines on ONE infrastructure aggregate at once, through one repository, and
//! each command's answer is written as a JSON line.
//!
//! `hot-aggregate-worker URL INFRASTRUCTURE_ID WORKER TASKS COMMANDS OUT_FILE`
//!
//! It prints `ready` once connected and starts when a message arrives on `hot.go`, so that the
//! processes of one test start together. Every tenth host name of a task (`shared-{task}-{k}`) is
//! the same in every worker: all but one of the commands registering it are refused.

use std::io::Write;
use std::sync::Arc;

use cim_domain_infrastructure::{
    ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureCommand,
    InfrastructureId, ResourceCapabilities, ResourceId, SystemArchitecture,
};
use cim_infrastructure_nats::event_store::{EventStoreConfig, JetStreamEventStore};
use cim_nats::{AggregateId, CommandError, MessageIdentity, Repository};
use futures::StreamExt;

type Failure = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    url: String,
    infrastructure: InfrastructureId,
    worker: usize,
    tasks: usize,
    commands: usize,
    out: String,
}

fn args() -> Result<Args, Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, infrastructure, worker, tasks, commands, out] = args.as_slice() else {
        return Err(
            "usage: hot-aggregate-worker URL INFRASTRUCTURE_ID WORKER TASKS COMMANDS OUT_FILE"
                .into(),
        );
    };
    Ok(Args {
        url: url.clone(),
        infrastructure: infrastructure.parse()?,
        worker: worker.parse()?,
        tasks: tasks.parse()?,
        commands: commands.parse()?,
        out: out.clone(),
    })
}

fn hostname(worker: usize, task: usize, k: usize) -> String {
    if k.is_multiple_of(10) {
        format!("shared-{task}-{k}")
    } else {
        format!("w{worker}-{task}-{k}")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Failure> {
    let args = args()?;
    let client = async_nats::connect(&args.url).await?;
    let store = JetStreamEventStore::new(client.clone(), EventStoreConfig::default()).await?;
    let repo = Arc::new(Repository::<InfrastructureAggregate>::new(store).with_cache(10));
    let mut go = client.subscribe("hot.go").await?;
    client.flush().await?;
    println!("ready");
    std::io::stdout().flush()?;
    go.next().await.ok_or("no start signal")?;

    let id: AggregateId = args.infrastructure.into();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.tasks {
        let (repo, id) = (Arc::clone(&repo), id.clone());
        let (worker, commands, infrastructure) = (args.worker, args.commands, args.infrastructure);
        tasks.spawn(async move {
            let mut lines = Vec::with_capacity(commands);
            for k in 0..commands {
                let host = hostname(worker, task, k);
                let spec = ComputeResourceSpec {
                    id: ResourceId::new(),
                    resource_type: ComputeType::VirtualMachine,
                    hostname: Hostname::new(&host)?,
                    system: SystemArchitecture::new("x86_64-linux")?,
                    capabilities: ResourceCapabilities::default(),
                };
                let resource = spec.id.to_string();
                let identity = MessageIdentity::new_from_user(format!("worker-{worker}"));
                let command = move || InfrastructureCommand::RegisterComputeResource {
                    infrastructure_id: infrastructure,
                    spec: spec.clone(),
                    identity: identity.clone(),
                };
                let line = match repo.execute_with_retry(&id, command, 10_000).await {
                    Ok(outcome) => serde_json::json!({
                        "hostname": host, "resource": resource, "result": "ok",
                        "version": outcome.version, "sequence": outcome.last_sequence().0,
                        "events": outcome.events.len(),
                    }),
                    Err(CommandError::Rejected(e)) => serde_json::json!({
                        "hostname": host, "resource": resource, "result": "rejected",
                        "error": e.to_string(),
                    }),
                    Err(e) => serde_json::json!({
                        "hostname": host, "resource": resource, "result": "error",
                        "error": e.to_string(),
                    }),
                };
                lines.push(line);
            }
            Ok::<_, Failure>(lines)
        });
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
    while let Some(lines) = tasks.join_next().await {
        for line in lines?? {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}
