#!/usr/bin/env bash
# test/deprecation.sh: a deprecated legacy role's transactions write a
# WARNING to the server log, naming the role and its application_name, at
# most once per tenancy.deprecation_warning_interval per role (0: each
# one), and the unchanged legacy client sees none of them, whatever its
# client_min_messages; a retired role's transactions are logged too.  After
# a restart the counting starts again, and retiring waits for a full
# tenancy.retire_after of watching.  (Previews, undo and refusals:
# sql/deprecation.sql.)
#
# Shell TAP, run by `prove -e bash` from scripts/test.sh, on its own server
# whose log it reads.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"

PLAN=18
DB=tenancy_deprecation
LEGACY=tn_dep_legacy
LEGACY2=tn_dep_legacy2
APP=tn_dep_app
K=5d000000-0000-4000-8000-0000000000d1

tap_tmpdir DIR deprecation
PORT=$(tap_free_port)
own_server_start "$DIR/data" "$PORT" "$DIR" "shared_preload_libraries = 'tenancy'" \
    "log_min_messages = warning" "tenancy.deprecation_warning_interval = 0"
LOG=$DIR/data.log
su() { psql_at "$DIR" "$PORT" -d "$@" </dev/null; }
# as ROLE APPNAME SQL...: a client session, its stdout and stderr in one string
as() {
    local role=$1 app=$2; shift 2
    local args=() s
    for s in "$@"; do args+=(-c "$s"); done
    PGAPPNAME="$app" PGOPTIONS="-c client_min_messages=debug5" \
        psql -X -q -At -h "$DIR" -p "$PORT" -U "$role" -d "$DB" -v VERBOSITY=verbose "${args[@]}" </dev/null 2>&1
}
warnings() { grep -c "WARNING:  $1 legacy role \"$2\" ran a transaction (application_name \"$3\")" "$LOG"; }

su postgres -c "CREATE ROLE $LEGACY LOGIN" -c "CREATE ROLE $LEGACY2 LOGIN" -c "CREATE ROLE $APP LOGIN" \
    -c "CREATE DATABASE $DB" >/dev/null || bail "cannot create $DB"
su "$DB" -c "CREATE EXTENSION tenancy" \
    -c "SELECT tenancy.create_tenant('dep-one', 'One', '$K')" \
    -c "SELECT tenancy.set_implicit_tenant('dep-one')" \
    -c "CREATE TABLE items (id int PRIMARY KEY, body text)" \
    -c "GRANT SELECT, INSERT ON items TO $LEGACY, $LEGACY2, $APP" \
    -c "SELECT tenancy.add_tenant_column('items')" \
    -c "SELECT tenancy.bind_role('$LEGACY')" -c "SELECT tenancy.bind_role('$LEGACY2')" \
    -c "SELECT tenancy.deprecate_role('$LEGACY')" >/dev/null || bail "cannot set up $DB"

plan $PLAN

# Interval 0: one warning per transaction.  The session runs six: its
# login's, and the five statements below (each its own transaction).
out=$(as "$LEGACY" legacy-billing "SELECT tenancy.current_tenant_text()" \
        "INSERT INTO items (id, body) VALUES (1, 'a')" "INSERT INTO items (id, body) VALUES (2, 'b')" \
        "SELECT count(*) FROM items" "SELECT 1")
is "the legacy client runs unchanged (its tenant, its rows)" "$(printf '%s\n' "$out" | grep -v '^DEBUG\|^LOCATION' | tr '\n' ' ')" "$K 2 1 "
is "and sees no warning at client_min_messages = debug5" "$(printf '%s\n' "$out" | grep -c 'WARNING\|deprecated')" 0
is "the server log has one WARNING per transaction (interval 0)" "$(warnings deprecated "$LEGACY" legacy-billing)" 6
like "each names the role and application_name, with the counts" \
    "$(grep -A2 "WARNING:  deprecated legacy role \"$LEGACY\"" "$LOG" | tail -n 3 | tr '\n' ' ')" \
    "DETAIL:  1 transactions of this role since the last warning, 6 since the server started \(tenancy.deprecation_warning_interval = 0 s\)\..*HINT:  Move this client to set its tenant per request"
is "the view counts them, with the application" \
    "$(su "$DB" -c "SELECT transactions, warnings, last_application_name FROM tenancy.deprecated_roles")" "6|6|legacy-billing"

# A role that is not deprecated: neither counted nor logged.
as "$APP" app-web "SELECT 1" "SELECT 2" >/dev/null
as "$LEGACY2" legacy-reports "SELECT 1" >/dev/null
is "other roles are not logged" "$(grep -c "legacy role \"$APP\"\|legacy role \"$LEGACY2\"" "$LOG")" 0
is "nor counted" "$(su "$DB" -c "SELECT count(*) FROM tenancy.deprecation_activity()")" 1

# A rate of one an hour: the role warned a moment ago gets none now, a newly
# deprecated one exactly one, however many transactions run.
su postgres -c "ALTER SYSTEM SET tenancy.deprecation_warning_interval = '1h'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
su "$DB" -c "SELECT tenancy.deprecate_role('$LEGACY2')" >/dev/null
for i in 1 2 3 4; do
    as "$LEGACY" legacy-billing "SELECT 1" "SELECT 2" >/dev/null
    as "$LEGACY2" legacy-reports "SELECT 1" "SELECT 2" >/dev/null
done
is "interval 1h: no new warning for the role warned a moment ago" "$(warnings deprecated "$LEGACY" legacy-billing)" 6
is "and one for the newly deprecated role" "$(warnings deprecated "$LEGACY2" legacy-reports)" 1
is "while every transaction is counted (4 sessions of 3 each)" \
    "$(su "$DB" -c "SELECT string_agg(role || '=' || transactions || '/' || warnings, ' ' ORDER BY role::text) FROM tenancy.deprecated_roles")" \
    "$LEGACY=18/6 $LEGACY2=12/1"
out=$(su "$DB" -c "SELECT last_run > now() - interval '1 minute', last_application_name FROM tenancy.deprecated_roles WHERE role = '$LEGACY2'::regrole")
is "when it last ran, and from where" "$out" "t|legacy-reports"

# Retired (forced: it ran a moment ago): the client gets no tenant, and its
# transactions are logged as a retired role's.
su postgres -c "ALTER SYSTEM SET tenancy.deprecation_warning_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
su "$DB" -c "SELECT tenancy.retire_role('$LEGACY', force => true)" >/dev/null 2>&1 || fail "retire_role failed"
out=$(as "$LEGACY" legacy-billing "INSERT INTO items (id, body) VALUES (3, 'c')")
like "a retired role's write without a tenant fails" "$out" "ERROR:  55000: no tenant is set"
is "its committed transactions are logged as a retired role's (the login's)" "$(warnings retired "$LEGACY" legacy-billing)" 1
out=$(as "$LEGACY" legacy-billing "SELECT tenancy.set_tenant('dep-one') IS NOT NULL; SELECT count(*) FROM items")
is "naming its tenant works (the new path), and its client sees no warning" \
    "$(printf '%s\n' "$out" | grep -v '^DEBUG\|^LOCATION' | tr '\n' ' ')" "t 2 "
is "the retired role's log lines" "$(warnings retired "$LEGACY" legacy-billing)" 3

# A restart: the shared counters start again, so a role that was quiet
# before it is watched afresh for a full tenancy.retire_after.
su "$DB" -c "ALTER DATABASE $DB SET tenancy.retire_after = '30min'" >/dev/null
tap_run "$BINDIR/pg_ctl" -D "$DIR/data" -l "$LOG" -w restart -m fast >/dev/null || bail "restart failed"
is "after a restart nothing is counted" "$(su "$DB" -c "SELECT transactions FROM tenancy.deprecated_roles WHERE role = '$LEGACY2'::regrole")" 0
out=$(psql -X -q -At -h "$DIR" -p "$PORT" -U "$TAP_USER" -d "$DB" -v VERBOSITY=verbose \
        -c "SELECT tenancy.retire_role('$LEGACY2')" </dev/null 2>&1)
like "and retiring waits for tenancy.retire_after of watching" "$out" \
    "ERROR:  55000: role \"$LEGACY2\" has not been watched for tenancy.retire_after yet"
like "since the server's start" "$out" "DETAIL:  It has not run since .* \(its deprecation or the server's start, whichever is later\), .* ago; tenancy.retire_after is 00:30:00\."

tap_end
