#!/usr/bin/env bash
# test/suspend_race.sh: set_tenant()'s per-backend registry cache never keeps
# a tenant's old status once another session has changed it.
#
# Shell TAP, run by `prove -e bash` from scripts/test.sh with PGHOST, PGPORT
# and PGUSER pointing at a preloaded cluster (PGUSER a superuser).  Two psql
# sessions on a database of its own, driven over fifos; every wait is bounded
# by a marker the session echoes after each batch.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"

PLAN=6
DB=tenancy_suspend_race
APP=tenancy_suspend_race_app
A=52000000-0000-4000-8000-00000000000a
TIMEOUT=${RACE_TIMEOUT:-30}

TAP_TIMEOUT=$TIMEOUT
cleanup() {
    admin postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP ROLE IF EXISTS $APP" </dev/null >/dev/null
}
tap_at_exit cleanup

# start_client N ROLE: a psql session of ROLE on the test database
start_client() { client_start "$1" -U "$2" -d "$DB"; }
# q N SQL...: run the lines, wait for the marker; output in OUT, last SQLSTATE in STATE
q() { client_q "$@"; }

admin postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP ROLE IF EXISTS $APP" \
    -c "CREATE ROLE $APP LOGIN" -c "CREATE DATABASE $DB" </dev/null >/dev/null || bail "cannot create $DB"
admin "$DB" -c "CREATE EXTENSION tenancy" \
    -c "SELECT tenancy.create_tenant('race-a', 'A', '$A')" </dev/null >/dev/null || bail "cannot set up $DB"

plan $PLAN
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
tap_end
