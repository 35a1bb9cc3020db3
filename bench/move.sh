#!/usr/bin/env bash
# bench/move.sh: a tenant move (issue 19, item 6), within one cluster
# (wal_level = logical), databases bench_src -> bench_dst.
#
# Table orders: 4 tenants x ROWS rows; tenant k = tenant 1 moves.
#  1. copy: rows/s of move_start() + move_wait() (publication, slot,
#     schema, subscription, initial copy, catch-up) against
#     COPY (SELECT * FROM orders WHERE tenant_id = k) TO STDOUT of the same
#     rows (to /dev/null), twice (A/A: the noise); minimum of ROUNDS rounds.
#  2. the other tenants' write latency p99 at the source (pgbench -M
#     prepared, 2 clients, one INSERT per transaction for tenants 2-4)
#     during a whole move (start, wait, cut-over) against the same workload
#     without a move, beside a same-run busy-core floor (SELECT 1 p99);
#     arms alternate, ROUNDS rounds each.
#  3. the time tenant k is refused during the cut-over, from its suspension
#     to its new home recorded (tenancy.moves.refused_for; target <= 1 s).
# After each move it is reset: home forgotten, fence dropped, tenant
# active, target tables dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

ROWS=${MOVE_BENCH_ROWS:-100000}
ROUNDS=${MOVE_BENCH_ROUNDS:-3}
DURATION=${MOVE_BENCH_DURATION:-6}
PORT=${MOVE_BENCH_PORT:-$(tn_free_port 55900)}

tn_build_install
DIR=$(tn_workdir bench-move)
trap 'tn_cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
tn_cluster_start "$DIR" "$PORT" "shared_preload_libraries = 'tenancy'" "jit = off" "wal_level = logical" \
    "max_replication_slots = 10" "max_wal_senders = 10" "max_worker_processes = 16" "tenancy.worker_enabled = off"
export PGHOST=$DIR PGPORT=$PORT
q() { tn_run psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
K=11111111-1111-4111-8111-111111111111
TARGET="host=$DIR port=$PORT dbname=bench_dst"

echo "move bench: $ROWS rows per tenant, 4 tenants, $ROUNDS rounds; other tenants' writes ${DURATION}s per arm, pgbench -M prepared -c 2"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (the machine is shared with other helpers' builds and tests)"
q -d postgres -c "CREATE DATABASE bench_src" -c "CREATE DATABASE bench_dst"
q -d bench_src >/dev/null <<SQL
CREATE EXTENSION tenancy;
CREATE EXTENSION dblink;
SELECT tenancy.create_tenant('t' || i, 'T' || i, '1111111' || i || '-1111-4111-8111-111111111111') FROM generate_series(1, 4) i;
CREATE TABLE orders (id bigserial, tenant_id uuid NOT NULL, amount numeric NOT NULL, note text,
                     created timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, id));
INSERT INTO orders (tenant_id, amount, note)
SELECT ('1111111' || (1 + g % 4) || '-1111-4111-8111-111111111111')::uuid, g % 1000, md5(g::text)
FROM generate_series(1, 4 * $ROWS) g;
SELECT tenancy.tables_register('orders', 'tenant_id');
VACUUM ANALYZE orders;
SQL
cat >"$DIR/write.sql" <<'SQL'
\set t random(2, 4)
INSERT INTO orders (tenant_id, amount, note) VALUES (('1111111' || :t || '-1111-4111-8111-111111111111')::uuid, 1, 'w');
SQL
echo 'SELECT 1;' >"$DIR/floor.sql"

reset_move() {
    q -d bench_src -c "SELECT tenancy.move_rollback('t1')" >/dev/null 2>&1 || true
    q -d bench_src >/dev/null <<SQL
SET client_min_messages = warning;
DELETE FROM tenancy.tenant_homes;
SELECT tenancy.activate_tenant('t1');
SELECT undo_sql FROM tenancy.move_fence_sql('t1') \gexec
SQL
    q -d bench_dst -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS orders" -c "DROP EXTENSION IF EXISTS tenancy CASCADE"
}
now_ms() { date +%s%3N; }
p99() {   # p99 latency (ms) of pgbench per-transaction logs $1*
    cat "$1".[0-9]* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", a[i]/1000}'
    rm -f "$1".[0-9]*
}
bench_p99() {   # bench_p99 SCRIPT PREFIX
    (cd "$DIR" && tn_run pgbench -n -M prepared -c 2 -T "$DURATION" -f "$1" -l --log-prefix="$2" bench_src >"$DIR/$2.pgbench" 2>&1) \
        || { echo "pgbench failed:" >&2; cat "$DIR/$2.pgbench" >&2; exit 1; }
    p99 "$DIR/$2"
}

copy_best= move_best= copy2_best= wait_best=
base_p99=() move_p99=() floor_p99=() refused=()
for r in $(seq "$ROUNDS"); do
    # 1. copy rates.
    t0=$(now_ms); q -d bench_src -c "COPY (SELECT * FROM orders WHERE tenant_id = '$K') TO STDOUT" >/dev/null; t1=$(now_ms)
    c=$((t1 - t0))
    t0=$(now_ms)
    q -d bench_src -c "CALL tenancy.move_start('t1', 'bench-dst', '$TARGET')" >/dev/null
    tm=$(now_ms)
    q -d bench_src -c "SELECT count(*) FROM tenancy.move_wait('t1', '600s')" >/dev/null
    t1=$(now_ms); m=$((t1 - t0)); w=$((t1 - tm))
    t0=$(now_ms); q -d bench_src -c "COPY (SELECT * FROM orders WHERE tenant_id = '$K') TO STDOUT" >/dev/null; t1=$(now_ms)
    c2=$((t1 - t0))
    reset_move
    [ -z "$copy_best" ] || [ "$c" -lt "$copy_best" ] && copy_best=$c
    [ -z "$copy2_best" ] || [ "$c2" -lt "$copy2_best" ] && copy2_best=$c2
    [ -z "$move_best" ] || [ "$m" -lt "$move_best" ] && move_best=$m
    [ -z "$wait_best" ] || [ "$w" -lt "$wait_best" ] && wait_best=$w
    echo "round $r: COPY ${c} ms, COPY again ${c2} ms, move start + initial copy ${m} ms (of which move_wait ${w} ms)"

    # 2. p99 of the other tenants' writes: without a move, with one, the floor.
    base_p99+=("$(bench_p99 write.sql base)")
    floor_p99+=("$(bench_p99 floor.sql floor)")
    (q -d bench_src -c "CALL tenancy.move_start('t1', 'bench-dst', '$TARGET')" \
        -c "SELECT count(*) FROM tenancy.move_wait('t1', '600s')" \
        -c "SET client_min_messages = debug1" -c "CALL tenancy.move_cutover('t1')" >"$DIR/move.out" 2>&1) &
    mv_pid=$!
    move_p99+=("$(bench_p99 write.sql during)")
    wait $mv_pid || { cat "$DIR/move.out"; exit 1; }
    # 3. the refused window of that cut-over.
    refused+=("$(q -d bench_src -c "SELECT round(extract(epoch FROM refused_for) * 1000) FROM tenancy.moves WHERE state = 'cut_over' ORDER BY id DESC LIMIT 1")")
    # Where it went: the cut-over's DEBUG timings, ms since the previous step.
    steps=$(sed -n 's/^.*move_cutover: \(.*\) at [0-9-]* \([0-9:.]*\).*$/\1|\2/p' "$DIR/move.out" |
        awk -F'|' '{split($2, t, ":"); ms = (t[1] * 3600 + t[2] * 60 + t[3]) * 1000
                    if (NR > 1) printf "%s%s %.0f", (NR > 2 ? ", " : ""), $1, ms - prev; prev = ms}')
    reset_move
    echo "round $r: cut-over steps (ms): $steps"
    echo "round $r: write p99 without a move ${base_p99[-1]} ms, during a move ${move_p99[-1]} ms, floor (SELECT 1) ${floor_p99[-1]} ms; refused ${refused[-1]} ms"
done
min() { printf '%s\n' "$@" | sort -n | head -1; }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "--- summary (minimum of $ROUNDS rounds; p99 medians)"
awk -v rows="$ROWS" -v c="$copy_best" -v c2="$copy2_best" -v m="$move_best" -v w="$wait_best" 'BEGIN {
    printf "COPY ... TO STDOUT: %.0f rows/s; again (A/A): %.0f rows/s, ratio %.2f\n", rows / (c / 1000), rows / (c2 / 1000), c / c2
    printf "move start + initial copy + catch-up: %.0f rows/s, %.2f x the COPY rate\n", rows / (m / 1000), c / m
    printf "move_wait() alone (copy after start returned): %.0f rows/s, %.2f x the COPY rate\n", rows / (w / 1000), c / w }'
echo "other tenants' write p99: $(med "${base_p99[@]}") ms without a move, $(med "${move_p99[@]}") ms during one (ratio $(awk -v a="$(med "${move_p99[@]}")" -v b="$(med "${base_p99[@]}")" 'BEGIN {printf "%.2f", a / b}')); busy-core floor SELECT 1 p99 $(med "${floor_p99[@]}") ms"
echo "tenant refused from suspension to home recorded: $(min "${refused[@]}") ms min, $(med "${refused[@]}") ms median (target <= 1000)"
