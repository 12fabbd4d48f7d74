#!/usr/bin/env bash
# The floor of the PostgreSQL backend: what PostgreSQL alone costs on this
# machine for the work `cargo xtask perf --backend postgres` asks of it, with
# no OmniQ code around it, timed by pgbench.
#
#   benches/floor/postgres_floor.sh [N]     # N tasks, default 10000
#
# Rows (seconds for N tasks):
#   enqueue, one committed INSERT per task, 1 client
#   enqueue, one INSERT of N rows
#   process, k=1: 4 clients, each transaction claims 1 task (FOR UPDATE SKIP
#            LOCKED) and finishes the one it claimed before
#   process, k=4: the same, 4 tasks a transaction
# The server is OMNIQ_TEST_DATABASE_URL, else postgres://127.0.0.1:5432/test.
set -euo pipefail
N=${1:-10000}
URL=${OMNIQ_TEST_DATABASE_URL:-postgres://127.0.0.1:5432/test}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; psql "$URL" -qc "DROP SCHEMA IF EXISTS omniq_floor CASCADE" >/dev/null 2>&1' EXIT

setup() {
    psql "$URL" -q >/dev/null <<'SQL'
DROP SCHEMA IF EXISTS omniq_floor CASCADE;
CREATE SCHEMA omniq_floor;
CREATE TABLE omniq_floor.tasks (
    id text COLLATE "C" PRIMARY KEY, status text NOT NULL, queue text NOT NULL,
    priority smallint NOT NULL, eta bigint NOT NULL, worker int, record json NOT NULL);
CREATE INDEX tasks_due ON omniq_floor.tasks (queue, priority DESC, eta, id) WHERE status = 'pending';
SQL
}

seconds() { # pgbench's output -> elapsed seconds, from its transaction count and tps
    awk '/number of transactions actually processed/ {split($0, a, ": "); split(a[2], b, "/"); n = b[1]}
         /^tps = / {tps = $3} END {printf "%.3f", n / tps}'
}

setup
cat > "$WORK/insert.sql" <<'SQL'
INSERT INTO omniq_floor.tasks VALUES (md5(random()::text || clock_timestamp()::text), 'pending', 'default', 0, 0, NULL, '{"args":[1],"kwargs":{}}');
SQL
insert_each=$(pgbench "$URL" -n -c 1 -t "$N" -f "$WORK/insert.sql" 2>/dev/null | seconds)

setup
start=$(date +%s.%N)
psql "$URL" -qc "INSERT INTO omniq_floor.tasks SELECT md5(i::text), 'pending', 'default', 0, i, NULL, '{\"args\":[1],\"kwargs\":{}}' FROM generate_series(1, $N) i" >/dev/null
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
    pgbench "$URL" -n -c 4 -j 2 -t "$per_client" -f "$WORK/process.sql" 2>/dev/null | seconds
}
process_1=$(process 1)
psql "$URL" -qc "UPDATE omniq_floor.tasks SET status = 'pending', worker = NULL" >/dev/null
process_4=$(process 4)

printf 'postgres floor, %s tasks\n' "$N"
printf 'enqueue, one transaction each     %s s\n' "$insert_each"
printf 'enqueue, one batch                %s s\n' "$insert_batch"
printf 'process, 1 task a transaction     %s s\n' "$process_1"
printf 'process, 4 tasks a transaction    %s s\n' "$process_4"
