//! The real `omniq` binary against both backends: every subcommand, and bad input.

use assert_cmd::Command;
use omniq::{BackendKind, OmniQ, Settings};

mod common;

use common::{both, store, Store};

#[test]
fn stats_counts_every_status() {
    for s in both() {
        let json: serde_json::Value = serde_json::from_str(&s.run(&["stats", "--json"])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"pending": 1, "running": 0, "completed": 1, "failed": 1, "cancelled": 0})
        );
        let text = s.run(&["stats"]);
        assert!(
            text.contains("oldest due in 59m") || text.contains("oldest due in 1h"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("total") && l.ends_with('3')),
            "{text}"
        );
    }
}

#[test]
fn list_filters_orders_and_prints_json() {
    for s in both() {
        let all: Vec<serde_json::Value> = serde_json::from_str(&s.run(&["list", "--json"])).unwrap();
        let ids: Vec<&str> = all.iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [s.waiting.to_string(), s.failed.to_string(), s.done.to_string()],
            "newest first"
        );
        let oldest: Vec<serde_json::Value> =
            serde_json::from_str(&s.run(&["list", "--json", "--oldest", "--limit", "1"])).unwrap();
        assert_eq!(oldest[0]["id"], s.done.to_string());
        let failed: Vec<serde_json::Value> =
            serde_json::from_str(&s.run(&["list", "--json", "--status", "failed"])).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0]["error"]["message"], "it is broken");
        let table = s.run(&["list"]);
        assert!(table.starts_with("ID"), "{table}");
        assert!(table.contains("completed") && table.contains("broken"), "{table}");
        assert!(!table.contains('\x1b'), "no colour when not on a terminal");
        assert!(s.fail(&["list", "--status", "done"]).contains("not a status"));
    }
}

#[test]
fn show_and_result_read_one_task() {
    for s in both() {
        let done = s.done.to_string();
        let record: serde_json::Value = serde_json::from_str(&s.run(&["show", &done, "--json"])).unwrap();
        assert_eq!(
            (record["func_path"].as_str(), record["result"].as_i64()),
            (Some("add"), Some(5))
        );
        let text = s.run(&["show", &done]);
        assert!(
            text.contains("func_path    add") && text.contains("result       5"),
            "{text}"
        );
        let result: serde_json::Value = serde_json::from_str(&s.run(&["result", &done, "--json"])).unwrap();
        assert_eq!(
            (result["status"].as_str(), result["value"].as_i64()),
            (Some("completed"), Some(5))
        );
        let text = s.run(&["result", &s.failed.to_string()]);
        assert!(text.contains("failed") && text.contains("it is broken"), "{text}");
    }
}

#[test]
fn cancel_retry_and_purge_change_the_store() {
    for s in both() {
        let out = s.run(&["cancel", &s.waiting.to_string()]);
        assert!(out.contains("cancelled 1 task"), "{out}");
        assert!(s
            .fail(&["cancel", &s.done.to_string()])
            .contains("nothing to cancel: the task is completed"));
        assert!(s.run(&["retry", &s.failed.to_string()]).contains("pending again"));
        assert!(s
            .fail(&["retry", &s.done.to_string()])
            .contains("only failed tasks"));
        assert!(s.run(&["retry", "--all-failed"]).contains("retried 0"));
        assert!(s.run(&["purge"]).contains("removed 0"));
        let out = s.run(&["purge", "--older-than", "0s"]);
        assert!(out.contains("removed 2 finished tasks"), "{out}");
        assert!(s
            .fail(&["purge", "--older-than", "soon"])
            .contains("invalid value"));
        let json: serde_json::Value = serde_json::from_str(&s.run(&["stats", "--json"])).unwrap();
        assert_eq!(json["pending"], 1, "the retried task");
    }
}

#[test]
fn migrate_copies_between_backends_and_leaves_the_source() {
    let file = store(BackendKind::File);
    let target = file.base.parent().unwrap().join("copy.db");
    let from = format!("file:{}", file.base.display());
    let to = format!("sqlite:{}", target.display());
    let before = file.run(&["list", "--json"]);
    let out = file.run(&["migrate", "--from", &from, "--to", &to]);
    assert!(out.contains("copied 3, skipped 0"), "{out}");
    assert_eq!(file.run(&["list", "--json"]), before, "the source is unchanged");
    let copied = Command::cargo_bin("omniq")
        .unwrap()
        .args(["--backend", "sqlite", "--db-path"])
        .arg(&target)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(copied.stdout).unwrap(), before);
    assert!(file
        .run(&["migrate", "--from", &from, "--to", &to])
        .contains("copied 0, skipped 3"));
    assert!(file
        .fail(&["migrate", "--from", "redis:x", "--to", &to])
        .contains("unknown backend"));

    // And back, from SQLite to a new file store.
    let back = file.base.parent().unwrap().join("back");
    let out = file.run(&[
        "migrate",
        "--from",
        &to,
        "--to",
        &format!("file:{}", back.display()),
    ]);
    assert!(out.contains("copied 3"), "{out}");
    let listed = Command::cargo_bin("omniq")
        .unwrap()
        .args(["--backend", "file", "--base-dir"])
        .arg(&back)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(listed.stdout).unwrap(), before);
}

#[test]
fn check_reports_and_repairs_a_file_store() {
    let s = store(BackendKind::File);
    assert!(s.run(&["check"]).contains("no problems found"));
    // A stray entry, a missing entry and a corrupt record.
    let waiting = s.waiting.to_string();
    let entry = std::fs::read_dir(s.base.join("pending"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::rename(&entry, s.base.join("failed").join(entry.file_name().unwrap())).unwrap();
    std::fs::write(s.base.join(format!("tasks/task-{}.json", s.done)), b"{ not json").unwrap();
    let report = s.omniq().args(["check", "--json"]).output().unwrap();
    assert!(!report.status.success());
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["healthy"], false);
    let problems = report["problems"].to_string();
    assert!(problems.contains(&waiting), "{problems}");
    assert!(problems.contains(&s.done.to_string()), "{problems}");
    // A check without --repair only reads: the damaged record stays put.
    assert_eq!(report["quarantined"].as_array().unwrap().len(), 0, "{report}");
    assert!(s.base.join(format!("tasks/task-{}.json", s.done)).exists());
    // Repair fixes the entries; the quarantined record stays listed (and the
    // check unhealthy) until a person deals with it.
    let out = s.omniq().args(["check", "--repair"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("repaired"), "{text}");
    let out = s.omniq().args(["check"]).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("problem:"), "{text}");
    assert!(
        text.contains(&format!("quarantined: {}", s.base.join("quarantine").display())),
        "{text}"
    );
    // The record and the file holding why it was moved.
    assert_eq!(std::fs::read_dir(s.base.join("quarantine")).unwrap().count(), 2);
    std::fs::remove_dir_all(s.base.join("quarantine")).unwrap();
    std::fs::create_dir(s.base.join("quarantine")).unwrap();
    assert!(s.run(&["check"]).contains("no problems found"));
    assert!(s.run(&["show", &waiting]).contains("pending"));
}

#[test]
fn check_verifies_a_sqlite_store() {
    let s = store(BackendKind::Sqlite);
    let out = s.run(&["check"]);
    assert!(
        out.contains("integrity_check: ok") && out.contains("schema version"),
        "{out}"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let s = store(BackendKind::File);
    let unknown = "0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1f";
    let err = s.fail(&["show", unknown]);
    assert!(
        err.contains(&format!("no task with id {unknown}")) && err.contains("omniq list"),
        "{err}"
    );
    let err = s.fail(&["show", "../../etc/passwd"]);
    assert!(err.contains("invalid task id"), "{err}");
    let out = Command::cargo_bin("omniq")
        .unwrap()
        .args(["--backend", "redis", "stats"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected file, sqlite or postgres"));

    // A corrupt task file: reading it says so and where it is (a read leaves
    // it in place).
    std::fs::write(
        s.base.join(format!("tasks/task-{}.json", s.done)),
        b"\x00\x01garbage",
    )
    .unwrap();
    let err = s.fail(&["show", &s.done.to_string()]);
    assert!(
        err.contains("corrupt") && err.contains(&s.done.to_string()),
        "{err}"
    );
    assert!(
        s.run(&["list"]).contains("broken"),
        "the other tasks are still listed"
    );

    // A store that does not exist is not created by reading it.
    let missing = s.base.parent().unwrap().join("nothing-here");
    let out = Command::cargo_bin("omniq")
        .unwrap()
        .args(["--base-dir"])
        .arg(&missing)
        .arg("stats")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no file store"));
    assert!(!missing.exists());

    // A file that is not a database.
    let bogus = s.base.parent().unwrap().join("bogus.db");
    std::fs::write(&bogus, b"just some text, not SQLite at all").unwrap();
    let out = Command::cargo_bin("omniq")
        .unwrap()
        .args(["--backend", "sqlite", "--db-path"])
        .arg(&bogus)
        .arg("stats")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a SQLite database"), "{err}");
    assert_eq!(
        std::fs::read(&bogus).unwrap(),
        b"just some text, not SQLite at all"
    );

    // A bad environment variable names itself.
    let out = Command::cargo_bin("omniq")
        .unwrap()
        .env("OMNIQ_DURABILITY", "paranoid")
        .arg("stats")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OMNIQ_DURABILITY") && err.contains("normal, full"),
        "{err}"
    );
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("data");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let settings = Settings::builder()
            .backend(BackendKind::File)
            .base_dir(&base)
            .build()
            .unwrap();
        let queue = OmniQ::open(settings).await.unwrap();
        // More lines than a pipe holds, so the writer meets the closed end.
        let tasks = (0..1500)
            .map(|i| omniq::NewTask::with_payload("add", &(i, i)).unwrap())
            .collect();
        queue.enqueue_many(tasks).await.unwrap();
    });
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("omniq"))
        .env_remove("OMNIQ_BACKEND")
        .args(["--backend", "file", "--base-dir"])
        .arg(&base)
        .args(["list", "--limit", "100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(!first.is_empty());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn warnings_reach_stderr_and_check_lists_the_quarantine() {
    let s = store(BackendKind::File);
    let record = s.base.join(format!("tasks/task-{}.json", s.waiting));
    std::fs::write(&record, b"{ not json").unwrap();
    // A command that writes moves the record aside, and says so on stderr.
    let out = s
        .omniq()
        .args(["cancel", &s.waiting.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unreadable file quarantined"),
        "the warning is shown: {stderr}"
    );
    // Reading it afterwards names where it went.
    let out = s.omniq().args(["show", &s.waiting.to_string()]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("quarantine/"), "{stderr}");
    let out = s.omniq().args(["check"]).output().unwrap();
    assert!(!out.status.success(), "a quarantined record is not healthy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("quarantined: ") && stdout.contains("not a readable task record"),
        "{stdout}"
    );
}

#[test]
fn ages_and_times_past_what_a_store_holds_do_not_panic() {
    for s in both() {
        let text = s.run(&["purge", "--older-than", "20000y"]);
        assert!(text.contains("removed 0"), "{text}");
    }
}

#[test]
fn migrate_names_every_record_it_did_not_copy_and_fails() {
    let file = store(BackendKind::File);
    let record = file.base.join(format!("tasks/task-{}.json", file.failed));
    std::fs::write(&record, b"{ cut short").unwrap();
    let target = file.base.parent().unwrap().join("copy.db");
    let from = format!("file:{}", file.base.display());
    let to = format!("sqlite:{}", target.display());
    let out = file
        .omniq()
        .args(["migrate", "--from", &from, "--to", &to])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("copied 2"), "{stdout}");
    assert!(
        stderr.contains(&format!("not copied: task {}", file.failed)),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&record).unwrap(),
        b"{ cut short",
        "the source is unchanged"
    );
}

#[test]
fn check_reports_a_damaged_sqlite_file_by_name() {
    use std::io::{Seek, SeekFrom, Write};
    let s = store(BackendKind::Sqlite);
    let db = s.base.join("omniq.db");
    // Everything after the header page, so the WAL's copies cannot mask it.
    let size = std::fs::metadata(&db).unwrap().len() as usize;
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.seek(SeekFrom::Start(4096)).unwrap();
    file.write_all(&vec![0xAB; size - 4096]).unwrap();
    drop(file);
    let out = s.omniq().args(["check"]).output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(&db.display().to_string()), "{stdout} {stderr}");
    assert!(
        stdout.contains("integrity_check:") && !stdout.contains("integrity_check: ok"),
        "{stdout}"
    );
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => stack.push(path),
                false => {
                    files.insert(path.clone(), std::fs::read(&path).unwrap());
                }
            }
        }
    }
    files
}

#[test]
fn read_commands_leave_every_byte_of_the_store_unchanged() {
    for s in both() {
        let before = snapshot(&s.base);
        let id = s.done.to_string();
        for args in [
            vec!["stats"],
            vec!["stats", "--json"],
            vec!["list"],
            vec!["list", "--json", "--status", "failed"],
            vec!["show", &id],
            vec!["result", &id],
            vec!["queues"],
            vec!["queues", "--json"],
            vec!["stats", "--queue", "default"],
            vec!["check"],
        ] {
            s.run(&args);
            let after = snapshot(&s.base);
            // SQLite's `-shm` is the shared-memory index of the WAL, which any
            // reader rebuilds; and a reader of a WAL database creates an empty
            // `-wal` where there is none. Neither holds data.
            let changed: Vec<_> = after
                .keys()
                .chain(before.keys())
                .filter(|path| !path.to_string_lossy().ends_with("-shm"))
                .filter(|path| {
                    let new_empty_wal = path.to_string_lossy().ends_with("-wal")
                        && before.get(*path).is_none_or(|b| b.is_empty())
                        && after.get(*path).is_none_or(|a| a.is_empty());
                    !new_empty_wal
                })
                .filter(|path| after.get(*path) != before.get(*path))
                .collect();
            assert!(
                changed.is_empty(),
                "{} {args:?} changed {changed:?}",
                s.backend.as_str()
            );
        }
    }
}

/// Runs `omniq args` with the store's folder mounted read-only over itself, in
/// a mount namespace of its own (`unshare -m`, root only). `None` where that
/// cannot be done here.
fn on_a_read_only_mount(s: &Store, args: &[&str]) -> Option<std::process::Output> {
    let probe = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let base = s.base.display().to_string();
    let bin = assert_cmd::cargo::cargo_bin("omniq");
    let script = "mount --bind -o ro \"$1\" \"$1\" && shift && exec \"$@\"";
    let mut command = std::process::Command::new("unshare");
    command
        .args(["-m", "sh", "-c", script, "sh", &base])
        .arg(bin)
        .args(["--backend", s.backend.as_str(), "--base-dir", &base])
        .args(args)
        .env_remove("OMNIQ_BACKEND")
        .env_remove("OMNIQ_BASE_DIR")
        .env_remove("OMNIQ_DB_PATH");
    Some(command.output().unwrap())
}

#[test]
fn read_commands_work_on_a_read_only_mount() {
    for s in both() {
        let id = s.done.to_string();
        for args in [vec!["stats"], vec!["list"], vec!["show", &id], vec!["check"]] {
            let Some(out) = on_a_read_only_mount(&s, &args) else {
                eprintln!("cannot make a read-only mount here (needs root and unshare): skipped");
                return;
            };
            assert!(
                out.status.success(),
                "{} {args:?} on a read-only mount: {}",
                s.backend.as_str(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
