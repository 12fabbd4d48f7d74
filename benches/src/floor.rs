//! The floor scripts of `benches/floor/`, run from Rust, and the ratio of each
//! OmniQ row to the floor step it is measured against, for
//! `cargo xtask perf --floor`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// What one floor script measured: seconds per step, by the keys the script
/// prints with `--json`.
#[derive(Debug, Default)]
pub struct Floor {
    /// Seconds per step.
    pub steps: BTreeMap<String, f64>,
}

/// What OmniQ measured on one backend for the same number of tasks.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Enqueue, one call per task (s).
    pub enqueue_each: f64,
    /// Enqueue, one batch call (s).
    pub enqueue_batch: f64,
    /// Processing every task with a pool after the one-call-each enqueue (s).
    pub process: f64,
    /// Tasks per claim call the pool reached (claimed / claims).
    pub grouping: f64,
}

/// One line of the ratio table.
#[derive(Debug, PartialEq)]
pub struct Ratio {
    /// The OmniQ row.
    pub row: String,
    /// OmniQ's seconds.
    pub omniq: f64,
    /// The floor step it is compared with.
    pub step: String,
    /// The floor's seconds.
    pub floor: f64,
}

impl Ratio {
    /// OmniQ's time over the floor's.
    pub fn ratio(&self) -> f64 {
        self.omniq / self.floor
    }
}

fn floor_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("floor")
}

/// Runs the floor script of `backend` for `n` tasks and reads its steps.
pub fn run(backend: &str, n: usize) -> Result<Floor, String> {
    let dir = floor_dir();
    let mut command = match backend {
        "sqlite" => {
            let mut c = Command::new("python3");
            c.arg(dir.join("sqlite_floor.py"));
            c
        }
        "file" => {
            let mut c = Command::new("python3");
            c.arg(dir.join("file_floor.py"));
            c
        }
        "postgres" => {
            let mut c = Command::new("bash");
            c.arg(dir.join("postgres_floor.sh"));
            c
        }
        other => return Err(format!("no floor script for the {other} backend")),
    };
    let output = command
        .arg(n.to_string())
        .arg("--json")
        .output()
        .map_err(|e| format!("cannot run the {backend} floor script: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the {backend} floor script failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// Reads a floor script's `--json` line.
pub fn parse(stdout: &str) -> Result<Floor, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("no JSON line in the floor script's output: {stdout:?}"))?;
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("the floor script printed {line:?}: {e}"))?;
    let steps = value
        .get("steps")
        .and_then(|s| s.as_object())
        .ok_or_else(|| format!("no steps in {line:?}"))?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect();
    Ok(Floor { steps })
}

/// The `process_k` step measured with the number of tasks per transaction
/// closest to `grouping` (on a log scale: 3 is nearer 4 than 2).
pub fn nearest_process_step(floor: &Floor, grouping: f64) -> Option<(usize, f64)> {
    floor
        .steps
        .iter()
        .filter_map(|(key, seconds)| Some((key.strip_prefix("process_")?.parse::<usize>().ok()?, *seconds)))
        .min_by(|(a, _), (b, _)| {
            let distance = |k: usize| ((k as f64).ln() - grouping.max(1.0).ln()).abs();
            distance(*a).total_cmp(&distance(*b))
        })
}

/// The ratios of `backend`'s rows to their floor steps.
pub fn ratios(backend: &str, measured: &Measured, floor: &Floor) -> Vec<Ratio> {
    let step = |key: &str| floor.steps.get(key).copied();
    let mut rows = Vec::new();
    let mut push = |row: &str, omniq: f64, step: &str, floor: Option<f64>| {
        if let Some(floor) = floor {
            rows.push(Ratio {
                row: format!("{backend}: {row}"),
                omniq,
                step: step.to_owned(),
                floor,
            });
        }
    };
    match backend {
        "file" => {
            push(
                "enqueue, one call each",
                measured.enqueue_each,
                "enqueue",
                step("enqueue"),
            );
            push("process", measured.process, "process", step("process"));
            push(
                "total (enqueue one call each, then process)",
                measured.enqueue_each + measured.process,
                "total",
                step("total"),
            );
            push(
                "enqueue, one batch",
                measured.enqueue_batch,
                "enqueue",
                step("enqueue"),
            );
        }
        _ => {
            push(
                "enqueue, one call each",
                measured.enqueue_each,
                "one transaction per task",
                step("each"),
            );
            push(
                "enqueue, one batch",
                measured.enqueue_batch,
                "one transaction",
                step("batch"),
            );
            if let Some((k, seconds)) = nearest_process_step(floor, measured.grouping) {
                let what = format!("process ({:.1} tasks per claim)", measured.grouping);
                push(
                    &what,
                    measured.process,
                    &format!("{k} claimed + {k} finished per transaction"),
                    Some(seconds),
                );
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floor(steps: &[(&str, f64)]) -> Floor {
        Floor {
            steps: steps.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn reads_the_scripts_json_line() {
        let out = "notice\n{\"n\": 10, \"steps\": {\"each\": 0.5, \"process_4\": 0.25}}\n";
        let f = parse(out).unwrap();
        assert_eq!(f.steps["each"], 0.5);
        assert_eq!(f.steps["process_4"], 0.25);
        assert!(parse("no json").is_err());
    }

    #[test]
    fn the_process_step_nearest_the_grouping_is_chosen() {
        let f = floor(&[
            ("process_1", 3.0),
            ("process_2", 2.0),
            ("process_4", 1.0),
            ("process_4_levels_5", 9.0),
        ]);
        assert_eq!(nearest_process_step(&f, 3.2), Some((4, 1.0)));
        assert_eq!(nearest_process_step(&f, 1.3), Some((1, 3.0)));
        assert_eq!(nearest_process_step(&f, 0.0), Some((1, 3.0)));
    }

    #[test]
    fn each_row_is_divided_by_its_step() {
        let f = floor(&[("each", 1.0), ("batch", 0.5), ("process_2", 2.0)]);
        let m = Measured {
            enqueue_each: 2.0,
            enqueue_batch: 0.75,
            process: 3.0,
            grouping: 2.0,
        };
        let rows = ratios("sqlite", &m, &f);
        let got: Vec<f64> = rows.iter().map(Ratio::ratio).collect();
        assert_eq!(got, vec![2.0, 1.5, 1.5]);
        assert!(rows[2].step.starts_with("2 claimed"));
    }
}
