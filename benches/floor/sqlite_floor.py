"""What SQLite itself costs for OmniQ's writes on this machine, with no Rust and no
driver thread in between: Python's sqlite3 module runs the statements in the
calling thread, one C call each.

It builds the schema from crates/omniq-sqlite/src/schema.rs and runs the claim
and finish commands of crates/omniq-sqlite/src/writer/ops.rs word for word, with the
pragmas the backend sets for Durability::Normal (WAL, synchronous=NORMAL), in a
fresh database under target/omniq-bench. Ids are sequential, as UUID v7 ids are.

    python3 benches/floor/sqlite_floor.py [N] [--json]

prints, for N tasks (default 10,000): the cost of an empty transaction, of one
enqueue transaction, of a
batch enqueue, and of processing when each transaction finishes the previous k
tasks and claims the next k (a worker pool of concurrency 4 makes groups of
about 2), all due at one priority and, for k = 4, spread over five priority
levels, which the claim walks one at a time. `--json` prints one object,
`{"sqlite", "n", "steps": {key: seconds}}`, for `cargo xtask perf --floor`.
"""

import json
import os
import re
import sqlite3
import sys
import tempfile
import time
import uuid

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SRC = os.path.join(ROOT, "crates", "omniq-sqlite", "src")
SCRATCH = os.path.join(ROOT, "target", "omniq-bench")


def rust_const(text, name):
    """The value of a `const NAME: &str = "...";` with its line continuations joined."""
    match = re.search(r"const " + name + r': &str =\s*"(.*?)";', text, re.S)
    return re.sub(r"\\\n\s*", "", match.group(1))


def rust_concat(text, name):
    """The value of a `const NAME: &str = concat!("...", macro!());`: its string
    literals and the literal of each `macro_rules!` it calls, joined."""
    body = re.search(r"const " + name + r": &str = concat!\((.*?)\n\);", text, re.S).group(1)
    parts = []
    for literal, macro in re.findall(r'"((?:[^"\\]|\\.)*)"|(\w+)!\(\)', body, re.S):
        if macro:
            rule = re.search(r"macro_rules! " + macro + r' \{\s*\(\) => \{\s*"(.*?)"\s*\};', text, re.S)
            literal = rule.group(1)
        parts.append(re.sub(r"\\\n\s*", "", literal))
    return "".join(parts)


def source(name):
    with open(os.path.join(SRC, name)) as f:
        return f.read()


SCHEMA = re.findall(r'r#"(.*?)"#', source("schema.rs"), re.S)
TASK_JSON = rust_const(source("rows.rs"), "TASK_JSON")
OPS = source("writer/ops.rs")
CLAIM = (rust_concat(OPS, "CLAIM")
         .replace("IN_WINDOW", rust_const(OPS, "IN_WINDOW"))
         .replace("TASK_JSON", TASK_JSON))
FINISH = rust_const(OPS, "FINISH_COMPLETED")
QUEUE = "default"
# Where the lease token sits in a claimed row: TASK_JSON's `rn.token`.
TOKEN = [c.strip() for c in re.search(r"json_array\((.*)\)", TASK_JSON, re.S).group(1).split(",")].index("rn.token")


def statements(command):
    """A command's statements, with `?N` turned into named parameters."""
    return [re.sub(r"\?(\d+)", r":p\1", s.strip()) for s in command.split(";") if s.strip()]


def bind(statement, values):
    """The values a statement names; a parameter it names that is not given is an
    error here, so a statement that gained a parameter fails loudly."""
    wanted = set(re.findall(r":p(\d+)\b", statement))
    missing = [p for p in wanted if int(p) > len(values)]
    if missing:
        raise SystemExit(f"the statement takes :p{', :p'.join(sorted(missing))}, which this script does not bind")
    return {f"p{i + 1}": v for i, v in enumerate(values) if str(i + 1) in wanted}


class Store:
    def __init__(self, folder):
        self.db = sqlite3.connect(os.path.join(folder, "omniq.db"), isolation_level=None)
        for pragma in ["journal_mode = WAL", "synchronous = NORMAL", "temp_store = MEMORY"]:
            self.db.execute("PRAGMA " + pragma)
        for migration in SCHEMA:
            self.db.executescript(migration)
        self.db.execute("CREATE TEMP TABLE claimed (n INTEGER PRIMARY KEY, id TEXT NOT NULL)")
        self.db.execute("CREATE TEMP TABLE done (id TEXT PRIMARY KEY NOT NULL, value TEXT) WITHOUT ROWID")
        self.next_id = 0

    def task_id(self):
        self.next_id += 1
        return "%012x-7000-8000-%012x" % (int(time.time() * 1000), self.next_id)

    def insert(self, i, levels=1):
        # Named columns only: the columns later migrations added keep their
        # defaults (queue `default`, priority 0, no key), as an enqueue of a
        # plain task writes them.
        task_id = self.task_id()
        self.db.execute(
            "INSERT INTO tasks (id, func_path, args, kwargs, status, eta, max_retries, attempts, "
            "created_at, updated_at, queue, priority) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (task_id, "noop", "[%d]" % i, "{}", "pending", i, 3, 0, i, i, QUEUE, i % levels),
        )
        self.db.execute("INSERT INTO pending (id, eta, queue, priority) VALUES (?,?,?,?)",
                        (task_id, i, QUEUE, i % levels))

    def empty(self, n):
        for _ in range(n):
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("COMMIT")

    def enqueue_each(self, n):
        for i in range(n):
            self.db.execute("BEGIN IMMEDIATE")
            self.insert(i)
            self.db.execute("COMMIT")

    def enqueue_batch(self, n, levels=1):
        self.db.execute("BEGIN IMMEDIATE")
        for i in range(n):
            self.insert(i, levels)
        self.db.execute("COMMIT")

    def process(self, k):
        """Claims k tasks per transaction, finishing the k claimed before in the same
        transaction, until none is left; returns the number of transactions."""
        claim, finish = statements(CLAIM), statements(FINISH)
        now, held, transactions = 10**15, [], 0
        while True:
            self.db.execute("BEGIN IMMEDIATE")
            transactions += 1
            if held:
                rows = json.dumps([[task_id, token, "null"] for task_id, token in held])
                for s in finish:
                    self.db.execute(s, bind(s, [rows, now])).fetchall()
            tokens = json.dumps([str(uuid.uuid4()) for _ in range(k)])
            for s in claim:
                out = self.db.execute(s, bind(s, [now, k, "floor", now + 60 * 10**9, tokens, QUEUE])).fetchall()
            self.db.execute("COMMIT")
            held = [(row[0], row[TOKEN]) for row in json.loads(out[0][0])]
            if not held:
                return transactions


def timed(f):
    start = time.perf_counter()
    result = f()
    return time.perf_counter() - start, result


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    as_json = "--json" in sys.argv[1:]
    n = int(args[0]) if args else 10_000
    os.makedirs(SCRATCH, exist_ok=True)
    rows = []  # (key, step, seconds, µs per transaction)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as folder:
        took, _ = timed(lambda: Store(folder).empty(n))
        rows.append(("empty", f"empty transaction, {n} times", took, took / n * 1e6))
    with tempfile.TemporaryDirectory(dir=SCRATCH) as folder:
        took, _ = timed(lambda: Store(folder).enqueue_each(n))
        rows.append(("each", "enqueue, one transaction per task", took, took / n * 1e6))
    with tempfile.TemporaryDirectory(dir=SCRATCH) as folder:
        took, _ = timed(lambda: Store(folder).enqueue_batch(n))
        rows.append(("batch", "enqueue, one transaction", took, took * 1e6))
    # k claimed and k finished per transaction, all due at one priority; then
    # k = 4 over five priority levels, where the claim walks level by level.
    for k, levels in [(1, 1), (2, 1), (4, 1), (16, 1), (64, 1), (4, 5)]:
        with tempfile.TemporaryDirectory(dir=SCRATCH) as folder:
            store = Store(folder)
            store.enqueue_batch(n, levels)
            took, transactions = timed(lambda: store.process(k))
            done = store.db.execute("SELECT count(*) FROM completed").fetchone()[0]
            assert done == n, f"{done} of {n} tasks completed"
            where = "one priority" if levels == 1 else f"{levels} priority levels"
            key = f"process_{k}" if levels == 1 else f"process_{k}_levels_{levels}"
            rows.append((key, f"process, {k} claimed and {k} finished per transaction, {where}",
                         took, took / transactions * 1e6))
    if as_json:
        print(json.dumps({"sqlite": sqlite3.sqlite_version, "n": n,
                          "steps": {key: seconds for key, _, seconds, _ in rows}}))
        return
    print(f"SQLite {sqlite3.sqlite_version} in the calling thread, {n} tasks, under {SCRATCH}")
    print("| Step | Seconds | Per transaction (µs) |")
    print("|------|--------:|---------------------:|")
    for _, step, seconds, per in rows:
        print(f"| {step} | {seconds:.3f} | {per:.1f} |")


if __name__ == "__main__":
    main()
