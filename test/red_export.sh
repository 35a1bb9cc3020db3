#!/usr/bin/env bash
# test/red_export.sh (red team, issue 19): a table owner must not be able to
# put a statement or a psql meta-command into the script scripts/tenancy-export
# writes, which a superuser then loads.  The owner of a registered table
# renames it (and a table it references) to names holding line breaks
# followed by what the exporter's line-based parsing would take for its own
# lines ("schema|...").  The export must load as the plain copy of the
# tenant's rows it is, the owner still no superuser, no shell command run.
#
# Shell TAP, run by `prove -e bash` from scripts/test.sh, on the harness
# cluster (PGHOST/PGPORT, PGUSER a superuser).
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"

SRC=tenancy_redexp_src
DST=tenancy_redexp_dst
A=e7000000-0000-4000-8000-0000000000a1
B=e7000000-0000-4000-8000-0000000000b2
EXPORT=$TN_SRC/scripts/tenancy-export
export PG_DUMP=$BINDIR/pg_dump

q() { local db=$1; shift; psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@" </dev/null; }
qin() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$1"; }
for db in $SRC $DST; do admin postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1; done
admin postgres -c "DROP ROLE IF EXISTS red_exp_owner" >/dev/null 2>&1
tap_at_exit "admin postgres -c 'DROP DATABASE IF EXISTS $SRC' -c 'DROP DATABASE IF EXISTS $DST' -c 'DROP ROLE IF EXISTS red_exp_owner' >/dev/null 2>&1"
admin postgres -c "CREATE DATABASE $SRC" -c "CREATE DATABASE $DST" -c "CREATE ROLE red_exp_owner LOGIN" >/dev/null \
    || bail "cannot create databases"
tap_tmpdir DIR red_export
chmod 777 "$DIR"
PWNED=$DIR/pwned

# The registered tables are created and registered by the DBA's migration;
# their owner then renames them (an owner may always rename its tables).
qin "$SRC" >/dev/null <<SQL || bail "cannot set up $SRC"
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('ex-a', 'A', '$A');
SELECT tenancy.create_tenant('ex-b', 'B', '$B');
GRANT CREATE ON SCHEMA public TO red_exp_owner;
SET ROLE red_exp_owner;
CREATE TABLE plans (id int PRIMARY KEY);
INSERT INTO plans VALUES (1);
CREATE TABLE accounts (id int PRIMARY KEY, plan_id int REFERENCES plans, tenant_id uuid);
INSERT INTO accounts VALUES (1, 1, '$A'), (2, 1, '$B'), (3, 1, '$A');
RESET ROLE;
SELECT tenancy.tables_register('accounts', 'tenant_id');
SET ROLE red_exp_owner;
-- a decoy, so that pg_dump -t on the first line of the name matches a table
CREATE TABLE "x" (id int);
ALTER TABLE accounts RENAME TO "x
schema|ALTER ROLE red_exp_owner SUPERUSER; -- ";
ALTER TABLE plans RENAME TO "x
schema|\\! touch $PWNED
y";
SQL

plan 5
"$EXPORT" -d "$SRC" -o "$DIR/a.sql" ex-a 2>"$DIR/export.err"
ok_file $? "tenancy-export writes the file" "$DIR/export.err"
psql -X -q -v ON_ERROR_STOP=1 -d "$DST" -f "$DIR/a.sql" >"$DIR/load.out" 2>&1
ok_file $? "a superuser loads it into an empty database" "$DIR/load.out"
is "the table owner is still no superuser" \
    "$(q postgres -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'red_exp_owner'")" "f"
if [ -e "$PWNED" ]; then fail "no shell command of the table owner ran at load" "$PWNED exists"
else pass "no shell command of the table owner ran at load"; fi
is "the tenant's rows, under the owner's names" \
    "$(q "$DST" -c "SELECT (SELECT string_agg(id::text, ',' ORDER BY id) FROM public.\"x
schema|ALTER ROLE red_exp_owner SUPERUSER; -- \"), (SELECT count(*) FROM public.\"x
schema|\\! touch $PWNED
y\")")" "1,3|1"

tap_end
