//! The library service: `NATS_URL=nats://127.0.0.1:4222 cargo run -p cim-nats-guide`.

// ANCHOR: main
use cim_nats_guide::Library;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let client = async_nats::connect(&url).await?;
    let library = Library::start(client).await?;
    println!("library: running on {url}; ctrl-c stops it");
    tokio::signal::ctrl_c().await?;
    library.shutdown().await?;
    println!("library: stopped");
    Ok(())
}
// ANCHOR_END: main
