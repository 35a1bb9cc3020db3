#!/usr/bin/env bash
# TAP: squawk (the migration linter) over every statement tenancy generates,
# written exactly as a DBA runs a preview with \gexec: one statement per row,
# ';' appended.  One TAP line per generator; a violation fails it and prints
# squawk's report.  A rule that does not apply to a generator's statements is
# excluded only through a comment right above that generator in its SQL
# source (src/*.sql):   -- squawk: ignore <rule>: <reason>
# (make test's cluster; fixtures in databases of their own, dropped at the end)
set -u -o pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
SRC=${TN_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
SQUAWK=${TN_SQUAWK:-$SRC/.tools/node_modules/.bin/squawk}
DIR=$TN_WORK/squawk
mkdir -p "$DIR"
q() { local db=$1; shift; psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@" || bail "a fixture step failed in $db"; }
cleanup() {
    psql -X -q -d postgres -c 'DROP DATABASE IF EXISTS squawk_demo' -c 'DROP DATABASE IF EXISTS squawk_store' \
         -c 'DROP ROLE IF EXISTS squawk_legacy' >/dev/null 2>&1
}
tap_at_exit cleanup

# ignores GENERATOR: the rules excluded for it, comma-separated
ignores() {
    awk -v fn="$1" '
        /^-- squawk: ignore / { r = $4; sub(/:$/, "", r); block = block (block == "" ? "" : ",") r; next }
        /^CREATE (FUNCTION|PROCEDURE) tenancy\./ {
            name = $3; sub(/^tenancy\./, "", name); sub(/\(.*/, "", name)
            if (name == fn && block != "") print block
            block = ""; next }
        /^--/ { next }
        { block = "" }' "$SRC"/src/*.sql | paste -sd, -
}

# lint NAME GENERATOR: squawk over $DIR/NAME.sql
lint() {
    local file=$DIR/$1.sql gen=$2 ex out rc stmts
    stmts=$(grep -c ';[[:space:]]*$' "$file")
    ex=$(ignores "$gen")
    out=$("$SQUAWK" --pg-version=15 --reporter gcc ${ex:+--exclude="$ex"} "$file" 2>&1); rc=$?
    if [ "$stmts" -eq 0 ]; then
        skip "$1: the fixture gives it no statement"
    elif [ $rc -eq 0 ]; then
        pass "$1: $stmts statements, no squawk violation${ex:+ (ignored: $ex)}"
    else
        fail "$1: $stmts statements${ex:+ (ignored: $ex)}"
        printf '%s\n' "$out" | sed 's/^/#   /'
        sed 's/^/#   | /' "$file"
    fi
}

# gexec DB NAME QUERY: the rows of QUERY, one statement each, ';' appended
# where the row does not end with one (what \gexec sends)
gexec() {
    # a row may hold several lines (one text with several statements)
    q "$1" -R $'\x1e' -c "$3" \
        | awk 'BEGIN { RS = "\x1e" } { sub(/\n+$/, ""); if ($0 == "") next; if ($0 !~ /;[ \t]*$/) $0 = $0 ";"; print }' \
        >>"$DIR/$2.sql" || bail "$2: the generator failed"
}

plan 19
cleanup
psql -X -q -d postgres -c 'CREATE DATABASE squawk_demo' -c 'CREATE DATABASE squawk_store' -c 'CREATE ROLE squawk_legacy' >/dev/null

# --- the demo's uuid database, through the demo's steps ---------------------
q squawk_demo -f "$SRC/scripts/demo/01_sample_database.sql" >/dev/null
# This test lints the generated SQL; it does not test lock waits: keep
# autovacuum (which never yields to a 100 ms lock_timeout) off its tables,
# whose bulk load and backfill would start it right when the steps run.
q squawk_demo -c "ALTER TABLE projects SET (autovacuum_enabled = off)" \
              -c "ALTER TABLE tasks SET (autovacuum_enabled = off)" \
              -c "ALTER TABLE comments SET (autovacuum_enabled = off)" >/dev/null
q squawk_demo >/dev/null <<'SQL'
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('original', 'Original customer', '00000000-0000-4000-8000-000000000001');
SELECT tenancy.set_implicit_tenant('original');
SQL
D=squawk_demo
gexec $D add_tenant_column_sql "SELECT tenancy.add_tenant_column_sql(t) FROM unnest('{projects,tasks,comments}'::regclass[]) t"
gexec $D bind_role_sql "SELECT tenancy.bind_role_sql('squawk_legacy')"
q $D >/dev/null <<'SQL'
SELECT tenancy.add_tenant_column(t) FROM unnest('{projects,tasks,comments}'::regclass[]) t;
CALL tenancy.backfill('projects', source => 'tenancy.implicit_tenant()::uuid');
CALL tenancy.backfill('tasks', via => 'tasks_project_id_fkey');
CALL tenancy.backfill('comments', via => 'comments_task_id_fkey');
SQL
gexec $D policy_sql "SELECT tenancy.policy_sql(t, mode => 'shadow') FROM unnest('{projects,tasks,comments}'::regclass[]) t"
q $D -c "SELECT tenancy.enable_rls(t, mode => 'shadow') FROM unnest('{projects,tasks,comments}'::regclass[]) t" >/dev/null
# per-tenant rollout (issue 18): list, percentage, undo, clear
gexec $D set_tenant_mode_sql "SELECT tenancy.set_tenant_mode_sql(t, ARRAY['original'], 'enforce') FROM unnest('{projects,tasks,comments}'::regclass[]) t"
q $D -c "SELECT tenancy.set_tenant_mode(t, ARRAY['original'], 'enforce') FROM unnest('{projects,tasks,comments}'::regclass[]) t" >/dev/null
gexec $D set_rollout_percent_sql "SELECT tenancy.set_rollout_percent_sql(t, 25) FROM unnest('{projects,tasks,comments}'::regclass[]) t"
gexec $D undo_rollout_sql "SELECT tenancy.undo_rollout_sql(t) FROM unnest('{projects,tasks,comments}'::regclass[]) t"
gexec $D clear_rollout_sql "SELECT tenancy.clear_rollout_sql(t) FROM unnest('{projects,tasks,comments}'::regclass[]) t"
q $D -c "SELECT tenancy.clear_rollout(t) FROM unnest('{projects,tasks,comments}'::regclass[]) t" >/dev/null
gexec $D set_mode_sql "SELECT tenancy.set_mode_sql(t, 'enforce') FROM unnest('{projects,tasks,comments}'::regclass[]) t"
gexec $D disable_rls_sql "SELECT tenancy.disable_rls_sql(t) FROM unnest('{projects,tasks,comments}'::regclass[]) t"
q $D -c "SELECT tenancy.set_mode(t, 'enforce') FROM unnest('{projects,tasks,comments}'::regclass[]) t" >/dev/null
gexec $D enforce_not_null_sql "SELECT tenancy.enforce_not_null_sql(t) FROM unnest('{projects,tasks,comments}'::regclass[]) t"
q $D -c "CALL tenancy.enforce_not_null('projects')" -c "CALL tenancy.enforce_not_null('tasks')" \
     -c "CALL tenancy.enforce_not_null('comments')" >/dev/null
gexec $D scope_constraints_sql "SELECT tenancy.scope_constraints_sql()"
gexec $D scope_constraints_plan "SELECT sql FROM tenancy.scope_constraints_plan()"
gexec $D scope_constraints_plan_undo "SELECT undo_sql FROM tenancy.scope_constraints_plan() WHERE undo_sql IS NOT NULL"
gexec $D verify_fix "SELECT DISTINCT fix FROM tenancy.verify() WHERE status <> 'ok' AND fix IS NOT NULL AND fix NOT LIKE '%\\gexec%'"
# (rls_advisories() advises in prose; its index advice as a statement is
# verify()'s fix, linted above)
# the contract, as the demo runs it, then the rollback preview
# Its steps wait at most 100 ms for a lock (lock_timeout) and a busy machine
# may make one give up: the preview is rerun-safe and, made again from the
# catalog, holds only what is left, so run it again, as a DBA would.
contract_ok=1
for attempt in 1 2 3 4 5; do
    if psql -X -q -At -d $D -c "SELECT tenancy.scope_constraints_sql()" | sed -e '/^$/d' -e 's/$/;/' \
           | psql -X -q -At -v ON_ERROR_STOP=1 -d $D >/dev/null 2>"$DIR/contract.err"; then
        contract_ok=0; break
    fi
    grep -q 'lock timeout' "$DIR/contract.err" || break
    sleep $attempt
done
[ $contract_ok -eq 0 ] || bail "the contract failed: $(head -c 300 "$DIR/contract.err")"
gexec $D rollback_table_sql "SELECT tenancy.rollback_table_sql(t) FROM unnest('{comments,tasks,projects}'::regclass[]) t"
# a tenant move's plan (its statements, not its comments and placeholders) and the target's schema
gexec $D move_plan "SELECT sql FROM tenancy.move_plan('original', 'db2') WHERE sql NOT LIKE '--%' AND sql NOT LIKE '%<last_value at the source>%'"
gexec $D move_target_schema_sql "SELECT tenancy.move_target_schema_sql('original')"

# --- the store-rental database: bigint keys, partitions, derived tenants ----
S=squawk_store
q $S -c "ALTER DATABASE squawk_store SET tenancy.tenant_type = 'bigint'" >/dev/null
q $S -c 'CREATE EXTENSION tenancy' -f "$SRC/test/fixtures/store_rental.sql" >/dev/null
q $S >/dev/null <<'SQL'
SELECT tenancy.create_tenant('store-' || s, 'Store ' || s, s::text) FROM generate_series(1, 3) s;
SELECT tenancy.set_implicit_tenant('store-1');
SQL
gexec $S add_tenant_column_sql "SELECT tenancy.add_tenant_column_sql(t) FROM unnest('{rental.store,rental.staff,rental.customer,rental.inventory,rental.rental,rental.payment}'::regclass[]) t"
q $S >/dev/null <<'SQL'
SELECT tenancy.add_tenant_column(t) FROM unnest('{rental.store,rental.staff,rental.customer,rental.inventory,rental.rental}'::regclass[]) t;
UPDATE rental.store SET tenant_id = store_id;
UPDATE rental.staff SET tenant_id = store_id;
UPDATE rental.customer SET tenant_id = store_id;
UPDATE rental.inventory SET tenant_id = store_id;
UPDATE rental.rental r SET tenant_id = i.store_id FROM rental.inventory i WHERE i.inventory_id = r.inventory_id;
SQL
gexec $S derive_tenant_sql "SELECT tenancy.derive_tenant_sql('rental.payment', source => 't.staff_id / 10')"
gexec $S policy_sql "SELECT tenancy.policy_sql(t) FROM unnest('{rental.store,rental.customer,rental.rental}'::regclass[]) t"
gexec $S enforce_not_null_sql "SELECT tenancy.enforce_not_null_sql(t) FROM unnest('{rental.store,rental.staff,rental.customer,rental.inventory,rental.rental}'::regclass[]) t"
q $S -c "CALL tenancy.enforce_not_null('rental.store')" -c "CALL tenancy.enforce_not_null('rental.customer')" \
     -c "CALL tenancy.enforce_not_null('rental.inventory')" -c "CALL tenancy.enforce_not_null('rental.staff')" \
     -c "CALL tenancy.enforce_not_null('rental.rental')" >/dev/null
gexec $S scope_constraints_sql "SELECT tenancy.scope_constraints_sql()"
gexec $S scope_constraints_plan "SELECT sql FROM tenancy.scope_constraints_plan()"
gexec $S scope_constraints_plan_undo "SELECT undo_sql FROM tenancy.scope_constraints_plan() WHERE undo_sql IS NOT NULL"
gexec $S verify_fix "SELECT DISTINCT fix FROM tenancy.verify() WHERE status <> 'ok' AND fix IS NOT NULL AND fix NOT LIKE '%\\gexec%'"

lint add_tenant_column_sql add_tenant_column_sql
lint bind_role_sql bind_role_sql
lint policy_sql policy_sql
lint set_mode_sql set_mode_sql
lint set_tenant_mode_sql set_tenant_mode_sql
lint set_rollout_percent_sql set_rollout_percent_sql
lint undo_rollout_sql undo_rollout_sql
lint clear_rollout_sql clear_rollout_sql
lint disable_rls_sql disable_rls_sql
lint enforce_not_null_sql enforce_not_null_sql
lint scope_constraints_sql scope_constraints_sql
lint scope_constraints_plan scope_constraints_plan
lint scope_constraints_plan_undo scope_constraints_plan
lint verify_fix verify
lint rollback_table_sql rollback_table_sql
lint derive_tenant_sql derive_tenant_sql
lint move_plan move_plan
lint move_target_schema_sql move_target_schema_sql
if [ -x "$SQUAWK" ]; then pass "squawk $("$SQUAWK" --version | awk '{print $2}') at $SQUAWK"
else fail "no squawk at $SQUAWK (scripts/deps.sh installs it)"; fi
tap_end
