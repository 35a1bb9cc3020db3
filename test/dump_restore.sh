#!/usr/bin/env bash
# TAP: backups (issue 15).  A pg_dump -Fc / pg_restore --create round trip
# of a migrated database (test/fixtures/dump_restore.sql: registry with an
# implicit tenant, memberships, registered tables owned by a non-superuser,
# policies in enforce, shadow and migrating mode, a partitioned table, a
# queued backfill job, contract steps, a bound legacy role) gives a
# database where verify() reports the same rows, the application role and
# the legacy role see the same rows, the extension's tables hold the same
# rows, policies, modes and event triggers are the same, and the sequences
# go on where they were (a new backfill job, a new contract step).
#
# The dump is restored under the original name (pg_restore --create), the
# original being renamed first: that is what carries the legacy role's
# binding (ALTER ROLE ... IN DATABASE ... SET tenancy.tenant_id, which
# pg_dump writes only with the database, i.e. for --create).
#
# Then the dump of the tables' owner (a non-superuser) with row_security
# on, the case users report as "query would be affected by row-level
# security policy": pg_dump sets row_security off and the owner is subject
# to the policies (tenancy forces row level security), so the owner's dump
# fails with that error; --enable-row-security "succeeds" but dumps only the
# rows the policy shows (none of the enforced tables with no tenant set):
# not a backup.  What works: a superuser, or a role with BYPASSRLS.
#
# Runs on make test's cluster (PGHOST, PGPORT, PGUSER: a superuser); makes
# its roles (tn_dr_*) and databases (tn_dr_*) and drops them at the end.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$TN_BINDIR
tap_tmpdir DUMPDIR tenancy-dump
chmod 755 "$DUMPDIR"
SRC=tn_dr_src ORIG=tn_dr_orig
ROLES="tn_dr_owner tn_dr_app tn_dr_legacy tn_dr_backup"
psqlq() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
drop_all() {
    local d r
    for d in $SRC $ORIG; do
        psqlq -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1
    done
    for r in $ROLES; do psqlq -d postgres -c "DROP ROLE IF EXISTS $r" >/dev/null 2>&1; done
    return 0
}
tap_at_exit drop_all

drop_all
for r in $ROLES; do psqlq -d postgres -c "CREATE ROLE $r LOGIN" || bail "cannot create role $r"; done
psqlq -d postgres -c "ALTER ROLE tn_dr_backup BYPASSRLS"
psqlq -d postgres -c "CREATE DATABASE $SRC" && psqlq -d $SRC -f "$HERE/fixtures/dump_restore.sql" > "$DUMPDIR/fixture.log" 2>&1
ok_file $? "a migrated database (test/fixtures/dump_restore.sql)" "$DUMPDIR/fixture.log"

# --- what must survive the round trip -------------------------------------------
tables="shop.customers shop.orders shop.notes shop.events shop.events_2024 shop.events_2025 shop.pending"
counts_sql=$(for t in $tables; do printf "SELECT '%s', count(*) FROM %s;\n" "$t" "$t"; done)
# facts DB PREFIX: one file per subject
facts() {
    local db=$1 p=$2
    # Shadow-mode counters are statistics in shared memory, not data: a
    # restored database starts them at zero, as pg_stat_*.  Reset, so that
    # verify()'s shadow_divergence compares what was dumped.
    psqlq -d "$db" -c "SELECT tenancy.reset_shadow_stats()" >/dev/null
    psqlq -d "$db" -c "SELECT check_name, relation::text, status, rows_affected, detail, fix FROM tenancy.verify()
                       ORDER BY 1, 2, 3, 5, 6" > "$p.verify" 2>&1
    psqlq -d "$db" > "$p.registry" 2>&1 <<'SQL'
SELECT 'tenants', t::text FROM tenancy.tenants t ORDER BY t.id;
SELECT 'tables', t::text FROM tenancy.tables t ORDER BY t.relation::text;
SELECT 'memberships', m::text FROM tenancy.memberships m ORDER BY m::text;
SELECT 'contract_log', c::text FROM tenancy.contract_log c ORDER BY c.id;
SELECT 'backfill_jobs', j::text FROM tenancy.backfill_jobs j ORDER BY j.id;
SELECT 'shared_tables', s::text FROM tenancy.shared_tables s ORDER BY s::text;
SELECT 'acknowledgements', a::text FROM tenancy.acknowledgements a ORDER BY a::text;
SELECT 'identity_sources', i::text FROM tenancy.identity_sources i ORDER BY i::text;
SQL
    psqlq -d "$db" > "$p.policies" 2>&1 <<'SQL'
SELECT 'rls_tables', r::text FROM tenancy.rls_tables r ORDER BY r.relation::text;
SELECT 'policy', schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check
  FROM pg_policies WHERE schemaname = 'shop' ORDER BY 2, 3, 4;
SELECT 'table', c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity
  FROM pg_class c WHERE c.relnamespace = 'shop'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 2;
SQL
    psqlq -d "$db" -c "SELECT evtname, evtevent, evtenabled, evtfoid::regprocedure, evttags::text
                       FROM pg_event_trigger ORDER BY 1" > "$p.evt" 2>&1
    {
        for tenant in acme globex; do
            echo "-- tenant $tenant"
            psqlq -U tn_dr_app -d "$db" -c "BEGIN" -c "SELECT tenancy.set_tenant('$tenant')" -c "$counts_sql" -c "COMMIT"
        done
        echo "-- no tenant"
        psqlq -U tn_dr_app -d "$db" -c "$counts_sql"
    } > "$p.app" 2>&1
    { psqlq -U tn_dr_legacy -d "$db" -c "SELECT current_setting('tenancy.tenant_id')" -c "$counts_sql"; } > "$p.legacy" 2>&1
}
facts $SRC "$DUMPDIR/before"
# sanity of the fixture: tenants see different rows, the legacy role is bound
[ "$(grep -c . "$DUMPDIR/before.verify")" -gt 10 ] \
    && [ "$(grep '^shop.customers|' "$DUMPDIR/before.app" | sort -u | wc -l)" = 3 ] \
    && grep -q '^00000000-0000-4000-8000-000000000001$' "$DUMPDIR/before.legacy" \
    && grep -q '^backfill_jobs|.*shop.pending.*queued' "$DUMPDIR/before.registry"
ok_file $? "the fixture: a verify() report, tenants see different rows, the legacy role is bound, a job is queued" "$DUMPDIR/before.app"

# --- the round trip ---------------------------------------------------------------
"$BIN/pg_dump" -Fc -d $SRC -f "$DUMPDIR/src.dump" > "$DUMPDIR/dump.log" 2>&1
ok_file $? "pg_dump -Fc as a superuser" "$DUMPDIR/dump.log"
psqlq -d postgres -c "ALTER DATABASE $SRC RENAME TO $ORIG" \
    && "$BIN/pg_restore" --create --exit-on-error -d postgres "$DUMPDIR/src.dump" > "$DUMPDIR/restore.log" 2>&1
ok_file $? "pg_restore --create into a new database (the original renamed)" "$DUMPDIR/restore.log"

facts $ORIG "$DUMPDIR/orig"
facts $SRC "$DUMPDIR/restored"
same_file "$DUMPDIR/orig.verify" "$DUMPDIR/restored.verify" "verify() gives the same report"
same_file "$DUMPDIR/orig.registry" "$DUMPDIR/restored.registry" "tenants, tables, memberships, contract log, jobs: the same rows"
same_file "$DUMPDIR/orig.policies" "$DUMPDIR/restored.policies" "the same policies, modes and row security flags"
same_file "$DUMPDIR/orig.evt" "$DUMPDIR/restored.evt" "the same event triggers, enabled"
same_file "$DUMPDIR/orig.app" "$DUMPDIR/restored.app" "the application role sees the same rows per tenant and with none"
same_file "$DUMPDIR/orig.legacy" "$DUMPDIR/restored.legacy" "the bound legacy role keeps its tenant and sees the same rows"

# --- the restored database goes on ---------------------------------------------
got=$(psqlq -d $SRC 2>&1 <<'SQL'
SET client_min_messages = warning;
CREATE TABLE shop.extra (id int PRIMARY KEY);
SELECT tenancy.add_tenant_column('shop.extra') IS NOT NULL;
SELECT tenancy.queue_backfill('shop.extra', tenant => 'acme') IS NOT NULL;
SELECT (SELECT max(id) FROM tenancy.backfill_jobs WHERE relation = 'shop.extra'::regclass)
       > (SELECT max(id) FROM tenancy.backfill_jobs WHERE relation <> 'shop.extra'::regclass);
SQL
)
[ "$(echo "$got" | tail -n 1)" = t ]
ok $? "a new backfill job after the restore gets a new id (the job sequence was dumped; got: $(echo "$got" | grep -m1 ERROR || echo "$got" | tail -n 1))"
got=$(psqlq -d $SRC -c "WITH b AS (SELECT pg_catalog.max(id) AS m FROM tenancy.contract_log) SELECT tenancy.log_step('shop.extra', 'note', 'SELECT 1', NULL) > (SELECT m FROM b)" 2>&1)
[ "$got" = t ]
ok $? "a new contract step after the restore gets a new id (got: $got)"
got=$(psqlq -d $SRC -c "CREATE TABLE shop.events_2026 PARTITION OF shop.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')" \
            -c "SELECT mode FROM tenancy.rls_tables WHERE relation = 'shop.events_2026'::regclass" 2>&1)
[ "$got" = enforce ]
ok $? "the restored event trigger covers a new partition (got: $got)"

# --- dumps by a non-superuser ------------------------------------------------------
# rows per table in a plain dump
copy_counts() { awk '/^COPY /{t=$2; c=0; next} /^\\\.$/{if (t != "") print t "|" c; t=""; next} t != ""{c++}' "$1" | sort; }
psqlq -d $ORIG -c "$counts_sql" | grep -v '^shop.events|' | sort > "$DUMPDIR/all_rows"

"$BIN/pg_dump" -U tn_dr_owner -n shop -d $ORIG -f "$DUMPDIR/owner.sql" > "$DUMPDIR/owner.log" 2>&1
rc=$?
[ $rc -ne 0 ] && grep -q 'query would be affected by row-level security policy for table' "$DUMPDIR/owner.log"
ok_file $? "the tables' owner (not a superuser): pg_dump fails with \"query would be affected by row-level security policy\"" "$DUMPDIR/owner.log"

"$BIN/pg_dump" -U tn_dr_owner -n shop --enable-row-security -d $ORIG -f "$DUMPDIR/owner_rls.sql" > "$DUMPDIR/owner_rls.log" 2>&1 \
    && copy_counts "$DUMPDIR/owner_rls.sql" > "$DUMPDIR/owner_rls.counts" \
    && ! diff -q "$DUMPDIR/all_rows" "$DUMPDIR/owner_rls.counts" >/dev/null \
    && grep -q '^shop.customers|0$' "$DUMPDIR/owner_rls.counts"
ok_file $? "the owner with --enable-row-security: the dump succeeds but misses the rows the policy hides (not a backup)" "$DUMPDIR/owner_rls.counts"

psqlq -d $ORIG -c "GRANT USAGE ON SCHEMA shop TO tn_dr_backup" -c "GRANT SELECT ON ALL TABLES IN SCHEMA shop TO tn_dr_backup"
"$BIN/pg_dump" -U tn_dr_backup -n shop --data-only -d $ORIG -f "$DUMPDIR/backup.sql" > "$DUMPDIR/backup.log" 2>&1 \
    && copy_counts "$DUMPDIR/backup.sql" > "$DUMPDIR/backup.counts"
ok_file $? "a BYPASSRLS role with SELECT dumps the tables" "$DUMPDIR/backup.log"
same_file "$DUMPDIR/all_rows" "$DUMPDIR/backup.counts" "and every row"

echo "1..$TAP_N"
