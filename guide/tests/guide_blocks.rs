//! `docs/new-domain.md` shows this crate's code as it is: every ```rust block is preceded by
//! `<!-- guide/<file>:<anchor> -->` and is exactly the code between `// ANCHOR: <anchor>` and
//! `// ANCHOR_END: <anchor>` in that file (marker lines removed, common indentation removed);
//! every anchor of the crate is shown; the manifest shown depends on cim-nats from a checkout
//! and on async-nats with the workspace's features.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the guide crate is in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fenced block of the guide: its info string, its text, the line of its fence, and the
/// line before the fence.
struct Block {
    info: String,
    text: String,
    line: usize,
    before: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let lines: Vec<&str> = markdown.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if let Some(info) = lines[i].strip_prefix("```") {
            let start = i;
            let mut text = Vec::new();
            i += 1;
            while i < lines.len() && lines[i] != "```" {
                text.push(lines[i]);
                i += 1;
            }
            assert!(
                i < lines.len(),
                "the block at line {} is not closed",
                start + 1
            );
            out.push(Block {
                info: info.trim().to_owned(),
                text: text.join("\n"),
                line: start + 1,
                before: start
                    .checked_sub(1)
                    .map(|b| lines[b].trim().to_owned())
                    .unwrap_or_default(),
            });
        }
        i += 1;
    }
    out
}

fn is_marker(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("// ANCHOR: ") || line.starts_with("// ANCHOR_END: ")
}

/// The code between the markers of `anchor` in `source`, marker lines removed, dedented.
fn anchored(source: &str, anchor: &str) -> Option<String> {
    let (begin, end) = (
        format!("// ANCHOR: {anchor}"),
        format!("// ANCHOR_END: {anchor}"),
    );
    let lines: Vec<&str> = source.lines().collect();
    let from = lines.iter().position(|l| l.trim() == begin)?;
    let to = from + lines[from..].iter().position(|l| l.trim() == end)?;
    let body: Vec<&str> = lines[from + 1..to]
        .iter()
        .copied()
        .filter(|l| !is_marker(l))
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let dedented: Vec<&str> = body
        .iter()
        .map(|l| {
            if l.trim().is_empty() {
                ""
            } else {
                &l[indent..]
            }
        })
        .collect();
    Some(dedented.join("\n"))
}

/// Every `(file, anchor)` of the crate's sources.
fn all_anchors() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for dir in ["guide/src", "guide/tests"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("the crate's folders") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let file = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
                for line in read(&path).lines() {
                    if let Some(name) = line.trim().strip_prefix("// ANCHOR: ") {
                        out.insert((file.clone(), name.to_owned()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_rust_block_of_the_guide_is_the_code_of_its_anchor() {
    let guide = read(&root().join("docs/new-domain.md"));
    let mut shown = BTreeSet::new();
    let mut problems = Vec::new();
    for block in blocks(&guide).iter().filter(|b| b.info.starts_with("rust")) {
        let Some(reference) = block
            .before
            .strip_prefix("<!--")
            .and_then(|r| r.strip_suffix("-->"))
            .map(str::trim)
        else {
            problems.push(format!(
                "line {}: a rust block without `<!-- guide/<file>:<anchor> -->` before it",
                block.line
            ));
            continue;
        };
        let Some((file, anchor)) = reference.rsplit_once(':') else {
            problems.push(format!(
                "line {}: {reference:?} is not <file>:<anchor>",
                block.line
            ));
            continue;
        };
        let source = read(&root().join(file));
        match anchored(&source, anchor) {
            None => problems.push(format!("line {}: no anchor {anchor} in {file}", block.line)),
            Some(code) if code != block.text => problems.push(format!(
                "line {}: the block differs from {file}:{anchor}; it should be:\n{code}",
                block.line
            )),
            Some(_) => {}
        }
        shown.insert((file.to_owned(), anchor.to_owned()));
    }
    for (file, anchor) in all_anchors().difference(&shown) {
        problems.push(format!("{file}:{anchor} is not shown in the guide"));
    }
    assert!(
        problems.is_empty(),
        "docs/new-domain.md:\n{}",
        problems.join("\n")
    );
}

/// The quoted strings of the first `features = [...]` after `key =` in `text`.
fn features_of(text: &str, key: &str) -> BTreeSet<String> {
    let at = text
        .find(&format!("{key} ="))
        .unwrap_or_else(|| panic!("no {key} in {text}"));
    let rest = &text[at..];
    let list = &rest[rest.find("features = [").expect("a features list")..];
    let list = &list[..list.find(']').expect("the list's end")];
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_manifest_of_the_guide_depends_on_a_checkout_with_the_workspace_features() {
    let guide = read(&root().join("docs/new-domain.md"));
    let manifest = blocks(&guide)
        .into_iter()
        .find(|b| b.info == "toml")
        .expect("the guide shows a manifest");
    let workspace = read(&root().join("Cargo.toml"));
    let deps = &workspace[workspace.find("[workspace.dependencies]").unwrap()..];
    assert_eq!(
        features_of(&manifest.text, "async-nats"),
        features_of(deps, "async-nats"),
        "async-nats's features in the guide's manifest"
    );
    let async_nats = &manifest.text[manifest.text.find("async-nats =").unwrap()..];
    assert!(
        async_nats
            .lines()
            .next()
            .unwrap()
            .contains("default-features = false"),
        "async-nats without its default features, as the workspace"
    );
    for line in manifest.text.lines().filter(|l| l.starts_with("cim-nats")) {
        assert!(
            line.contains("git = ") || line.contains("path = "),
            "cim-nats comes from a checkout: {line}"
        );
    }
}
