#!/usr/bin/env bash
# test/suspend_race.sh: set_tenant()'s per-backend registry cache never keeps
# a tenant's old status once another session has changed it.
#
# Shell TAP, run by `prove -e bash` from scripts/test.sh with PGHOST, PGPORT
# and PGUSER pointing at a preloaded cluster (PGUSER a superuser).  Two psql
# sessions on a database of its own, driven over fifos; every wait is bounded
# by a marker the session echoes after each batch.
set -u

PLAN=6
DB=tenancy_suspend_race
APP=tenancy_suspend_race_app
A=52000000-0000-4000-8000-00000000000a
TIMEOUT=${RACE_TIMEOUT:-30}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tenancy-race.XXXXXX") || { echo "Bail out! mktemp failed"; exit 1; }
declare -a CW=() CR=() CPID=() MARK=()

admin() { local db=$1; shift; PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -d "$db" "$@"; }
cleanup() {
    local fd pid i
    for fd in "${CW[@]}" "${CR[@]}"; do exec {fd}>&- 2>/dev/null; done
    for pid in "${CPID[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${CPID[@]}"; do
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    admin postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP ROLE IF EXISTS $APP" </dev/null >/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

n=0
bail() { echo "Bail out! $*"; exit 1; }
is() {
    n=$((n + 1))
    if [ "$2" = "$3" ]; then echo "ok $n - $1"
    else echo "not ok $n - $1"; printf '#   got:  %s\n#   want: %s\n' "$(printf '%s' "$2" | tr '\n' '|')" "$3"
    fi
}

# start_client N ROLE: a psql session reading fifo c<N>.in
start_client() {
    local i=$1 role=$2 fd
    mkfifo "$TMP/c$i.in" "$TMP/c$i.out" || bail "mkfifo failed"
    stdbuf -oL -eL psql -X -q -A -t -v VERBOSITY=terse -U "$role" -d "$DB" \
        <"$TMP/c$i.in" >"$TMP/c$i.out" 2>&1 &
    CPID[i]=$!
    exec {fd}>"$TMP/c$i.in"; CW[i]=$fd
    exec {fd}<"$TMP/c$i.out"; CR[i]=$fd
}
seq_no=0
# q N SQL...: run the lines, wait for the marker; output in OUT, last SQLSTATE in STATE
q() {
    local i=$1 line deadline; shift
    seq_no=$((seq_no + 1)); MARK[i]="@@$seq_no@@"
    printf '%s\n' "$@" "\\echo ${MARK[i]} :SQLSTATE" >&"${CW[i]}" || bail "session $i is gone"
    OUT=; deadline=$((SECONDS + TIMEOUT))
    while [ "$SECONDS" -le "$deadline" ]; do
        IFS= read -r -t "$TIMEOUT" line <&"${CR[i]}" || bail "session $i: no answer within ${TIMEOUT}s"
        case $line in
            "${MARK[i]} "*) STATE=${line#"${MARK[i]} "}; OUT=${OUT%$'\n'}; return 0 ;;
            *) OUT+=$line$'\n' ;;
        esac
    done
    bail "session $i: no marker within ${TIMEOUT}s"
}

admin postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP ROLE IF EXISTS $APP" \
    -c "CREATE ROLE $APP LOGIN" -c "CREATE DATABASE $DB" </dev/null >/dev/null || bail "cannot create $DB"
admin "$DB" -c "CREATE EXTENSION tenancy" \
    -c "SELECT tenancy.create_tenant('race-a', 'A', '$A')" </dev/null >/dev/null || bail "cannot set up $DB"

echo "1..$PLAN"
start_client 1 "$APP"        # the application
start_client 2 "$PGUSER"     # the administrator

# Read committed: the application has the tenant cached as active.
q 1 "BEGIN;" "SELECT tenancy.set_tenant('race-a');" "COMMIT;"
q 2 "SELECT tenancy.suspend_tenant('race-a');"
q 1 "BEGIN;" "SELECT tenancy.set_tenant('race-a');"; st=$STATE; q 1 "ROLLBACK;"
is "a tenant cached as active and then suspended is refused in the next transaction" "$st" 42501
q 2 "SELECT tenancy.activate_tenant('race-a');"
q 1 "BEGIN;" "SELECT tenancy.set_tenant('$A');"; st=$STATE; q 1 "COMMIT;"
is "reactivated, it is accepted again" "$st" 00000

# Repeatable read: the application's snapshot predates the suspension, and
# the tenant is not cached (a key not looked up before in this backend), so
# the lookup reads the registry while the invalidation arrives.
q 2 "SELECT tenancy.create_tenant('race-b', 'B', '52000000-0000-4000-8000-00000000000b');"
q 1 "BEGIN ISOLATION LEVEL REPEATABLE READ;" "SELECT 1;"
q 2 "SELECT tenancy.suspend_tenant('race-b');"
q 1 "SELECT tenancy.set_tenant('race-b');"
is "a snapshot older than the suspension does not make set_tenant() accept it" "$STATE" 42501
q 1 "ROLLBACK;"
q 1 "BEGIN;" "SELECT tenancy.set_tenant('race-b');"; st=$STATE; q 1 "ROLLBACK;"
is "nor does any later transaction of that backend (nothing stale was cached)" "$st" 42501
q 1 "BEGIN;" "SELECT tenancy.set_tenant('52000000-0000-4000-8000-00000000000b');"; st=$STATE; q 1 "ROLLBACK;"
is "by key as by slug" "$st" 42501

# A tenant created after the application's snapshot is found.
q 1 "BEGIN ISOLATION LEVEL REPEATABLE READ;" "SELECT 1;"
q 2 "SELECT tenancy.create_tenant('race-c', 'C', '52000000-0000-4000-8000-00000000000c');"
q 1 "SELECT 'set=' || tenancy.set_tenant('race-c');" "COMMIT;"
is "a tenant created after the snapshot was taken can be set" "$OUT" "set=52000000-0000-4000-8000-00000000000c"
