//! How the tools reach the server: the `nats` CLI's options and their environment variables.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong, as one line.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// The first refusal by the server's permissions on a connection (its text names the subject).
#[derive(Debug)]
pub(crate) struct Denied(tokio::sync::watch::Receiver<Option<String>>);

impl Denied {
    /// Runs `work`, or ends it at once with "permission denied: ..." when the server refuses
    /// something it sends.
    pub(crate) async fn guard<T>(
        mut self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let refused = async move {
            match self.0.wait_for(Option::is_some).await {
                Ok(text) => text.clone().unwrap_or_default(),
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            done = work => done,
            text = refused => Err(format!("permission denied: {text}").into()),
        }
    }
}

/// How to reach the server (the `nats` CLI's names).
#[derive(Debug, clap::Args)]
pub(crate) struct Connection {
    /// The server's URL(s), comma-separated.
    #[arg(
        long,
        short = 's',
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub(crate) server: String,
    /// User name.
    #[arg(long, env = "NATS_USER", global = true)]
    pub(crate) user: Option<String>,
    /// Password.
    #[arg(long, env = "NATS_PASSWORD", global = true)]
    pub(crate) password: Option<String>,
    /// Token.
    #[arg(long, env = "NATS_TOKEN", global = true)]
    pub(crate) token: Option<String>,
    /// A credentials file (JWT and nkey seed).
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub(crate) creds: Option<PathBuf>,
    /// A file holding an nkey seed.
    #[arg(long, env = "NATS_NKEY", global = true)]
    pub(crate) nkey: Option<PathBuf>,
    /// Client certificate (PEM), with --tlskey.
    #[arg(long, env = "NATS_CERT", global = true)]
    pub(crate) tlscert: Option<PathBuf>,
    /// Client key (PEM), with --tlscert.
    #[arg(long, env = "NATS_KEY", global = true)]
    pub(crate) tlskey: Option<PathBuf>,
    /// Certificate authority (PEM) to trust.
    #[arg(long, env = "NATS_CA", global = true)]
    pub(crate) tlsca: Option<PathBuf>,
    /// How long to wait for the server, in seconds.
    #[arg(long, default_value_t = 5, global = true)]
    pub(crate) timeout: u64,
}

impl Connection {
    /// Connects with these options (`name` is the client's name the server shows), and watches
    /// what the server refuses: NATS drops a publish or subscription the user may not make and
    /// says so only to the connection's event callback (a request would just go unanswered).
    pub(crate) async fn connect(&self, name: &str) -> Result<(async_nats::Client, Denied), Error> {
        let (denied_tx, denied) = tokio::sync::watch::channel(None);
        let denied_tx = std::sync::Arc::new(denied_tx);
        let mut options = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let denied_tx = std::sync::Arc::clone(&denied_tx);
                async move {
                    if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) =
                        event
                    {
                        if text.to_lowercase().contains("permissions violation") {
                            denied_tx.send_if_modified(|slot| {
                                slot.is_none().then(|| *slot = Some(text)).is_some()
                            });
                        }
                    }
                }
            })
            .name(name)
            .connection_timeout(Duration::from_secs(self.timeout))
            .request_timeout(Some(Duration::from_secs(self.timeout)));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        } else if self.user.is_some() || self.password.is_some() {
            return Err("--user and --password go together".into());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| format!("credentials file {}: {e}", creds.display()))?;
        }
        if let Some(nkey) = &self.nkey {
            let seed = tokio::fs::read_to_string(nkey)
                .await
                .map_err(|e| format!("nkey file {}: {e}", nkey.display()))?;
            options = options.nkey(seed.trim().to_owned());
        }
        match (&self.tlscert, &self.tlskey) {
            (Some(cert), Some(key)) => {
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => return Err("--tlscert and --tlskey go together".into()),
        }
        if let Some(ca) = &self.tlsca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let servers: Vec<String> = self.server.split(',').map(str::to_owned).collect();
        let connecting = options.connect(servers.as_slice());
        match tokio::time::timeout(Duration::from_secs(self.timeout), connecting).await {
            Ok(Ok(client)) => Ok((client, Denied(denied))),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.server).into()),
            Err(_) => Err(format!(
                "cannot connect to {}: no server answered within {} s",
                self.server, self.timeout
            )
            .into()),
        }
    }
}
