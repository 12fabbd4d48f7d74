#!/usr/bin/env bash
# The floor of the PostgreSQL backend: what PostgreSQL alone costs on this
# machine for the work `cargo xtask perf --backend postgres` asks of it, with
# no OmniQ code around it, timed by pgbench.
#
#   benches/floor/postgres_floor.sh [N] [--json]     # N tasks, default 10000
#
# Rows (seconds for N tasks):
#   enqueue, one committed INSERT per task, 1 client
#   enqueue, one INSERT of N rows
#   process, k=1: 4 clients, each transaction claims 1 task (FOR UPDATE SKIP
#            LOCKED) and finishes the one it claimed before
#   process, k=4: the same, 4 tasks a transaction
# The tables are the backend's own: the migrations are read from
# crates/omniq-postgres/src/schema.rs, so every index a task row keeps up is
# in the floor too, and each row carries a record of the size OmniQ writes
# for a no-op task (about 430 bytes of JSON).
# The server is OMNIQ_TEST_DATABASE_URL, else postgres://127.0.0.1:5432/test.
set -euo pipefail
JSON=0
ARGS=()
for arg in "$@"; do
    if [ "$arg" = "--json" ]; then JSON=1; else ARGS+=("$arg"); fi
done
N=${ARGS[0]:-10000}
URL=${OMNIQ_TEST_DATABASE_URL:-postgres://127.0.0.1:5432/test}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; psql "$URL" -qc "DROP SCHEMA IF EXISTS omniq_floor CASCADE" >/dev/null 2>&1' EXIT

HERE=$(cd "$(dirname "$0")" && pwd)
# The backend's migrations, in order, for the schema omniq_floor, plus the
# column the floor's workers mark their claims with.
python3 - "$HERE/../../crates/omniq-postgres/src/schema.rs" > "$WORK/schema.sql" <<'PY'
import re, sys
source = open(sys.argv[1]).read()
block = source[source.index("const MIGRATIONS"):]
block = block[:block.index("];")]
for migration in re.findall(r'r#"(.*?)"#', block, re.S):
    print(migration.replace("{s}", "omniq_floor"))
print("ALTER TABLE omniq_floor.tasks ADD COLUMN worker int;")
PY

# Notices (a schema dropped in cascade) are noise; an error stops the script,
# so a migration this floor cannot run fails it.
export PGOPTIONS="-c client_min_messages=warning"
setup() {
    psql "$URL" -q >/dev/null -c "DROP SCHEMA IF EXISTS omniq_floor CASCADE" -c "CREATE SCHEMA omniq_floor"
    psql "$URL" -q -v ON_ERROR_STOP=1 >/dev/null -f "$WORK/schema.sql"
}

# A record as OmniQ stores it for a no-op task, its id and times set per row.
RECORD="'{\"id\":\"' || ID || '\",\"func_path\":\"noop\",\"args\":[1],\"kwargs\":{},\"status\":\"pending\",\"eta\":\"2026-11-30T04:20:00.123456789Z\",\"interval\":null,\"max_retries\":3,\"timeout\":null,\"attempts\":0,\"created_at\":\"2026-11-30T04:20:00.123456789Z\",\"updated_at\":\"2026-11-30T04:20:00.123456789Z\",\"started_at\":null,\"finished_at\":null,\"error\":null,\"result\":null,\"lease\":null,\"series\":null,\"queue\":\"default\",\"priority\":0,\"unique_key\":null}'"

seconds() { # pgbench's output -> elapsed seconds, from its transaction count and tps
    awk '/number of transactions actually processed/ {split($0, a, ": "); split(a[2], b, "/"); n = b[1]}
         /^tps = / {tps = $3} END {printf "%.3f", n / tps}'
}

setup
cat > "$WORK/insert.sql" <<SQL
INSERT INTO omniq_floor.tasks (id, status, queue, priority, eta, record)
SELECT i, 'pending', 'default', 0, 0, (${RECORD//ID/i})::json
FROM (SELECT md5(random()::text || clock_timestamp()::text) AS i) AS n;
SQL
insert_each=$(pgbench "$URL" -n -c 1 -t "$N" -f "$WORK/insert.sql" 2>/dev/null | seconds)

setup
start=$(date +%s.%N)
psql "$URL" -qc "INSERT INTO omniq_floor.tasks (id, status, queue, priority, eta, record)
    SELECT md5(i::text), 'pending', 'default', 0, i, (${RECORD//ID/md5(i::text)})::json FROM generate_series(1, $N) i" >/dev/null
insert_batch=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.3f", b - a}')

process() { # k: tasks per transaction
    local k=$1
    cat > "$WORK/process.sql" <<SQL
BEGIN;
UPDATE omniq_floor.tasks SET status = 'completed' WHERE status = 'running' AND worker = :client_id;
WITH due AS MATERIALIZED (SELECT id FROM omniq_floor.tasks WHERE status = 'pending' AND queue = 'default'
    ORDER BY priority DESC, eta, id LIMIT $k FOR UPDATE SKIP LOCKED)
UPDATE omniq_floor.tasks t SET status = 'running', worker = :client_id FROM due WHERE t.id = due.id;
COMMIT;
SQL
    local per_client=$(( (N / k + 3) / 4 ))
    pgbench "$URL" -n -c 4 -j 2 -t "$per_client" -f "$WORK/process.sql" 2>"$WORK/pgbench.err" >"$WORK/pgbench.out"
    # A floor measured on failed transactions would be no floor.
    if ! grep -q "number of failed transactions: 0 " "$WORK/pgbench.out"; then
        cat "$WORK/pgbench.err" "$WORK/pgbench.out" >&2
        exit 1
    fi
    seconds < "$WORK/pgbench.out"
}
process_1=$(process 1)
psql "$URL" -qc "UPDATE omniq_floor.tasks SET status = 'pending', worker = NULL" >/dev/null
process_4=$(process 4)

if [ "$JSON" = 1 ]; then
    printf '{"n": %s, "steps": {"each": %s, "batch": %s, "process_1": %s, "process_4": %s}}\n' \
        "$N" "$insert_each" "$insert_batch" "$process_1" "$process_4"
    exit 0
fi
printf 'postgres floor, %s tasks\n' "$N"
printf 'enqueue, one transaction each     %s s\n' "$insert_each"
printf 'enqueue, one batch                %s s\n' "$insert_batch"
printf 'process, 1 task a transaction     %s s\n' "$process_1"
printf 'process, 4 tasks a transaction    %s s\n' "$process_4"
