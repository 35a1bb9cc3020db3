#!/usr/bin/env bash
# test/context_source.sh: with tenancy.context_source = token, a role that
# is not a superuser cannot set the tenant at connection time: the startup
# packet's options (PGOPTIONS='-c tenancy.tenant_id=...') are refused and
# the connection fails (42501); clearing it there is allowed; a superuser
# may.  Role and database defaults are ignored with a WARNING at login, and
# a role bound with bind_role() starts with its bound tenant, in token mode
# too.  (The other routes: sql/security_context_source.sql.)
#
# Shell TAP, run by `prove -e bash` from scripts/test.sh.  It runs its own
# server: token mode is set in its configuration, then (ALTER SYSTEM) per
# database.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"

PLAN=13
DB=tenancy_context_source
APP=tenancy_cs_app
LEGACY=tenancy_cs_legacy
A=53000000-0000-4000-8000-00000000000a
B=53000000-0000-4000-8000-00000000000b

tap_tmpdir DIR context-source
PORT=$(tap_free_port)
own_server_start "$DIR/data" "$PORT" "$DIR" \
    "shared_preload_libraries = 'tenancy'" "tenancy.context_source = 'token'"
su() { psql_at "$DIR" "$PORT" -v ON_ERROR_STOP=1 -d "$@" </dev/null >/dev/null; }
# as ROLE OPTIONS SQL: psql's stdout and stderr, one string
as() {
    local role=$1 opts=$2
    PGOPTIONS="$opts" psql -X -q -At -h "$DIR" -p "$PORT" -U "$role" -d "$DB" \
        -v VERBOSITY=default -v ON_ERROR_STOP=1 -c "$3" </dev/null 2>&1
}

su postgres -c "CREATE ROLE $APP LOGIN" -c "CREATE ROLE $LEGACY LOGIN" -c "CREATE DATABASE $DB" \
    || bail "cannot create $DB"
su "$DB" -c "CREATE EXTENSION tenancy" \
    -c "SELECT tenancy.create_tenant('cs-a', 'A', '$A')" \
    -c "SELECT tenancy.create_tenant('cs-b', 'B', '$B')" \
    -c "SELECT tenancy.bind_role('$LEGACY', 'cs-a')" \
    || bail "cannot set up $DB"

plan $PLAN
out=$(as "$APP" "-c tenancy.tenant_id=$B" "SELECT 'connected'")
like "PGOPTIONS -c tenancy.tenant_id is refused at connection" "$out" "FATAL: +only a verified tenant token can set the tenant"
isnt "and no session starts" "$(printf '%s\n' "$out" | grep -c '^connected$')" 1
out=$(as "$APP" "-c tenancy.tenant_id=" "SELECT coalesce(tenancy.current_tenant_text(), 'none')")
is "clearing it at connection is allowed" "$out" "none"
out=$(as "$TAP_USER" "-c tenancy.tenant_id=$B" "SELECT tenancy.current_tenant_text()")
is "a superuser may set it at connection" "$out" "$B"
out=$(as "$LEGACY" "" "SELECT tenancy.current_tenant_text()")
is "a bound role starts with its bound tenant in token mode" "$out" "$A"
out=$(as "$LEGACY" "-c tenancy.tenant_id=$B" "SELECT 'connected'")
like "a bound role cannot choose another tenant at connection" "$out" "FATAL: +role \"$LEGACY\" is bound to tenant \"$A\""

su "$DB" -c "ALTER ROLE $APP SET tenancy.tenant_id = '$B'" -c "ALTER DATABASE $DB SET tenancy.tenant_id = '$A'"
out=$(as "$APP" "" "SELECT coalesce(tenancy.current_tenant_text(), 'none')")
like "a role default is ignored at login with a WARNING" "$out" "WARNING: +only a verified tenant token can set the tenant"
is "as is the database default: two WARNINGs" "$(printf '%s\n' "$out" | grep -c 'WARNING: *only a verified tenant token')" 2
is "and no tenant is set" "$(printf '%s\n' "$out" | tail -n 1)" "none"
su "$DB" -c "ALTER ROLE $APP IN DATABASE $DB SET tenancy.context_source = 'any'"
out=$(as "$APP" "" "SELECT coalesce(tenancy.current_tenant_text(), 'none')")
is "in mode any, the role default applies" "$out" "$B"

# Token mode from the database's settings, which PostgreSQL applies after
# the connection options and the role's defaults: refused all the same.
su postgres -c "ALTER SYSTEM SET tenancy.context_source = 'any'" -c "SELECT pg_reload_conf()"
su "$DB" -c "ALTER ROLE $APP IN DATABASE $DB RESET tenancy.context_source" \
    -c "ALTER DATABASE $DB SET tenancy.context_source = 'token'"
wait_for 10 bash -c "[ \"\$(psql -X -At -h '$DIR' -p '$PORT' -U '$TAP_USER' -d postgres -c 'SHOW tenancy.context_source')\" = any ]" \
    || bail "the reload did not take"
out=$(as "$APP" "-c tenancy.tenant_id=$B" "SELECT 'connected'")
like "database-level token mode: PGOPTIONS is refused at connection" "$out" "FATAL: +only a verified tenant token can set the tenant"
out=$(as "$APP" "" "SELECT coalesce(tenancy.current_tenant_text(), 'none')")
is "and the role and database defaults are ignored, with two WARNINGs" "$(printf '%s\n' "$out" | grep -c 'WARNING: *only a verified tenant token')" 2
is "leaving no tenant" "$(printf '%s\n' "$out" | tail -n 1)" "none"
tap_end
