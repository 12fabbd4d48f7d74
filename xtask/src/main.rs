//! `cargo xtask`: project tasks that need more than one cargo command.
//!
//! - `cargo xtask conformance [FILTER...]` runs the shared conformance suite of
//!   `omniq-core` against every backend of the workspace and prints one line per
//!   backend: `<backend>: N passed, M failed`.
//! - `cargo xtask perf [--json] [--backend B] [--concurrency N]` runs the performance workload
//!   (`benches/src/bin/perf.rs`) in release mode and prints its table or JSON.
//! - `cargo xtask perf --floor [--tasks N] [--backend B]` runs OmniQ's rows
//!   and the floor scripts of `benches/floor/` in one run and prints the ratio
//!   of each row to its floor step.
//! - `cargo xtask chaos [--backend B] [--tasks N] [--seconds S]` runs the crash
//!   test (`benches/src/bin/chaos.rs`): worker processes killed with SIGKILL,
//!   then the store checked; last line per backend
//!   `<backend>: tasks=N completed=N lost=0 stuck=0 corrupt=0`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Every backend and the crate whose `conformance` test target runs the suite on it.
const BACKENDS: &[(&str, &str)] = &[
    ("memory", "omniq-core"),
    ("file", "omniq-file"),
    ("sqlite", "omniq-sqlite"),
    ("postgres", "omniq-postgres"),
];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("conformance") => conformance(args.collect()),
        Some("perf") => release_bin("perf", args.collect()),
        Some("chaos") => release_bin("chaos", args.collect()),
        _ => {
            eprintln!(
                "usage: cargo xtask conformance [TEST FILTER...]\n       \
                 cargo xtask perf [--json] [--backend file|sqlite|postgres] [--concurrency N]\n       \
                 cargo xtask perf --floor [--tasks N] [--backend file|sqlite|postgres]\n       \
                 cargo xtask chaos [--backend file|sqlite|postgres] [--tasks N] [--seconds S]"
            );
            ExitCode::from(2)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn conformance(test_args: Vec<String>) -> ExitCode {
    let root = workspace_root();
    let mut summaries = Vec::new();
    let mut ok = true;
    for (backend, krate) in BACKENDS {
        if !root.join("crates").join(krate).exists() {
            continue;
        }
        eprintln!("running the conformance suite on the {backend} backend ({krate})");
        let output = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "test",
                "--quiet",
                "--package",
                krate,
                "--test",
                "conformance",
                "--",
            ])
            .args(&test_args)
            .output()
            .expect("cannot run cargo");
        let stdout = String::from_utf8_lossy(&output.stdout);
        match parse_summary(&stdout) {
            Some((passed, failed)) => {
                if failed > 0 || !output.status.success() {
                    ok = false;
                    print!("{stdout}");
                    eprint!("{}", String::from_utf8_lossy(&output.stderr));
                }
                summaries.push(format!("{backend}: {passed} passed, {failed} failed"));
            }
            // A suite that needs a server skips, saying so, where none
            // answers (and fails instead where the server is required).
            None if output.status.success() => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let why = stderr
                    .lines()
                    .find(|l| l.contains("skipping"))
                    .unwrap_or("skipped");
                summaries.push(format!("{backend}: skipped ({})", why.trim()));
            }
            None => {
                ok = false;
                print!("{stdout}");
                eprint!("{}", String::from_utf8_lossy(&output.stderr));
                summaries.push(format!("{backend}: 0 passed, 1 failed (the suite did not run)"));
            }
        }
    }
    for line in &summaries {
        println!("{line}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one of the `omniq-benches` binaries in release mode.
fn release_bin(bin: &str, args: Vec<String>) -> ExitCode {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "omniq-benches",
            "--bin",
            bin,
            "--",
        ])
        .args(&args)
        .status()
        .expect("cannot run cargo");
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Reads libtest's closing line: `test result: ok. 43 passed; 0 failed; ...`.
fn parse_summary(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with("test result:"))?;
    let count = |word: &str| -> Option<u64> {
        line.split(';')
            .find(|part| part.trim_end().ends_with(word))?
            .split_whitespace()
            .rev()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((count("passed")?, count("failed")?))
}

#[cfg(test)]
mod tests {
    use super::parse_summary;

    #[test]
    fn reads_libtest_summaries() {
        let out = "running 3 tests\n...\ntest result: FAILED. 41 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.09s\n";
        assert_eq!(parse_summary(out), Some((41, 2)));
        assert_eq!(parse_summary("no summary"), None);
    }
}
