//! Records the git revision the binary is built from, for `wsgate version`, as the
//! `WSGATE_GIT_REVISION` compile-time variable: `WSGATE_GIT_REVISION` from the build's
//! environment when set (a container build without `.git` can pass it in), else
//! `git rev-parse --short HEAD` with `-dirty` when tracked files differ from it, else
//! `unknown`. Never fails the build: no git, no `.git` or any git error gives `unknown`.

use std::path::Path;
use std::process::Command;

const VAR: &str = "WSGATE_GIT_REVISION";

fn main() {
    println!("cargo:rerun-if-env-changed={VAR}");
    let from_env = std::env::var(VAR)
        .ok()
        .filter(|r| !r.trim().is_empty() && r.chars().all(|c| c.is_ascii_graphic()));
    let revision = match from_env {
        Some(r) => r,
        None => {
            let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
            let dir = Path::new(&dir);
            watch(dir);
            from_git(dir).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env={VAR}={revision}");
}

/// `git` in `dir`, its stdout trimmed; `None` on any failure.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn from_git(dir: &Path) -> Option<String> {
    let rev = git(dir, &["rev-parse", "--short", "HEAD"])?;
    if rev.is_empty() {
        return None;
    }
    // Uncommitted changes to tracked files; untracked ones (build output, scratch files)
    // do not make a build dirty.
    let dirty =
        git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

/// Runs this script again when the revision or the tree may have changed: a commit or
/// checkout (HEAD and the branch it names), staging (the index), or an edit to the
/// sources the binary is built from. Nothing to watch without git.
fn watch(dir: &Path) {
    let mut paths = Vec::new();
    for name in ["HEAD", "index", "packed-refs"] {
        paths.extend(git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", name],
        ));
    }
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        paths.extend(git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", &branch],
        ));
    }
    if paths.is_empty() {
        return;
    }
    if let Some(root) = git(dir, &["rev-parse", "--show-toplevel"]) {
        let root = Path::new(&root);
        for tree in ["crates", "proto", "Cargo.toml", "Cargo.lock"] {
            paths.push(root.join(tree).display().to_string());
        }
    }
    // A path that does not exist would make cargo run this script on every build.
    for path in paths.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
}
