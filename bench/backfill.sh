#!/usr/bin/env bash
# bench/backfill.sh: filling a new tenant column on a ROWS-row table with
# two secondary indexes, three ways, in one run on one throwaway cluster:
#   1. a single UPDATE ... WHERE tenant_id IS NULL (the baseline),
#      (then, for reference, BUSY_S=30 seconds of a shell loop keeping one
#      core busy, no SQL: what any CPU-bound job costs the workload here),
#   2. CALL tenancy.backfill(...),
#   3. the usual loop: UPDATE ... WHERE id IN (SELECT id ... IS NULL LIMIT n), COMMIT, repeat.
# Each runs on a fresh copy of the same table, after a CHECKPOINT and a
# sync, while a rate-limited pgbench read/write workload (select, update,
# insert) runs on the same table; the same workload with no backfill, on the
# same copy just before, is that method's latency baseline.  The single
# UPDATE runs again at the end, to show how much the (shared) machine
# drifted during the run.
# Prints rows/s and ratios to the single UPDATE, batch durations (p50, p99,
# max), WAL bytes per row, the size of the table's indexes afterwards, the
# workload's p99 latency and its ratio to the baseline, and
# tenancy.backfill's rows/s at ROWS vs ROWS/10.  tenancy.backfill runs twice:
# by default, and with compact_indexes => true (btree bottom-up deletion
# cleans index entries as it goes: smaller indexes, slower), and with
# pause => '20ms' between batches (lighter on the concurrent workload).
#
#   ROWS=10000000 (default)  LOOP_LIMIT=10000  WORKLOAD_TPS=100  PORT=5535
#   FSYNC=off (default, as every throwaway cluster of this project) or on:
#   with on, every commit (the workload's and each batch's) waits for its
#   WAL to reach the disk, as on a production server.
#   TMPDIR=/dev/shm puts the throwaway cluster in memory: the same run with
#   the disk taken out (needs about 16 GB free there at 10M rows).
#   LOOP_CAP=3: the loop stops after LOOP_CAP times the single UPDATE's time
#   (its rate is then measured on the rows it did).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

ROWS=${ROWS:-10000000}
SMALL=${SMALL:-$((ROWS / 10))}
LOOP_LIMIT=${LOOP_LIMIT:-10000}
LOOP_CAP=${LOOP_CAP:-3}
TPS=${WORKLOAD_TPS:-100}
BASELINE_S=${BASELINE_S:-15}
BUSY_S=${BUSY_S:-30}
FSYNC=${FSYNC:-off}
case $FSYNC in on|off) ;; *) echo "FSYNC must be on or off, not '$FSYNC'" >&2; exit 2 ;; esac

tn_build_install
W=$(tn_workdir bench-backfill)
PORT=${PORT:-$(tn_free_port 5535)}
trap 'tn_cluster_stop "$W"; rm -rf "$W"' EXIT
tn_cluster_start "$W" "$PORT" "shared_preload_libraries='tenancy'" \
    "shared_buffers='2GB'" "max_wal_size='50GB'" "checkpoint_timeout='1h'" \
    "autovacuum=off" "max_connections=50" "log_min_messages=warning" "fsync = $FSYNC"

export PGHOST=$W PGPORT=$PORT PGUSER=$TN_USER PGDATABASE=postgres PGOPTIONS="-c client_min_messages=warning"
q() { psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\\n\", $* }"; }

q <<'SQL'
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('original', 'Original', '00000000-0000-0000-0000-00000000000a');
SELECT tenancy.set_implicit_tenant('original');
SQL

# The template, built once; each method gets a fresh copy of it.
# make_copy NROWS
make_template() {
    q -c "DROP TABLE IF EXISTS bench_tpl" \
      -c "CREATE TABLE bench_tpl (id bigint NOT NULL, a integer NOT NULL, b text NOT NULL,
                                  c timestamptz NOT NULL, d integer NOT NULL)" \
      -c "INSERT INTO bench_tpl SELECT g, (g::bigint * 7919) % 1000003, md5(g::text), '2024-01-01'::timestamptz + g * interval '1 s', 0
            FROM generate_series(1, $1) g" >/dev/null
}
make_copy() {
    q -c "DROP TABLE IF EXISTS bench_run; DROP SEQUENCE IF EXISTS bench_ins" \
      -c "CREATE TABLE bench_run (LIKE bench_tpl)" \
      -c "INSERT INTO bench_run SELECT * FROM bench_tpl" \
      -c "ALTER TABLE bench_run ADD PRIMARY KEY (id)" \
      -c "CREATE INDEX ON bench_run (a)" \
      -c "CREATE INDEX ON bench_run (c)" \
      -c "CREATE SEQUENCE bench_ins START $(( $1 + 1 ))" \
      -c "VACUUM (FREEZE, ANALYZE) bench_run" \
      -c "SELECT tenancy.add_tenant_column('bench_run')" \
      -c "CHECKPOINT" >/dev/null
    # The checkpoint leaves the copy (GBs at 10M rows) dirty in the page
    # cache, and the kernel writes it back about 30 s later: inside the
    # method's window, not its baseline's.  Write it out now.
    sync
}

cat > "$W/workload.sql" <<'SQL'
\set id random(1, :nrows)
BEGIN;
SELECT b FROM bench_run WHERE id = :id;
UPDATE bench_run SET d = d + 1 WHERE id = :id;
INSERT INTO bench_run (id, a, b, c, d) VALUES (nextval('bench_ins'), :id, 'new', now(), 0);
END;
SQL

# Run the workload in 5-second chunks until the file $W/stop appears (or
# for $2 seconds); transaction latencies (us) go to $W/lat.$1.
workload() {
    local tag=$1 secs=${2:-0} start i=0
    rm -f "$W/lat.$tag"
    start=$(date +%s)
    while :; do
        (cd "$W" && pgbench -n -c 4 -j 2 -R "$TPS" -t $(( TPS * 5 / 4 )) -D nrows="$ROWS_NOW" -f workload.sql \
            -l --log-prefix="pgb_${tag}_$i" >"$W/pgbench.out" 2>&1) || { cat "$W/pgbench.out" >&2; return 1; }
        cat "$W"/pgb_"${tag}_$i"* | awk '{print $3}' >> "$W/lat.$tag"
        rm -f "$W"/pgb_"${tag}_$i"*
        i=$((i + 1))
        [ -e "$W/stop" ] && break
        [ "$secs" -gt 0 ] && [ $(( $(date +%s) - start )) -ge "$secs" ] && break
    done
}
pctl() {	# pctl P FILE (values in the file's unit, one a line)
    sort -n "$2" | awk -v p="$1" '{v[NR]=$1} END {if (NR == 0) {print "NaN"; exit}
        i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; if (i > NR) i = NR; print v[i]}'
}

# method NAME: runs the method on a fresh copy with the workload beside it;
# fills R_secs, R_rows, R_wal and $W/batch.NAME (ms, one batch a line).
run_method() {
    local name=$1 t0 t1 lsn0 lsn1 rows
    make_copy "$ROWS_NOW"
    rows=$(q -c "SELECT count(*) FROM bench_run WHERE tenant_id IS NULL")
    # The workload alone on this copy, just before: the latency baseline.
    rm -f "$W/stop"
    workload "base_$name" "$BASELINE_S"
    cat "$W/lat.base_$name" >> "$W/lat.baseline"
    R_base=$(calc "$(pctl 99 "$W/lat.base_$name") / 1000")
    q -c "CHECKPOINT" >/dev/null
    rm -f "$W/stop" "$W/batch.$name"
    workload "$name" &
    local wpid=$!
    sleep 1
    lsn0=$(q -c "SELECT pg_current_wal_lsn()")
    t0=$(now)
    case $name in
        update|update2)
            q -c "UPDATE bench_run SET tenant_id = '00000000-0000-0000-0000-00000000000a' WHERE tenant_id IS NULL" >/dev/null
            t1=$(now)
            calc "($t1 - $t0) * 1000" >> "$W/batch.$name" ;;
        busy)	# no SQL: a shell loop keeps one core busy
            timeout "$BUSY_S" sh -c 'while :; do :; done' || true
            t1=$(now)
            : > "$W/batch.$name" ;;
        backfill|compact|pause)
            local opt=""
            [ "$name" = compact ] && opt=", compact_indexes => true"
            [ "$name" = pause ] && opt=", pause => '20ms'"
            PGOPTIONS="-c client_min_messages=debug1" q -c "CALL tenancy.backfill('bench_run'$opt)" 2>"$W/backfill.log" >/dev/null
            t1=$(now)
            sed -n 's/.*tenancy.backfill .* batch [0-9]*: [0-9]* rows updated in \([0-9.]*\) ms.*/\1/p' "$W/backfill.log" \
                > "$W/batch.$name" ;;
        loop)
            local cap_ms
            cap_ms=$(calc "$UPDATE_SECS * $LOOP_CAP * 1000" | cut -d. -f1)
            q 2>"$W/loop.log" >/dev/null <<SQL
SET client_min_messages = notice;
DO \$\$
DECLARE
    t0 timestamptz := clock_timestamp();
    t timestamptz;
    n bigint;
BEGIN
    LOOP
        t := clock_timestamp();
        UPDATE bench_run SET tenant_id = '00000000-0000-0000-0000-00000000000a'
         WHERE id IN (SELECT id FROM bench_run WHERE tenant_id IS NULL LIMIT $LOOP_LIMIT);
        GET DIAGNOSTICS n = ROW_COUNT;
        COMMIT;
        RAISE NOTICE 'loop batch % ms', round(extract(epoch FROM clock_timestamp() - t) * 1000, 1);
        EXIT WHEN n = 0;
        IF clock_timestamp() - t0 > interval '$cap_ms ms' THEN
            RAISE NOTICE 'loop capped';
            EXIT;
        END IF;
    END LOOP;
END
\$\$;
SQL
            t1=$(now)
            sed -n 's/.*loop batch \([0-9.]*\) ms.*/\1/p' "$W/loop.log" > "$W/batch.$name" ;;
    esac
    lsn1=$(q -c "SELECT pg_current_wal_lsn()")
    touch "$W/stop"
    wait "$wpid"
    R_secs=$(calc "$t1 - $t0")
    R_left=$(q -c "SELECT count(*) FROM bench_run WHERE tenant_id IS NULL")
    R_rows=$(( rows - R_left ))
    R_wal=$(q -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')")
    R_idx=$(q -c "SELECT pg_indexes_size('bench_run') / 1048576")
}

report() {	# report LABEL NAME
    local label=$1 name=$2 rate p99w
    rate=$(calc "$R_rows / $R_secs")
    p99w=$(calc "$(pctl 99 "$W/lat.$name") / 1000")
    BASE_P99=$R_base
    eval "RATE_$name=$rate"
    printf '%-24s %10.0f %6.2fx %8d %8.1f %8.1f %8.1f %10.0f %8d %10.1f %10.1f %6.2fx%s\n' "$label" "$rate" \
        "$(calc "$rate / $RATE_update")" "$(wc -l < "$W/batch.$name")" \
        "$(pctl 50 "$W/batch.$name")" "$(pctl 99 "$W/batch.$name")" "$(pctl 100 "$W/batch.$name")" \
        "$(calc "$R_wal / $R_rows")" "$R_idx" "$R_base" "$p99w" "$(calc "$p99w / $BASE_P99")" \
        "$([ "$R_left" -gt 0 ] && echo "  (stopped at the cap, $R_left rows left)")"
}

# --- the small size first: tenancy.backfill's rows/s at ROWS/10 ------------
ROWS_NOW=$SMALL
make_template "$SMALL"
run_method backfill
SMALL_RATE=$(calc "$R_rows / $R_secs")

# --- the real size ---------------------------------------------------------
ROWS_NOW=$ROWS
make_template "$ROWS"
rm -f "$W/lat.baseline"

echo "backfill bench: $ROWS rows, 2 secondary indexes + primary key; pgbench select/update/insert at $TPS tps on the same table; fsync = $FSYNC; cluster in $(df --output=fstype "$W" | tail -1) ($W)"
printf '%-24s %10s %7s %8s %8s %8s %8s %10s %8s %10s %10s %7s\n' method rows/s ratio batches "p50 ms" "p99 ms" "max ms" "WAL B/row" "index MB" "base p99" "wl p99 ms" "vs base"
run_method update
UPDATE_SECS=$R_secs
RATE_update=$(calc "$R_rows / $R_secs")
report "single UPDATE" update
# What any job that keeps one core busy costs the workload on this machine,
# with no database work at all: the floor under the ratios below.
run_method busy
printf '%-24s %10s %7s %8s %8s %8s %8s %10s %8s %10.1f %10.1f %6.2fx\n' "one busy core, no SQL" - - - - - - - - \
    "$R_base" "$(calc "$(pctl 99 "$W/lat.busy") / 1000")" "$(calc "$(pctl 99 "$W/lat.busy") / 1000 / $R_base")"
run_method backfill
report "tenancy.backfill" backfill
run_method pause
report "  pause => '20ms'" pause
run_method compact
report "  compact_indexes => true" compact
run_method loop
report "IN (SELECT LIMIT $LOOP_LIMIT)" loop
# The single UPDATE again, last: how much the machine drifted during the run.
run_method update2
report "single UPDATE, again" update2
printf 'single UPDATE rows/s, last vs first run: %.2fx (machine drift; ratios above are to the first)\n' \
    "$(calc "$RATE_update2 / $RATE_update")"
printf 'workload baseline (no backfill, %ss before each method): p99 %.1f ms over %d transactions\n' \
    "$BASELINE_S" "$(calc "$(pctl 99 "$W/lat.baseline") / 1000")" "$(wc -l < "$W/lat.baseline")"
printf 'tenancy.backfill rows/s at %d rows vs %d rows: %.2fx\n' "$ROWS" "$SMALL" "$(calc "$RATE_backfill / $SMALL_RATE")"
printf 'targets: backfill >= 1.00x single UPDATE; max batch <= 500 ms; workload p99 <= 2x baseline; %d vs %d rows within 20%%\n' "$ROWS" "$SMALL"
