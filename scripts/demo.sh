#!/usr/bin/env bash
# make demo: a throwaway preloaded cluster, the extension, and the migration
# job on a sample database, step by step, with readable output.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

scripts/deps.sh
tn_log "building and installing"
tn_build_install

DEMO=$(tn_workdir demo)
PORT=$(tn_free_port 56432)
# The cluster goes away at the end; after a failure its directory (with
# server.log) stays for a look.
trap 'rc=$?; tn_cluster_stop "$DEMO"
      if [ $rc -eq 0 ]; then rm -rf "$DEMO"; tn_log "cluster stopped and removed"
      else tn_log "cluster stopped; its files are in $DEMO"; fi' EXIT
tn_log "starting a throwaway cluster on port $PORT"
# The background worker watches the demo database every second.
tn_cluster_start "$DEMO" "$PORT" "shared_preload_libraries = 'tenancy'" "wal_level = logical" \
    "tenancy.worker_databases = 'demo'" "tenancy.worker_interval = 1" "max_worker_processes = 16"

tn_run "$TN_BINDIR/createdb" -h "$DEMO" -p "$PORT" demo

export PGHOST=$DEMO PGPORT=$PORT PGDATABASE=demo PGUSER=$TN_USER
export TN_DEMO_LOG=$DEMO/server.log   # the server log, read by the deprecation steps
psql_demo() { tn_run env PGHOST="$PGHOST" PGPORT="$PGPORT" PGDATABASE=demo PGUSER="$PGUSER" TN_DEMO_LOG="$TN_DEMO_LOG" \
                  psql -X -q -v ON_ERROR_STOP=1 -P footer=off "$@"; }

if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B='' N=''; fi
# What is left, as the background worker reports it: wait (at most 15 s)
# for a cycle that started after the step, then print the report.
left() {
    local since=$1
    [ "$(psql_demo -At -c "SELECT to_regclass('tenancy.migration_status') IS NOT NULL")" = t ] || return 0
    [ "$(psql_demo -At -c "SELECT count(*) FROM tenancy.tables")" != 0 ] || return 0
    psql_demo -c "DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
        WHILE EXISTS (SELECT 1 FROM tenancy.tables r LEFT JOIN tenancy.migration_status s USING (relation)
                      WHERE s.checked_at IS NULL OR s.checked_at < '$since')
              AND clock_timestamp() < t0 + interval '15 s' LOOP
            PERFORM pg_sleep(0.2);
        END LOOP; END \$\$"
    if [ "$(psql_demo -At -c "SELECT to_regprocedure('tenancy.report()') IS NOT NULL")" = t ]; then
        # The one-screen report (src/report.sql), with the worker's method
        # and the time of its count beside the rows left to migrate.
        echo "-- the migration, from tenancy.report() (unmigrated: the background worker's count;"
        echo "-- divergences: rows hidden + writes refused, counted while a table ran in shadow for a tenant):"
        psql_demo -c "SELECT r.relation, r.stage, r.mode, r.rollout, r.unmigrated, s.method, r.backfill,
                             r.legacy_divergences AS legacy_div, r.new_divergences AS new_div,
                             to_char(r.last_change, 'HH24:MI:SS') AS changed,
                             to_char(s.checked_at, 'HH24:MI:SS') AS checked
                        FROM tenancy.report() r LEFT JOIN tenancy.migration_status s USING (relation)
                       ORDER BY r.relation::text"
        return 0
    fi
    echo "-- left to migrate, from the background worker:"
    psql_demo -c "SELECT relation, unmigrated, total_rows, percent_migrated AS pct, method,
                         to_char(checked_at, 'HH24:MI:SS') AS checked
                    FROM tenancy.migration_status ORDER BY relation::text"
}

step() {
    local title=$1 file=$2 t0 t1 since
    printf '\n%s== %s%s\n' "$B" "$title" "$N"
    t0=$(date +%s%N)
    psql_demo -e -f "$file"
    t1=$(date +%s%N)
    since=$(psql_demo -At -c "SELECT clock_timestamp()")
    printf '%s(step took %d ms)%s\n' "$B" $(( (t1 - t0) / 1000000 )) "$N"
    left "$since"
}

for f in scripts/demo/*.sql; do
    title=$(head -1 "$f" | sed 's/^-- *//')
    step "$title" "$f"
done
printf '\n%sdemo finished%s\n' "$B" "$N"
