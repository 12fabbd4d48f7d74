"""What the file system itself costs for the file backend's layout on this
machine: the fewest file operations the layout of SPEC asks of a task, with no
lock, no intent journal, no fsync and no JSON beyond one small record.

Per task: enqueue writes the record (temporary file + rename) and creates its
pending entry; a claim writes the lease into the entry and renames it into
running/; a finish rewrites the record (temporary file + rename) and renames the
entry into completed/. One thread, in a fresh folder under target/omniq-bench.

    python3 benches/floor/file_floor.py [N] [--json]

`--json` prints `{"n", "steps": {"enqueue", "process", "total"}}` in seconds,
for `cargo xtask perf --floor`.

Run it several times: ext4 slows down creating files where many were just
deleted, so the same command varies by several times from run to run.
"""

import json
import os
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SCRATCH = os.path.join(ROOT, "target", "omniq-bench")


def write_atomic(folder, path, data):
    temporary = os.path.join(folder, "tmp", os.path.basename(path) + ".tmp")
    with open(temporary, "w") as f:
        f.write(data)
    os.rename(temporary, path)


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    n = int(args[0]) if args else 10_000
    os.makedirs(SCRATCH, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as base:
        for sub in ["tasks", "pending", "running", "completed", "tmp"]:
            os.mkdir(os.path.join(base, sub))
        ids = ["%012x-7000-8000-%012x" % (int(time.time() * 1000), i) for i in range(n)]
        record = json.dumps({"id": ids[0], "func_path": "noop", "args": [0], "kwargs": {},
                             "status": "pending", "attempts": 0, "max_retries": 3}, indent=2)
        lease = json.dumps({"worker_id": "floor", "token": ids[0], "expires_at": "2026-01-01T00:00:00Z"})

        start = time.perf_counter()
        for task_id in ids:
            write_atomic(base, os.path.join(base, "tasks", f"task-{task_id}.json"), record)
            open(os.path.join(base, "pending", task_id), "w").close()
        enqueue = time.perf_counter() - start

        start = time.perf_counter()
        for task_id in ids:
            entry = os.path.join(base, "pending", task_id)
            with open(entry, "w") as f:
                f.write(lease)
            os.rename(entry, os.path.join(base, "running", task_id))
            write_atomic(base, os.path.join(base, "tasks", f"task-{task_id}.json"), record)
            os.rename(os.path.join(base, "running", task_id), os.path.join(base, "completed", task_id))
        process = time.perf_counter() - start
    if "--json" in sys.argv[1:]:
        print(json.dumps({"n": n, "steps": {"enqueue": enqueue, "process": process,
                                            "total": enqueue + process}}))
        return
    print(f"file floor, {n} tasks under {SCRATCH}: enqueue {enqueue:.3f} s, process {process:.3f} s, "
          f"total {enqueue + process:.3f} s")


if __name__ == "__main__":
    main()
