//! The shape of the code, checked: no circle of imports between the engine's actor modules
//! (`actors/src/actors/`) or between the front's API modules (`src/api/`). Shared rules live
//! below them (`store/artefacts.rs`, `snapshot.rs`, `domain.rs`; `api/lookup.rs`,
//! `api/signed.rs`, `api/error.rs`); a circle means a helper was put in the wrong place.
//!
//! A module is a file, or a folder with its `mod.rs` (its files are one module to the others).
//! A reference is any path through `super::` or `crate::actors::` / `crate::api::` naming a
//! sibling module, in code or in a `use` (comments are skipped). The parent `mod.rs` of the API
//! (routes and `AppState`) is not a node: every module may use it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// A circle in `graph`, as the modules along it (the first repeated at the end), if any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unseen,
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::OnPath);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::Unseen) {
                Mark::OnPath => {
                    let start = path.iter().position(|n| n == next).expect("on the path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::Unseen => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node.as_str()).copied().unwrap_or(Mark::Unseen) == Mark::Unseen {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

/// `text` without its comments (line comments, doc comments, block comments); string literals
/// are kept (a path in a string is rare and harmless here).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The identifiers `text` names right after `prefix`: `prefix::name` and each first segment of
/// `prefix::{a, b::c, d}`.
fn names_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut start = 0;
    while let Some(found) = text[start..].find(prefix) {
        let at = start + found;
        start = at + prefix.len();
        // A whole path segment: not the tail of a longer one (`super::super::` is asked for
        // separately, and `xsuper::` is not `super::`).
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let after = &text[start..];
        if let Some(group) = after.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name = ident(after);
            // `super::super::x` is a path to x one level further up, not a module `super`.
            if !name.is_empty() && name != "super" {
                names.insert(name);
            }
        }
    }
    names
}

/// The modules of `dir` (files, and folders with a `mod.rs`) and the sibling modules each one
/// references. `crate_path` is how the crate names the folder (`crate::actors::`).
fn module_graph(dir: &Path, crate_path: &str, excluded: &[&str]) -> Graph {
    let mut modules: BTreeMap<String, Vec<(PathBuf, bool)>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let files = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "rs"))
                .map(|p| {
                    let is_mod = p.file_name().is_some_and(|n| n == "mod.rs");
                    (p, !is_mod)
                })
                .collect();
            modules.insert(name, files);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if !excluded.contains(&name.as_str()) {
                modules.insert(name, vec![(path, false)]);
            }
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, files) in &modules {
        let mut edges = BTreeSet::new();
        for (file, nested) in files {
            let text = strip_comments(&std::fs::read_to_string(file).unwrap());
            // A file inside a folder reaches its siblings through `super::super::`; its own
            // `super::` is the folder itself.
            let sibling_prefix = if *nested { "super::super::" } else { "super::" };
            let mut named = names_after(&text, sibling_prefix);
            named.extend(names_after(&text, crate_path));
            edges.extend(named.into_iter().filter(|n| n != module && names.contains(n)));
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

fn assert_acyclic(graph: &Graph, what: &str) {
    assert!(
        graph.len() >= 3,
        "{what}: too few modules found ({graph:?}): is the path right?"
    );
    if let Some(cycle) = find_cycle(graph) {
        panic!(
            "{what}: an import circle: {}. Move what both need below them (see docs/ARCHITECTURE.md).\nThe graph: {graph:#?}",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_cycle_finder_finds_a_circle_and_accepts_a_tree() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (from, to) in edges {
            g.entry(from.to_string()).or_default().insert(to.to_string());
            g.entry(to.to_string()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let cycle = find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])).expect("a circle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    assert!(find_cycle(&graph(&[("x", "y"), ("y", "x")])).is_some());
}

#[test]
fn references_are_read_from_code_not_comments() {
    let text = strip_comments(
        "use super::{stream::Stream, supervision};\n// super::registry is only mentioned\nlet x = super::uploader::Kick; /* crate::actors::compositor */\nuse super::super::snapshot;",
    );
    let names = names_after(&text, "super::");
    assert_eq!(
        names,
        ["stream", "supervision", "uploader"]
            .map(String::from)
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(
        names_after(&text, "super::super::"),
        ["snapshot".to_string()].into_iter().collect()
    );
    assert!(names_after(&text, "crate::actors::").is_empty());
}

#[test]
fn no_import_circle_between_actor_modules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("actors/src/actors");
    let graph = module_graph(&dir, "crate::actors::", &["mod"]);
    assert!(
        graph.contains_key("recorder") && graph.contains_key("stream"),
        "{graph:?}"
    );
    assert_acyclic(&graph, "actors/src/actors");
}

#[test]
fn no_import_circle_between_api_modules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let graph = module_graph(&dir, "crate::api::", &["mod"]);
    assert!(
        graph.contains_key("recordings") && graph.contains_key("error"),
        "{graph:?}"
    );
    assert_acyclic(&graph, "src/api");
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Lines of code above a file's unit tests (its `#[cfg(test)]` module, if any).
fn code_lines(text: &str) -> usize {
    text.lines().take_while(|l| l.trim() != "#[cfg(test)]").count()
}

/// A file longer than ~600 lines of code says at its top why it is one file.
#[test]
fn a_long_file_states_why_it_is_one_file() {
    const LIMIT: usize = 620;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "actors/src", "testkit/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "{} files found: is the path right?", files.len());
    let unexplained: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            let header: String = text.lines().take_while(|l| l.starts_with("//!")).collect();
            (code_lines(&text) > LIMIT && !header.contains("Why one file")).then(|| {
                format!(
                    "{} ({} lines)",
                    file.strip_prefix(root).unwrap().display(),
                    code_lines(&text)
                )
            })
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "split these files by concern, or say at their top (`//! Why one file ...`) why not: {unexplained:?}"
    );
}
