#!/usr/bin/env bash
# test/red_cursor_hold.sh (red team): a cursor WITH HOLD opened under one
# tenant and fetched after a switch to another.  rls_guard.c refuses a
# cursor resumed after a switch (the executor hooks see the FETCH); a held
# cursor is run to completion at COMMIT into a tuplestore, and a later
# FETCH runs no executor, so the guard never sees it: behind a pooler in
# transaction mode the next client, under another tenant, reads the rows
# of the tenant that opened it.  Asserted: after a tenant change a
# persisted cursor WITH HOLD of another tenant cannot be read (55000), by
# FETCH, after RESET, or from PL/pgSQL; it can be closed; the tenant that
# opened it reads it.  A plain cursor (the guard's case) too.
#
# Shell TAP, run by `prove -e bash` from scripts/test.sh, on the harness
# cluster (PGHOST/PGPORT, PGUSER a superuser).
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"

DB=tenancy_redhold
admin postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
admin postgres -c "DROP ROLE IF EXISTS red_hold_app" >/dev/null 2>&1
tap_at_exit "admin postgres -c 'DROP DATABASE IF EXISTS $DB' -c 'DROP ROLE IF EXISTS red_hold_app' >/dev/null 2>&1"
admin postgres -c "CREATE DATABASE $DB" -c "CREATE ROLE red_hold_app LOGIN" >/dev/null || bail "cannot create the database"
psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL' || bail "setup failed"
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1');
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2');
CREATE TABLE o (id int PRIMARY KEY, tenant_id uuid, body text);
INSERT INTO o VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'acme 1'),
                     (3, '00000000-0000-0000-0000-0000000000b2', 'bolt 3');
GRANT SELECT ON o TO red_hold_app;
GRANT USAGE ON SCHEMA tenancy TO red_hold_app;
SELECT tenancy.enable_rls('o');
SQL

# as the application role: output, or "ERROR <SQLSTATE>" when it fails
app() {
    psql -X -q -At -v ON_ERROR_STOP=1 -v VERBOSITY=sqlstate -U red_hold_app -d "$DB" "$@" 2>&1 \
        | sed -E 's/^(psql:[^ ]* )?ERROR: +/ERROR /' | tr '\n' ' ' | sed 's/ $//'
}

plan 7
is "a plain cursor opened under acme, fetched under bolt: refused (55000)" \
   "$(app -c "BEGIN" -c "SELECT tenancy.set_tenant('acme') IS NOT NULL" -c "DECLARE c CURSOR FOR SELECT body FROM o" \
          -c "SELECT tenancy.set_tenant('bolt') IS NOT NULL" -c "FETCH ALL FROM c" -c "ROLLBACK")" "t t ERROR 55000"
is "a cursor WITH HOLD opened under acme, fetched under bolt: refused (55000)" \
   "$(app -c "BEGIN" -c "SELECT tenancy.set_tenant('acme') IS NOT NULL" -c "DECLARE c CURSOR WITH HOLD FOR SELECT body FROM o" -c "COMMIT" \
          -c "SELECT tenancy.set_tenant('bolt', false) IS NOT NULL" -c "FETCH ALL FROM c")" "t t ERROR 55000"
is "  ... and after RESET (no tenant): refused" \
   "$(app -c "SELECT tenancy.set_tenant('acme', false) IS NOT NULL" -c "DECLARE c CURSOR WITH HOLD FOR SELECT body FROM o" \
          -c "RESET tenancy.tenant_id" -c "FETCH ALL FROM c")" "t ERROR 55000"
is "  ... and read through a PL/pgSQL FETCH: refused" \
   "$(app -c "SELECT tenancy.set_tenant('acme', false) IS NOT NULL" -c "DECLARE c CURSOR WITH HOLD FOR SELECT body FROM o" \
          -c "SELECT tenancy.set_tenant('bolt', false) IS NOT NULL" \
          -c "DO \$\$ DECLARE r refcursor := 'c'; b text; BEGIN FETCH r INTO b; RAISE NOTICE '%', b; END \$\$")" "t t ERROR 55000"
is "the tenant that opened it reads it, and may close it after a switch" \
   "$(app -c "SELECT tenancy.set_tenant('acme', false) IS NOT NULL" -c "DECLARE c CURSOR WITH HOLD FOR SELECT body FROM o" \
          -c "FETCH ALL FROM c" -c "SELECT tenancy.set_tenant('bolt', false) IS NOT NULL" -c "CLOSE c" -c "SELECT 'closed'")" "t acme 1 t closed"
is "a cursor WITH HOLD opened and read under the same session tenant works" \
   "$(app -c "SELECT tenancy.set_tenant('bolt', false) IS NOT NULL" -c "BEGIN" -c "DECLARE c CURSOR WITH HOLD FOR SELECT body FROM o" -c "COMMIT" \
          -c "FETCH ALL FROM c")" "t bolt 3"
decls=(); for i in $(seq 1 17); do decls+=(-c "DECLARE c$i CURSOR WITH HOLD FOR SELECT body FROM o"); done
is "at most 16 cursors WITH HOLD over row-secured tables: the 17th is refused (54000)" \
   "$(app -c "SELECT tenancy.set_tenant('acme', false) IS NOT NULL" "${decls[@]}")" "t ERROR 54000"

tap_end
