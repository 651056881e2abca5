//! `cim-nats projection`: the read models of bucket `READ_MODELS`, their checkpoint and lag,
//! and rebuilding one ([`crate::rebuild`]).

use async_nats::jetstream;
use futures::TryStreamExt;
use serde_json::Value;

use crate::output::{read_model_table, text};
use crate::Error;

/// What to show of the read models.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// Every read model: version, live bucket, stream, checkpoint and lag.
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One read model's checkpoint and lag behind its stream.
    Lag {
        /// The read model's name.
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Has the running service rebuild a read model from the start of its stream into a new
    /// bucket, beside the live one that keeps serving; readers switch once it has caught up.
    /// Shows its progress until then; --timeout SECS is also how long it may make no progress.
    Rebuild {
        /// The read model's name.
        name: String,
        /// Do not ask (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
        /// JSON lines (progress, then the outcome) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The read models, as `status` reads them.
async fn models(js: &jetstream::Context) -> Result<Vec<Value>, Error> {
    let mut last = std::collections::HashMap::new();
    let mut names = js.stream_names();
    while let Some(name) = names.try_next().await? {
        if name.starts_with("KV_") || name.starts_with("OBJ_") {
            continue;
        }
        let mut stream = js.get_stream(&name).await?;
        let sequence = stream.info().await?.state.last_sequence;
        last.insert(name, sequence);
    }
    crate::status::read_models(js, &last).await
}

pub(crate) async fn run(
    client: &async_nats::Client,
    action: Action,
    timeout: u64,
) -> Result<(), Error> {
    let js = jetstream::new(client.clone());
    match action {
        Action::Rebuild { name, yes, json } => {
            crate::rebuild::run(client, &name, yes, json, timeout).await
        }
        Action::List { json } => {
            let models = models(&js).await?;
            if json {
                for m in &models {
                    println!("{m}");
                }
                return Ok(());
            }
            println!("{}", read_model_table(&models));
            Ok(())
        }
        Action::Lag { name, json } => {
            let models = models(&js).await?;
            let Some(model) = models.into_iter().find(|m| m["name"] == name.as_str()) else {
                return Err(format!("no read model {name} in bucket READ_MODELS").into());
            };
            if json {
                println!("{model}");
            } else {
                println!(
                    "{name}: version {}, checkpoint {} of stream {}, lag {} events",
                    text(&model["version"]),
                    text(&model["checkpoint"]),
                    text(&model["stream"]),
                    text(&model["lag"]),
                );
            }
            Ok(())
        }
    }
}
