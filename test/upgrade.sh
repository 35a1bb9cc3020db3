#!/usr/bin/env bash
# TAP: upgrade paths of the extension (issue 15).  Every SQL change after a
# release ships as an upgrade script tenancy--A--B.sql; an upgraded database
# must have exactly the objects of a fresh install of the new version.
#
# Runs on make test's cluster (PGHOST, PGPORT, PGUSER: a superuser) in
# scratch databases of its own, dropped at the end.  The comparison is the
# text of test/catalog_snapshot.psql (members from pg_depend, routine
# definitions, volatility, security, settings, grants, tables, views,
# sequences, event triggers, comments, config dump, init privileges).
#
#  1. Self-test of the snapshot: two fresh installs give the same text, and
#     a change of a volatility, a grant, a comment, a column or an event
#     trigger's state gives a different one (the comparison can fail).
#  2. For each version A with an update path to the default version
#     (pg_extension_update_paths()): CREATE EXTENSION tenancy VERSION 'A',
#     ALTER EXTENSION tenancy UPDATE, snapshot; a fresh CREATE EXTENSION
#     tenancy, snapshot; identical.  With no upgrade script yet (only the
#     release being built exists) this prints a TAP skip saying so.
#  3. Key type of an upgraded database: an A database created with bigint
#     keys, updated by a session whose tenancy.tenant_type is uuid, keeps
#     bigint keys (tenants.id, memberships.tenant, the key sequence) and
#     matches a fresh bigint install.  Skipped likewise without a path.
#
#     The pattern every upgrade script follows: the key type of the database
#     being updated is the type of the registry's key column,
#
#         SELECT a.atttypid::pg_catalog.regtype FROM pg_catalog.pg_attribute a
#          WHERE a.attrelid = 'tenancy.tenants'::pg_catalog.regclass
#            AND a.attname = 'id';
#
#     never tenancy.key_type() nor current_setting('tenancy.tenant_type'):
#     those are the setting of the session running ALTER EXTENSION UPDATE,
#     which need not be the one in force at CREATE EXTENSION time.
#
#  SNAPSHOT_BASE=/path/to/an/old/tenancy--X.sql (optional): also compare a
#  fresh install from that script with a fresh install of the current build,
#  for each key type (uuid, bigint, text), the extension's version line
#  aside.  This is how a refactoring of the install script (the split into
#  sources) proves it changed nothing: keep the old script, build the new
#  one, run with SNAPSHOT_BASE=old.  The script is installed as version
#  'snapshot_base' (tenancy--snapshot_base.sql in the server's extension
#  directory) and removed afterwards; when that directory is not writable
#  by the user running the test (make test runs tests as postgres, the
#  sandbox belongs to root), copy it there yourself first:
#
#      cp old.sql "$SHAREDIR/extension/tenancy--snapshot_base.sql"
#      SNAPSHOT_BASE=old.sql TENANCY_SANDBOX=/tmp/sb REGRESS=none \
#          TAP=test/upgrade.sh scripts/test.sh
#
#  and the test uses it when it is identical to SNAPSHOT_BASE.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
HERE=$(cd "$(dirname "$0")" && pwd)
SNAPSHOT=$HERE/catalog_snapshot.psql
tap_tmpdir SNAPDIR tenancy-upgrade
dbs=()
placed_base=
psqlq() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
    local d
    for d in "${dbs[@]}"; do psqlq -d postgres -c "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1; done
    [ -n "$placed_base" ] && rm -f "$placed_base"
    return 0
}
tap_at_exit cleanup

# newdb NAME KEYTYPE [VERSION]: a scratch database with the extension.
newdb() {
    local db=$1 keytype=$2 version=${3:-}
    dbs+=("$db")
    psqlq -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null || return 1
    psqlq -d "$db" -c "SET tenancy.tenant_type = $keytype" \
          -c "CREATE EXTENSION tenancy${version:+ VERSION '$version'}" >/dev/null
}
# snap DB FILE
snap() { psqlq -d "$1" -f "$SNAPSHOT" > "$2"; }

default=$(psqlq -d postgres -c "SELECT default_version FROM pg_available_extensions WHERE name = 'tenancy'")
[ -n "$default" ] || bail "extension tenancy is not installed"

# --- 1. self-test of the snapshot ---------------------------------------------
newdb tn_upgrade_a uuid && newdb tn_upgrade_b uuid
ok $? "two fresh installs of $default"
snap tn_upgrade_a "$SNAPDIR/a"; snap tn_upgrade_b "$SNAPDIR/b"
same_file "$SNAPDIR/a" "$SNAPDIR/b" "two fresh installs give the same snapshot"
grep -q '^member function tenancy.set_tenant(text,boolean) type = function$' "$SNAPDIR/a" \
    && grep -q '^event_trigger tenancy_rls_forget_dropped event = sql_drop$' "$SNAPDIR/a" \
    && grep -q '^config tenancy.tenants condition = $' "$SNAPDIR/a"
ok $? "the snapshot lists members, event triggers and configuration tables"

# Each change, made in a transaction rolled back after the snapshot, must
# show in the snapshot.
changes=(
    "ALTER FUNCTION tenancy.key_type() VOLATILE|volatility"
    "GRANT EXECUTE ON FUNCTION tenancy.create_tenant(text, text, text) TO PUBLIC|a grant"
    "COMMENT ON TABLE tenancy.tables IS 'changed'|a comment"
    "ALTER TABLE tenancy.tables ADD COLUMN extra int|a column"
    "ALTER EVENT TRIGGER tenancy_rls_forget_dropped DISABLE|an event trigger's state"
    "CREATE OR REPLACE FUNCTION tenancy.tenant_slug_ok(s text) RETURNS boolean LANGUAGE sql AS 'SELECT true'; ALTER EXTENSION tenancy ADD FUNCTION tenancy.tenant_slug_ok(text)|a new member"
)
for c in "${changes[@]}"; do
    sql=${c%|*}; what=${c##*|}
    psqlq -d tn_upgrade_b -c "BEGIN" -c "$sql" -f "$SNAPSHOT" -c "ROLLBACK" > "$SNAPDIR/b2" 2>&1
    ! diff -q "$SNAPDIR/a" "$SNAPDIR/b2" >/dev/null
    ok $? "the snapshot shows $what"
done

# --- 2. every update path to the default version ------------------------------
sources=$(psqlq -d postgres -c "SELECT source FROM pg_extension_update_paths('tenancy')
                                 WHERE target = '$default' AND path IS NOT NULL
                                   AND source <> 'snapshot_base' ORDER BY source")
if [ -z "$sources" ]; then
    skip "no update path to $default yet (no tenancy--A--$default.sql): nothing to upgrade; the snapshot comparison above is what the harness will use"
    skip "key type kept by an upgrade: no update path to $default yet"
else
    i=0
    for src in $sources; do
        i=$((i + 1))
        newdb "tn_upgrade_from_$i" uuid "$src" \
            && psqlq -d "tn_upgrade_from_$i" -c "ALTER EXTENSION tenancy UPDATE" >/dev/null
        ok $? "CREATE EXTENSION tenancy VERSION '$src'; ALTER EXTENSION tenancy UPDATE"
        snap "tn_upgrade_from_$i" "$SNAPDIR/up"
        same_file "$SNAPDIR/up" "$SNAPDIR/a" "$src updated to $default has the objects of a fresh $default install"

        # --- 3. key type: the registry's, not the setting at update time
        newdb "tn_upgrade_big_$i" bigint "$src" \
            && psqlq -d "tn_upgrade_big_$i" -c "SET tenancy.tenant_type = bigint" \
                     -c "SELECT tenancy.create_tenant('one', 'One')" >/dev/null \
            && PGOPTIONS="-c tenancy.tenant_type=uuid" psqlq -d "tn_upgrade_big_$i" \
                     -c "ALTER EXTENSION tenancy UPDATE" >/dev/null
        ok $? "$src with bigint keys updated by a session whose tenant_type is uuid"
        got=$(psqlq -d "tn_upgrade_big_$i" -c "SELECT string_agg(format_type(atttypid, NULL), ',' ORDER BY attrelid::regclass::text)
                                               FROM pg_attribute WHERE (attrelid, attname) IN
                                               (('tenancy.tenants'::regclass, 'id'), ('tenancy.memberships'::regclass, 'tenant'))")
        check_keys=$?
        [ "$check_keys" = 0 ] && [ "$got" = "bigint,bigint" ]
        ok $? "the upgraded database keeps bigint keys (got: $got)"
        [ "$i" = 1 ] && newdb tn_upgrade_big_fresh bigint && snap tn_upgrade_big_fresh "$SNAPDIR/bigfresh"
        snap "tn_upgrade_big_$i" "$SNAPDIR/bigup"
        same_file "$SNAPDIR/bigup" "$SNAPDIR/bigfresh" "$src with bigint keys updated to $default has the objects of a fresh bigint install"
    done
fi

# --- SNAPSHOT_BASE: an old install script against the current build ------------
if [ -n "${SNAPSHOT_BASE:-}" ]; then
    [ -r "$SNAPSHOT_BASE" ] || bail "SNAPSHOT_BASE=$SNAPSHOT_BASE is not readable"
    extdir=$(psqlq -d postgres -c "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'")/extension
    target=$extdir/tenancy--snapshot_base.sql
    if [ -f "$target" ] && cmp -s "$target" "$SNAPSHOT_BASE"; then
        :   # placed by hand
    elif cp "$SNAPSHOT_BASE" "$target" 2>/dev/null; then
        placed_base=$target
    else
        bail "cannot write $target: copy SNAPSHOT_BASE there yourself (see the header of test/upgrade.sh)"
    fi
    for kt in uuid bigint text; do
        newdb "tn_upgrade_base_$kt" "$kt" snapshot_base && newdb "tn_upgrade_new_$kt" "$kt"
        ok $? "installs from $SNAPSHOT_BASE and from the current build ($kt keys)"
        snap "tn_upgrade_base_$kt" "$SNAPDIR/base.full"; snap "tn_upgrade_new_$kt" "$SNAPDIR/new.full"
        grep -v '^extension tenancy version = ' "$SNAPDIR/base.full" > "$SNAPDIR/base"
        grep -v '^extension tenancy version = ' "$SNAPDIR/new.full" > "$SNAPDIR/new"
        same_file "$SNAPDIR/base" "$SNAPDIR/new" "a fresh install from SNAPSHOT_BASE equals one from the current build ($kt keys)"
    done
else
    skip "SNAPSHOT_BASE not set: no old install script to compare with"
fi

echo "1..$TAP_N"
