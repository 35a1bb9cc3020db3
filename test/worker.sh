#!/usr/bin/env bash
# TAP: the background worker and the databases it watches: a database
# without the extension is reported once, a later CREATE EXTENSION is picked
# up without a restart, a missing database is reported once, and DROP
# DATABASE is not blocked by the worker.  Runs on the preloaded TAP cluster
# (test/preload.conf: tenancy.worker_interval = 1); reads its server log.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
LOG=$TN_WORK/tap/server.log
DB=worker_tap_db
MISSING=worker_tap_missing
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
log_count() { grep -c -- "$1" "$LOG" || true; }
log_has() { [ "$(log_count "$1")" -ge 1 ]; }
cleanup() {
    q -d postgres -c "ALTER SYSTEM RESET tenancy.worker_databases" \
      -c "ALTER SYSTEM RESET log_min_messages" -c "SELECT pg_reload_conf()" >/dev/null
    "$TN_BINDIR/dropdb" --if-exists "$DB" 2>/dev/null
}
tap_at_exit cleanup

plan 8
"$TN_BINDIR/createdb" "$DB"
q -d postgres -c "ALTER SYSTEM SET log_min_messages = 'log'" \
  -c "ALTER SYSTEM SET tenancy.worker_databases = 'tenancy_tap,$DB,$MISSING'" \
  -c "SELECT pg_reload_conf()" >/dev/null

noext="extension tenancy is not installed in database \"$DB\""
wait_for 30 log_has "$noext"
ok $? "a database without the extension is reported in the log"

missing="database \"$MISSING\" of tenancy.worker_databases does not exist"
wait_for 30 log_has "$missing"
ok $? "a missing database is reported in the log"

# A negative check needs time: three more cycles of 1 s, then each fact
# must still have been reported exactly once.
sleep 3
[ "$(log_count "$noext")" -eq 1 ] && [ "$(log_count "$missing")" -eq 1 ]
ok $? "each is reported once, not at every cycle"

q -d "$DB" <<'SQL'
CREATE EXTENSION tenancy;
CREATE TABLE worker_tap_t (id int, tenant_id uuid);
INSERT INTO worker_tap_t SELECT g, CASE WHEN g % 2 = 0 THEN gen_random_uuid() END FROM generate_series(1, 10) g;
INSERT INTO tenancy.tables (relation) VALUES ('worker_tap_t');
SQL
counted() { [ "$(q -d "$DB" -c "SELECT unmigrated FROM tenancy.migration_status")" = 5 ]; }
wait_for 30 counted
ok $? "CREATE EXTENSION is picked up without a restart: the table is counted"

log_has "extension tenancy found in database \"$DB\""
ok $? "the pick-up is reported in the log"

# The worker connects to the database every second, but only for a cycle:
# DROP DATABASE waits for it instead of failing.
fails=0
"$TN_BINDIR/dropdb" "$DB" || fails=1
ok $fails "DROP DATABASE of a watched database succeeds"

wait_for 30 bash -c "[ \$(grep -c -- 'database \"$DB\" of tenancy.worker_databases does not exist' '$LOG') -ge 1 ]"
ok $? "the dropped database is reported as missing"

[ "$(q -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenancy launcher'")" = 1 ]
ok $? "the launcher is still running"
tap_end
