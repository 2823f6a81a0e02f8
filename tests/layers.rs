//! The module layering of `src/` (ARCHITECTURE.md, "Code map"), checked from the source so it
//! stays true: every `crate::` or `super::` path a module names points at its own layer or one
//! below it, and no module reaches another that reaches back.
//!
//! A module is a file under `src/` (`src/engine/mod.rs` is `engine`, `src/server/call.rs` is
//! `server::call`). A path names the deepest module it goes through (`crate::engine::pool::Pool`
//! names `engine::pool`). A parent naming its own children (declaring and re-exporting them) is
//! containment, not an import, and is not an edge; a child naming its parent is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first. A module belongs to the first entry that is it or one of its
/// ancestors; `server` alone (its mod.rs) sits above the handlers, which sit above what they
/// share.
const LAYERS: &[(&str, &[&str])] = &[
    ("commands", &["cmd"]),
    ("server", &["server", "server::in_process"]),
    (
        "protocol handlers",
        &[
            "server::call",
            "server::riff",
            "server::admin",
            "server::metrics",
            "server::openwhisk",
            "server::statefun",
        ],
    ),
    (
        "below the handlers",
        &[
            "server::drain",
            "server::http",
            "server::listener",
            "server::authority",
            "server::socket",
            "server::socket_file",
            "server::codec",
            "server::wire",
        ],
    ),
    ("the function's lifecycle", &["live"]),
    ("engine", &["engine"]),
    ("statistics", &["stats"]),
    ("function boundary", &["function", "negotiate"]),
    (
        "leaves",
        &["proto", "config", "logging", "env", "cli", "sync"],
    ),
];

/// The layer of `module`: the index of its most specific entry in [`LAYERS`].
fn layer(module: &str) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (index, (_, prefixes)) in LAYERS.iter().enumerate() {
        for prefix in *prefixes {
            let matches = module == *prefix || module.starts_with(&format!("{prefix}::"));
            if matches && best.is_none_or(|(_, len)| prefix.len() > len) {
                best = Some((index, prefix.len()));
            }
        }
    }
    best.map(|(index, _)| index)
}

/// Every `.rs` file under `dir`, as (module path, file).
fn modules(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            modules(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if name != "lib" && name != "main" {
                out.push((name, path));
            }
        }
    }
}

/// The source without comments, string and char literals (so paths in docs do not count).
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(bytes.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) =>
            {
                // A raw string: r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while bytes.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if bytes.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let end = format!("\"{}", "#".repeat(hashes));
                let rest = &source[j + 1..];
                i = j + 1 + rest.find(&end).map_or(rest.len(), |n| n + end.len());
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') || bytes.get(i + 1) == Some(&b'\\') => {
                // A char literal ('x' or '\n'); a lifetime ('a) has no closing quote.
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            _ => {
                let c = source[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The paths (as segment lists) that a `crate::`/`super::` path starting at `rest` names,
/// expanding `{a, b::{c}}` groups.
fn expand(rest: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let bytes = rest.as_bytes();
    let mut i = 0;
    let mut path = prefix;
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) == Some(&b'{') {
            i += 1;
            loop {
                while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                    i += 1;
                }
                if i >= bytes.len() {
                    return i;
                }
                if bytes[i] == b'}' {
                    return i + 1;
                }
                i += expand(&rest[i..], path.clone(), out);
            }
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if start == i {
            out.push(path);
            return i;
        }
        path.push(rest[start..i].to_owned());
        if rest[i..].starts_with("::") {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// The modules `module` names through `crate::` and `super::` paths.
fn imports(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut paths = Vec::new();
    for (anchor, base) in [("crate::", Vec::new()), ("super::", parent(module))] {
        let mut from = 0;
        while let Some(at) = code[from..].find(anchor) {
            let at = from + at;
            from = at + anchor.len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            expand(&code[from..], base.clone(), &mut paths);
        }
    }
    let mut named = BTreeSet::new();
    for path in paths {
        // The deepest known module along the path.
        let mut target = None;
        for n in 1..=path.len() {
            let candidate = path[..n].join("::");
            if known.contains(&candidate) {
                target = Some(candidate);
            }
        }
        if let Some(target) = target
            && target != module
            && !target.starts_with(&format!("{module}::"))
        {
            named.insert(target);
        }
    }
    named
}

fn parent(module: &str) -> Vec<String> {
    let mut parts: Vec<String> = module.split("::").map(str::to_owned).collect();
    parts.pop();
    parts
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    modules(&src, &src, &mut files);
    let known: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    files
        .iter()
        .map(|(module, file)| {
            let code = code_only(&std::fs::read_to_string(file).unwrap());
            // Unit tests (a `mod tests` at the end, by convention) are not the architecture,
            // and their `super::` is the file's own module.
            let code = match code.find("#[cfg(test)]\nmod ") {
                Some(at) => code[..at].to_owned(),
                None => code,
            };
            (module.clone(), imports(module, &code, &known))
        })
        .collect()
}

#[test]
fn every_module_has_a_layer() {
    let unplaced: Vec<String> = graph().into_keys().filter(|m| layer(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules with no layer in tests/layers.rs (and ARCHITECTURE.md): {unplaced:?}"
    );
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let mut upward = Vec::new();
    for (module, targets) in graph() {
        let Some(own) = layer(&module) else { continue };
        for target in targets {
            if let Some(theirs) = layer(&target)
                && theirs < own
            {
                upward.push(format!(
                    "{module} ({}) uses {target} ({})",
                    LAYERS[own].0, LAYERS[theirs].0
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports up the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_loops() {
    let graph = graph();
    // Depth-first search for a back edge; the path to it is the loop.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        loops: &mut Vec<String>,
    ) {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            loops.push(cycle.join(" -> "));
            return;
        }
        if !done.insert(node.to_owned()) {
            return;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, loops);
        }
        path.pop();
    }
    let mut loops = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut loops);
    }
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

#[test]
fn the_parser_sees_grouped_nested_and_inline_paths() {
    let known: BTreeSet<String> = ["engine", "engine::pool", "stats", "function", "server"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let code = code_only(
        "use crate::{engine::{pool::Pool, Engine}, stats};\n\
         // crate::server in a comment\n\
         let s = \"crate::server\";\n\
         fn f() { crate::function::flush(); }\n",
    );
    let named = imports("live", &code, &known);
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["engine", "engine::pool", "function", "stats"]
    );
    let named = imports("engine::pool", &code_only("use super::CallMeta;"), &known);
    assert_eq!(named.into_iter().collect::<Vec<_>>(), ["engine"]);
}
