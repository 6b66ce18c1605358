//! The source layout of ARCHITECTURE.md holds: imports between the crate's layers
//! point only down (public API → `wait` → `backend` → shared basics; inside a layer,
//! any way), so no cycle can form between the folders, only `wait` (and the client's
//! constructor) touches the backend, and no source file is longer than 500 lines.
//! Read from the `crate::` paths in the code (not the comments) of every file under
//! `src/`.
//!
//! Run alone: `cargo test --test layout`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The layer of a source file, by its path under `src/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// Shared basics: errors, names, clocks, counters, lock helpers.
    Basics,
    Backend,
    Wait,
    /// The public API: client, mutex, guard, ... (and `lib.rs`).
    Api,
}

/// Top-level modules and their layer (a module not listed is a failure: add it here).
const MODULES: &[(&str, Layer)] = &[
    ("error", Layer::Basics),
    ("keys", Layer::Basics),
    ("clock", Layer::Basics),
    ("sync", Layer::Basics),
    ("stats", Layer::Basics),
    ("holder", Layer::Basics),
    ("backoff", Layer::Basics),
    ("options", Layer::Basics),
    ("tls", Layer::Basics),
    ("backend", Layer::Backend),
    ("wait", Layer::Wait),
    ("client", Layer::Api),
    ("mutex", Layer::Api),
    ("guard", Layer::Api),
    ("reentrant", Layer::Api),
    ("rwlock", Layer::Api),
    ("semaphore", Layer::Api),
    ("held", Layer::Api),
    ("bench_support", Layer::Api),
    ("lib", Layer::Api),
];

fn layer_of_module(name: &str) -> Option<Layer> {
    MODULES.iter().find(|(m, _)| *m == name).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names as `crate::<module>`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    // `use crate::{a, b::c}` names several.
    for group in text.split("use crate::{").skip(1) {
        let inner = group.split('}').next().unwrap_or("");
        for part in inner.split(',') {
            let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn imports_point_only_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "bin" {
            // The `redis-mutex` command is a crate of its own over the public API: its
            // `crate::` paths name its own modules. (The length limit holds for it.)
            continue;
        }
        let layer = layer_of_module(&top).unwrap_or_else(|| panic!("{}: module `{top}` has no layer", rel.display()));
        let text = fs::read_to_string(file).unwrap();
        let code: String =
            text.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
        for name in crate_paths(&code) {
            let Some(target) = layer_of_module(&name) else { continue };
            let allowed = target <= layer || (layer == Layer::Api && target != Layer::Backend)
                // The client picks the backend (`backend::open`); the hidden bench
                // support sends the backend's own script calls.
                || (layer == Layer::Api && (top == "client" || top == "bench_support"));
            if !allowed {
                wrong.push(format!("{} ({layer:?}) uses crate::{name} ({target:?})", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that point up or sideways:\n{}", wrong.join("\n"));
    assert!(files.len() > 20, "found the sources: {}", files.len());
}

#[test]
fn no_source_file_is_longer_than_500_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|f| (f, fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > 500)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(long.is_empty(), "split these by concern, or say why in ARCHITECTURE.md:\n{}", long.join("\n"));
}

#[test]
fn the_checker_sees_a_wrong_import() {
    let found = crate_paths("use crate::wait::Core;\nuse crate::{backend::X, keys};\nlet x = crate::client::f();");
    assert_eq!(found, ["backend", "client", "keys", "wait"].iter().map(|s| s.to_string()).collect());
}
