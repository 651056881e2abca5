//! `cargo xtask modules`: the modules of `core/src` that import each other.
//!
//! A module's imports are the `crate::` paths its file names (in `use` lines, groups included,
//! and in code), each taken as the longest module path it starts with. Two modules that name
//! each other are a cycle; a module and its own parent or child do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`jetstream::store::append`; `` for the crate root) to its source text.
fn modules(src: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .map_err(|e| e.to_string())?
                .with_extension("");
            let mut name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("::");
            if name == "lib" {
                name.clear();
            } else if let Some(parent) = name.strip_suffix("::mod") {
                name = parent.to_owned();
            }
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            out.insert(name, text);
        }
    }
    Ok(out)
}

/// The module a `crate::` path (without the prefix) is in.
fn resolve<'a>(modules: &'a BTreeMap<String, String>, path: &str) -> Option<&'a str> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        let candidate = parts.join("::");
        if let Some((name, _)) = modules.get_key_value(&candidate) {
            return Some(name.as_str());
        }
        parts.pop();
    }
    None
}

/// The `crate::` paths named in `text` (comments left out), groups expanded one level.
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item = item.trim();
                let path: String = item
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                out.push(path.trim_end_matches(':').to_owned());
            }
            continue;
        }
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.push(path.trim_end_matches(':').to_owned());
    }
    out
}

/// Pairs of modules that import each other.
pub(crate) fn cycles(src: &Path) -> Result<Vec<(String, String)>, String> {
    let modules = modules(src)?;
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for (name, text) in &modules {
        for path in crate_paths(text) {
            let Some(target) = resolve(&modules, &path) else {
                continue;
            };
            let related = target == name
                || target.is_empty()
                || name.starts_with(&format!("{target}::"))
                || target.starts_with(&format!("{name}::"));
            if !related {
                edges.insert((name.clone(), target.to_owned()));
            }
        }
    }
    Ok(edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .cloned()
        .collect())
}

/// Runs the check on `core/src` and prints what it finds.
pub(crate) fn check(root: &Path) -> Result<(), String> {
    let src = root.join("core").join("src");
    let found = cycles(&src)?;
    if found.is_empty() {
        println!("no two modules of core/src import each other");
        return Ok(());
    }
    for (a, b) in &found {
        println!("{a} <-> {b}");
    }
    Err(format!(
        "{} pairs of modules import each other",
        found.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_groups_are_found() {
        let paths = crate_paths(
            "use crate::a::B;\nuse crate::{c::D, e};\n// crate::ignored\nlet x = crate::f::g();",
        );
        assert_eq!(paths, vec!["a::B", "c::D", "e", "f::g"]);
    }

    /// The library has no module cycle (a change that adds one fails the tests).
    #[test]
    fn core_has_no_module_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("core")
            .join("src");
        assert_eq!(cycles(&src).unwrap(), Vec::<(String, String)>::new());
    }
}
