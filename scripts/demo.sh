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
trap 'tn_cluster_stop "$DEMO"; tn_log "cluster stopped"' EXIT
tn_log "starting a throwaway cluster on port $PORT"
tn_cluster_start "$DEMO" "$PORT" "shared_preload_libraries = 'tenancy'"
tn_run "$TN_BINDIR/createdb" -h "$DEMO" -p "$PORT" demo

export PGHOST=$DEMO PGPORT=$PORT PGDATABASE=demo PGUSER=$TN_USER
psql_demo() { tn_run env PGHOST="$PGHOST" PGPORT="$PGPORT" PGDATABASE=demo PGUSER="$PGUSER" \
                  psql -X -q -v ON_ERROR_STOP=1 -P footer=off "$@"; }

if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B='' N=''; fi
step() {
    local title=$1 file=$2 t0 t1
    printf '\n%s== %s%s\n' "$B" "$title" "$N"
    t0=$(date +%s%N)
    psql_demo -e -f "$file"
    t1=$(date +%s%N)
    printf '(%d ms)\n' $(( (t1 - t0) / 1000000 ))
}

for f in scripts/demo/*.sql; do
    title=$(head -1 "$f" | sed 's/^-- *//')
    step "$title" "$f"
done
printf '\n%sdemo finished%s\n' "$B" "$N"
