#!/usr/bin/env bash
# bench/worker.sh: cost of one background-worker cycle on one large table,
# as a ratio to one `SELECT count(*) FROM t WHERE tenant_id IS NULL` on the
# same table measured in the same run (server defaults, sequential scan: the
# naive way to ask "what is left?").
#
#   (a) partial index on the NULL rows, UNMIGRATED_PCT % of rows NULL
#   (b) no such index: incremental scan, bounded by tenancy.worker_cycle_budget
#   (c) after SET NOT NULL: catalog proof
#
# A cycle's counting work is measured through tenancy.refresh_status(tbl),
# which runs the very code of the worker's cycle for that table (src/status.c);
# the worker adds only its process start.  Medians of REPEAT runs.
#
#   ROWS=10000000 UNMIGRATED_PCT=1 REPEAT=5 BUDGET_MS=1000 bench/worker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

ROWS=${ROWS:-10000000}
PCT=${UNMIGRATED_PCT:-1}
REPEAT=${REPEAT:-5}
BUDGET_MS=${BUDGET_MS:-1000}

tn_build_install
DIR=$(tn_workdir bench-worker)
trap 'tn_cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
port=$(tn_free_port 56800)
tn_cluster_start "$DIR" "$port" \
    "shared_preload_libraries = 'tenancy'" \
    "tenancy.worker_enabled = off" \
    "tenancy.worker_cycle_budget = $BUDGET_MS" \
    "max_wal_size = '4GB'" "autovacuum = off" >/dev/null
q() { tn_run psql -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" -d postgres "$@"; }

every=$(awk "BEGIN { printf \"%d\", 100 / $PCT }")
echo "table: $ROWS rows, 1 in $every with tenant_id NULL; cycle budget ${BUDGET_MS} ms; medians of $REPEAT"
q <<SQL
CREATE EXTENSION tenancy;
CREATE TABLE bench_orders (id bigint, tenant_id uuid, amount int);
INSERT INTO bench_orders
  SELECT g, CASE WHEN g % $every <> 0 THEN '00000000-0000-0000-0000-000000000001'::uuid END, g % 1000
    FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE bench_orders;
INSERT INTO tenancy.tables (relation) VALUES ('bench_orders');
CREATE FUNCTION bench_ms(stmt text, n int) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE
    t0 timestamptz;
    ms float8[] := '{}';
BEGIN
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        EXECUTE stmt;
        ms := ms || extract(epoch FROM clock_timestamp() - t0)::float8 * 1000;
    END LOOP;
    RETURN (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(ms) x);
END
\$\$;
SQL
pages=$(q -c "SELECT pg_relation_size('bench_orders') / current_setting('block_size')::int")
q -c "SELECT count(*) FROM bench_orders WHERE tenant_id IS NULL" >/dev/null   # warm the cache
base=$(q -c "SELECT bench_ms('SELECT count(*) FROM bench_orders WHERE tenant_id IS NULL', $REPEAT)")
printf 'baseline  count(*) WHERE tenant_id IS NULL: %10.1f ms (%s pages)\n' "$base" "$pages"

ratio() { awk "BEGIN { printf \"%.4f\", $1 / $2 }"; }

# (b) first, before the index exists: cycles of an incremental pass.
q -c "DELETE FROM tenancy.migration_status" >/dev/null
cycles=0 worst=0 total=0
while :; do
    out=$(q -c "SELECT bench_ms('SELECT count(*) FROM tenancy.refresh_status(''bench_orders'')', 1)" \
            -c "SELECT coalesce(scan_position::text, 'done') || ' ' || method FROM tenancy.migration_status")
    ms=$(echo "$out" | sed -n 1p); state=$(echo "$out" | sed -n 2p)
    cycles=$((cycles + 1))
    worst=$(awk "BEGIN { print ($ms > $worst) ? $ms : $worst }")
    total=$(awk "BEGIN { print $total + $ms }")
    case $state in done*) break ;; esac
    [ $cycles -ge 10000 ] && { echo "pass did not end" >&2; exit 1; }
done
counted=$(q -c "SELECT unmigrated || ' (' || method || ')' FROM tenancy.migration_status")
printf '(b) no index, incremental:  %10.1f ms per cycle at most (budget %s ms), ratio %s; full pass in %d cycles, %.1f ms in all, ratio %s; counted %s\n' \
    "$worst" "$BUDGET_MS" "$(ratio "$worst" "$base")" "$cycles" "$total" "$(ratio "$total" "$base")" "$counted"

# (a) partial index on the NULL rows.
q -c "CREATE INDEX bench_orders_unmigrated ON bench_orders (id) WHERE tenant_id IS NULL" -c "VACUUM bench_orders"
q -c "SELECT count(*) FROM tenancy.refresh_status('bench_orders')" >/dev/null
a=$(q -c "SELECT bench_ms('SELECT count(*) FROM tenancy.refresh_status(''bench_orders'')', $REPEAT)")
counted=$(q -c "SELECT unmigrated || ' (' || method || ')' FROM tenancy.migration_status")
printf '(a) partial index:           %10.1f ms per cycle, ratio %s (target <= 0.05); counted %s\n' \
    "$a" "$(ratio "$a" "$base")" "$counted"

# (c) after NOT NULL.
q -c "UPDATE bench_orders SET tenant_id = '00000000-0000-0000-0000-000000000001' WHERE tenant_id IS NULL" \
  -c "ALTER TABLE bench_orders ALTER COLUMN tenant_id SET NOT NULL"
q -c "SELECT count(*) FROM tenancy.refresh_status('bench_orders')" >/dev/null
c=$(q -c "SELECT bench_ms('SELECT count(*) FROM tenancy.refresh_status(''bench_orders'')', $REPEAT)")
counted=$(q -c "SELECT unmigrated || ' (' || method || ')' FROM tenancy.migration_status")
printf '(c) NOT NULL:                %10.1f ms per cycle, ratio %s (target ~0); counted %s\n' \
    "$c" "$(ratio "$c" "$base")" "$counted"
