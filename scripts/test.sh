#!/usr/bin/env bash
# make test: install what is missing, build, install, then run the pg_regress
# suites and the TAP suites (pgTAP through pg_prove, shell TAP through prove)
# on throwaway clusters.  Ends with "N passed, N failed"; non-zero on failure.
#
# Developers may narrow the run: REGRESS="context registry" TAP="test/schema.sql".
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
TN_SRC=$PWD   # the source tree (shell TAP tests read scripts and tools from it)

scripts/deps.sh || exit 1
export WERROR=${WERROR:-1}     # tests build warning-free: warnings are errors
tn_build_install || { tn_log "build or install failed"; echo "0 passed, 1 failed"; exit 1; }

WORK=$(tn_workdir test)
cp -r sql expected test "$WORK"/
[ "$(id -u)" -eq 0 ] && chown -R "$TN_USER" "$WORK"
TAP_DIR=$WORK/tap
trap 'tn_cluster_stop "$TAP_DIR"' EXIT

passed=0 failed=0

# --- the install script is what the SQL sources produce ---------------------
if make -s -C "$TN_ROOT" check-sources; then passed=$((passed + 1)); else failed=$((failed + 1)); fi

# --- pg_regress ------------------------------------------------------------
# run_regress NAME CONFIG TESTS...
run_regress() {
    local name=$1 conf=$2; shift 2
    [ $# -eq 0 ] && return 0
    local out=$WORK/$name
    mkdir -p "$out"; [ "$(id -u)" -eq 0 ] && chown "$TN_USER" "$out"
    local opts=(--bindir="$TN_BINDIR" --temp-instance="$out/tmp_check"
                --inputdir="$WORK" --outputdir="$out" --dbname=contrib_regression)
    [ -n "$conf" ] && opts+=(--temp-config="$conf")
    tn_log "pg_regress ($name): $*"
    (cd "$WORK/sql" && tn_run "$TN_PG_REGRESS" "${opts[@]}" "$@") 2>&1 | tee "$out/pg_regress.log"
    local ok bad
    ok=$(grep -cE '\.\.\. ok' "$out/pg_regress.log")
    bad=$(grep -cE '\.\.\. (FAILED|failed)' "$out/pg_regress.log")
    if [ "$ok" -eq 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi   # the run itself failed
    passed=$((passed + ok)); failed=$((failed + bad))
    if [ -s "$out/regression.diffs" ]; then
        echo "=== $out/regression.diffs"; cat "$out/regression.diffs"
    fi
}

all_regress=$(make -s print-REGRESS)
plain_regress=$(make -s print-REGRESS_PLAIN)
sel() { local t; for t in $1; do
    [ -f "sql/$t.sql" ] || { tn_log "no sql/$t.sql: skipping $t"; continue; }
    case " ${REGRESS:-$all_regress $plain_regress} " in *" $t "*) echo "$t";; esac; done; }
run_regress regress-preloaded "$WORK/test/preload.conf" $(sel "$all_regress")
run_regress regress-plain "" $(sel "$plain_regress")

# --- TAP: pgTAP files and shell TAP scripts ---------------------------------
tap_files=${TAP:-$(ls test/*.sql test/*.sh 2>/dev/null | sort)}
if [ -n "$tap_files" ]; then
    port=$(tn_free_port 55432)
    mkdir -p "$TAP_DIR"; [ "$(id -u)" -eq 0 ] && chown "$TN_USER" "$TAP_DIR"
    if tn_cluster_start "$TAP_DIR" "$port" "$(grep -v '^#' test/preload.conf)"; then
        export PGHOST=$TAP_DIR PGPORT=$port PGDATABASE=tenancy_tap PGUSER=$TN_USER
        export TN_BINDIR TN_WORK=$WORK
        tn_run "$TN_BINDIR/createdb" -h "$TAP_DIR" -p "$port" tenancy_tap
        tn_run psql -X -q -h "$TAP_DIR" -p "$port" -d tenancy_tap -c 'CREATE EXTENSION pgtap' >/dev/null
        for f in $tap_files; do
            case $f in
                *.sql) (cd "$WORK" && tn_run env PGHOST="$PGHOST" PGPORT="$PGPORT" \
                            pg_prove --verbose -d tenancy_tap "$f") ;;
                *.sh)  (cd "$WORK" && tn_run env PGHOST="$PGHOST" PGPORT="$PGPORT" PGDATABASE=tenancy_tap \
                            PGUSER="$PGUSER" TN_BINDIR="$TN_BINDIR" TN_WORK="$WORK" TN_SRC="$TN_SRC" \
                            prove --verbose -e bash "$f") ;;
            esac > "$WORK/tap.out" 2>&1
            rc=$?
            cat "$WORK/tap.out"
            ok=$(grep -cE '^\s*ok [0-9]' "$WORK/tap.out")
            bad=$(grep -cE '^\s*not ok [0-9]' "$WORK/tap.out")
            if [ $rc -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi   # died or wrong plan
            passed=$((passed + ok)); failed=$((failed + bad))
        done
    else
        tn_log "could not start the pgTAP cluster"; failed=$((failed + 1))
    fi
fi

tn_cluster_stop "$TAP_DIR"
if [ "$failed" -eq 0 ]; then
    rm -rf "$WORK"
else
    tn_log "work directory (results, regression.diffs, server logs): $WORK"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
