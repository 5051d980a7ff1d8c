//! The source tree keeps the shape docs/architecture.md describes: no module of a crate
//! imports, through others, a module that imports it back, and no source file grows past
//! about 600 lines of non-test code. Both are easy to break one reasonable-looking edit
//! at a time, so they are checked rather than remembered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines of non-test code in one source file.
const MAX_CODE_LINES: usize = 600;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comment lines, test-only one-line items (`#[cfg(test)]`
/// then `mod tests;`) and its inline test module (from `#[cfg(test)]` + `mod … {` on).
fn code_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable source file");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line.starts_with("#[cfg(test)]") {
            // Skip further attributes to the item the cfg applies to.
            let mut item = i + 1;
            while lines.get(item).is_some_and(|l| l.trim().starts_with("#[")) {
                item += 1;
            }
            let next = lines.get(item).map(|l| l.trim()).unwrap_or("");
            if next.starts_with("mod ") && next.ends_with('{') {
                break;
            }
            i = item + 1;
            continue;
        }
        if !line.starts_with("//") {
            out.push(lines[i].to_owned());
        }
        i += 1;
    }
    out
}

/// The top-level module a file belongs to (`session` for `src/session/io.rs`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_owned())
}

/// `crate::name` paths used in `lines`.
fn crate_paths(lines: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in lines {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The source files of a crate, without modules' tests kept in their own `tests.rs` or
/// `tests/` (not code to read when changing the module).
fn code_files(src: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| {
        let rel = f.strip_prefix(src).unwrap_or(f);
        !rel.components()
            .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs")
    });
    files
}

fn crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("dir entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn no_module_imports_itself_back() {
    let mut cycles = Vec::new();
    for src in crates() {
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &code_files(&src) {
            let Some(module) = top_module(&src, file) else {
                continue;
            };
            let used = crate_paths(&code_lines(file));
            deps.entry(module.clone())
                .or_default()
                .extend(used.into_iter().filter(|m| *m != module));
        }
        // Depth-first from every module; a path that comes back to a module on it is a cycle.
        fn walk(
            deps: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            found: &mut BTreeSet<Vec<String>>,
        ) {
            let Some(last) = path.last().cloned() else {
                return;
            };
            for next in deps.get(&last).into_iter().flatten() {
                if let Some(start) = path.iter().position(|m| m == next) {
                    let mut cycle = path[start..].to_vec();
                    let min = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
                    cycle.rotate_left(min);
                    found.insert(cycle);
                } else {
                    path.push(next.clone());
                    walk(deps, path, found);
                    path.pop();
                }
            }
        }
        let mut found = BTreeSet::new();
        for module in deps.keys() {
            walk(&deps, &mut vec![module.clone()], &mut found);
        }
        for cycle in found {
            cycles.push(format!("{}: {}", src.display(), cycle.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn no_source_file_is_too_long() {
    let mut long = Vec::new();
    for src in crates() {
        for file in code_files(&src) {
            let n = code_lines(&file).len();
            if n > MAX_CODE_LINES {
                long.push(format!("{} has {n} lines of code", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_CODE_LINES} lines:\n{}",
        long.join("\n")
    );
}
