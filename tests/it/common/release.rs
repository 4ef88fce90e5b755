//! The previous release (`tests/PREVIOUS_RELEASE`), built from its commit
//! once into `target/previous/<commit>/` and reused, so the upgrade tests
//! run it beside this build on one database.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The commit `tests/PREVIOUS_RELEASE` names.
pub fn previous_commit() -> String {
    let named = include_str!("../../PREVIOUS_RELEASE");
    named
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("tests/PREVIOUS_RELEASE names a commit")
        .to_owned()
}

/// The previous release's binary; the first call builds it (a few minutes
/// on a fresh machine), later calls and later runs find it built.
pub fn previous_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_previous).clone()
}

fn build_previous() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commit = previous_commit();
    let out = root.join("target/previous").join(&commit);
    let binary = out.join("target/debug/accelerate-relay");
    std::fs::create_dir_all(&out).expect("target/previous");
    // Another test process may be building it: one builds, the other waits.
    let lock = std::fs::File::create(out.join("build.lock")).expect("build lock");
    lock.lock().expect("lock the previous release's build");
    let src = out.join("src");
    if !src.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).expect("source folder");
        let mut archive = Command::new("git")
            .args([
                "-C",
                &root.display().to_string(),
                "archive",
                "--format=tar",
                &commit,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("git must be installed to build the previous release");
        let unpacked = Command::new("tar")
            .args(["-x", "-C", &src.display().to_string()])
            .stdin(archive.stdout.take().expect("piped"))
            .status()
            .expect("tar");
        let archived = archive.wait().expect("git archive");
        assert!(
            archived.success() && unpacked.success(),
            "could not check out the previous release {commit} (tests/PREVIOUS_RELEASE); \
             the upgrade tests need the repository's history (not a shallow clone)"
        );
    }
    // Built in its own target folder: sharing this build's would replace
    // target/debug/accelerate-relay.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "-p",
            "accelerate-relay",
            "--bin",
            "accelerate-relay",
        ])
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(out.join("target"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("run cargo");
    assert!(
        built.success(),
        "could not build the previous release {commit}"
    );
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}
