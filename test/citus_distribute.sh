#!/usr/bin/env bash
# TAP (Citus, issue 17): from one node to many, and tenant isolation.  The
# store_rental fixture is migrated on the coordinator of a three-node
# cluster (tenant columns, backfill, NOT NULL, tenant-scoped constraints),
# plus a table with a hostile 63-byte name, a hostile tenant column and a
# surrogate primary key the contract phase keeps; then distributed by
# tenancy.distribute_sql() (\gexec): colocation in pg_dist_partition,
# reference tables, the rebuilt key, triggers, the row counts, the
# bookkeeping.  verify()'s Citus checks on a deliberately broken layout,
# the plan repairing it, tenant isolation with its row counts (to a node
# of its own too), and the undo back to local tables.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
source "$(dirname "${BASH_SOURCE[0]}")/lib/citus.bash"
citus_installed || citus_skip_all "test/citus_distribute.sh"
tap_tmpdir DIR citus_distribute

plan 51

citus_cluster_start "$DIR" "tenancy.tenant_type = 'bigint'"
FIXTURE=${TN_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}/test/fixtures/store_rental.sql
q() { cq 0 -c "SET client_min_messages = warning" "$@"; }
# psql's \gexec of a query's rows, on the coordinator
gexec() { printf '%s \\gexec\n' "$1" | q -v ON_ERROR_STOP=1 -f -; }
# the SQLSTATE of the error a statement raises on the coordinator
state() { cq 0 -v VERBOSITY=sqlstate -c "SET client_min_messages = warning" -c "$1" 2>&1 >/dev/null \
            | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\).*/\1/p' | head -1; }
# A 63-byte table name with a quote, a semicolon and a dollar tag, and a
# tenant column named with a quote and a space.
HOSTILE='no"te; DROP TABLE x; $t$ -- '$(printf 'n%.0s' $(seq 1 35))
[ ${#HOSTILE} -eq 63 ] || bail "hostile name is ${#HOSTILE} bytes"
HQ=$(cq 0 -c "SELECT quote_ident('$(printf '%s' "$HOSTILE" | sed "s/'/''/g")')")
# the name Citus can shard (55 bytes, see distribute_plan())
HQ55=$(cq 0 -c "SELECT quote_ident(left('$(printf '%s' "$HOSTILE" | sed "s/'/''/g")', 55))")
HCOL='te"n ant'

# ---- the migration on the coordinator -----------------------------------
q -c "CREATE EXTENSION tenancy" >/dev/null || bail "CREATE EXTENSION tenancy failed"
q -v ON_ERROR_STOP=1 -o /dev/null -f "$FIXTURE" >/dev/null 2>&1 || bail "store_rental fixture failed"
q -v ON_ERROR_STOP=1 -o /dev/null -f - <<SQL || bail "migration on the coordinator failed"
SELECT tenancy.create_tenant('store-' || s, 'Store ' || s, s::text) FROM generate_series(1, 3) s;
SELECT tenancy.set_implicit_tenant('store-1');
-- a surrogate key the contract phase keeps (verify() accepts it on one node)
CREATE TABLE rental.$HQ (id uuid DEFAULT gen_random_uuid() PRIMARY KEY, store_id integer NOT NULL, body text);
INSERT INTO rental.$HQ (store_id, body) SELECT 1 + g % 3, 'note ' || g FROM generate_series(1, 30) g;
SELECT tenancy.add_tenant_column(t) FROM unnest('{rental.store,rental.staff,rental.customer,rental.inventory,rental.rental,rental.payment}'::regclass[]) t;
SELECT tenancy.add_tenant_column('rental.$HQ', column_name => '$HCOL');
UPDATE rental.store SET tenant_id = store_id;
UPDATE rental.staff SET tenant_id = store_id;
UPDATE rental.customer SET tenant_id = store_id;
UPDATE rental.inventory SET tenant_id = store_id;
UPDATE rental.rental r SET tenant_id = i.store_id FROM rental.inventory i WHERE i.inventory_id = r.inventory_id;
UPDATE rental.rental r SET customer_id = r.customer_id - (c.store_id - r.tenant_id) * 20
  FROM rental.customer c WHERE c.customer_id = r.customer_id AND c.store_id <> r.tenant_id;
UPDATE rental.payment p SET tenant_id = r.tenant_id, customer_id = r.customer_id FROM rental.rental r WHERE r.rental_id = p.rental_id;
UPDATE rental.$HQ SET "te""n ant" = store_id;
SELECT tenancy.mark_shared(t) FROM unnest('{rental.language,rental.category,rental.country,rental.city,rental.film,rental.film_category}'::regclass[]) t;
SQL
for t in store staff customer inventory rental payment "$HQ"; do
    q -c "CALL tenancy.enforce_not_null('rental.$t')" >/dev/null 2>&1 || { q -c "CALL tenancy.enforce_not_null('rental.$t')"; bail "enforce_not_null($t) failed"; }
done
gexec "SELECT * FROM tenancy.scope_constraints_sql()" >/dev/null 2>&1 \
    || bail "the contract phase failed"
is "the contract phase left no step" "$(q -c "SELECT count(*) FROM tenancy.scope_constraints_plan()")" 0
is "the contract phase keeps the surrogate primary key of the hostile table" \
   "$(q -c "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'rental.$HQ'::regclass AND contype = 'p'")" \
   "PRIMARY KEY (id)"
COUNTS="SELECT string_agg(format('%s=%s', relation, (xpath('//c/text()', query_to_xml(format('SELECT count(*) AS c FROM %s', relation), false, false, '')))[1]), ' ' ORDER BY relation::text)
          FROM (SELECT relation FROM tenancy.tables UNION ALL SELECT relation FROM tenancy.shared_tables) t"
before=$(q -c "$COUNTS")

# ---- refusals -----------------------------------------------------------
is "a materialized view over the tables: refused (0A000)" "$(state "SELECT count(*) FROM tenancy.distribute_plan(true)")" 0A000
like "the refusal names it" "$(q -c "SELECT count(*) FROM tenancy.distribute_plan(true)" 2>&1)" 'has materialized views: rental\.rental_by_category'
q -c "DROP MATERIALIZED VIEW rental.rental_by_category" >/dev/null
is "a 63-byte table name: refused (42622)" "$(state "SELECT count(*) FROM tenancy.distribute_plan(true)")" 42622
q -c "ALTER TABLE rental.$HQ RENAME TO $HQ55" >/dev/null || bail "rename failed"
HQ=$HQ55
before=$(q -c "$COUNTS")
is "the fixture's audit triggers: refused without allow_triggers (0A000)" \
   "$(state "SELECT count(*) FROM tenancy.distribute_plan()")" 0A000
like "the refusal names the triggers" \
   "$(q -c "SELECT count(*) FROM tenancy.distribute_plan()" 2>&1)" 'has triggers: last_updated on rental\.'
q -c "SELECT tenancy.derive_tenant('rental.store', source => 't.store_id')" >/dev/null 2>&1 || bail "derive_tenant failed"
is "a derived-tenant trigger: refused even with allow_triggers (55000)" \
   "$(state "SELECT count(*) FROM tenancy.distribute_plan(allow_triggers => true)")" 55000
like "the refusal says why and how to undo it" \
   "$(q -c "SELECT count(*) FROM tenancy.distribute_plan(true)" 2>&1)" 'HINT:.*tenancy\.underive_tenant\('"'"'rental\.store'"'"'\)'
q -c "SELECT tenancy.underive_tenant('rental.store')" >/dev/null || bail "underive_tenant failed"
q -c "ALTER TABLE rental.$HQ ALTER COLUMN \"te\"\"n ant\" DROP NOT NULL" >/dev/null
is "a nullable tenant column: refused (55000)" "$(state "SELECT count(*) FROM tenancy.distribute_plan(true)")" 55000
q -c "ALTER TABLE rental.$HQ ALTER COLUMN \"te\"\"n ant\" SET NOT NULL" >/dev/null
q -c "CREATE TABLE rental.local_parent (id integer PRIMARY KEY); ALTER TABLE rental.staff ADD COLUMN lp integer REFERENCES rental.local_parent" >/dev/null
is "a foreign key to a table neither registered nor shared: refused (55000)" \
   "$(state "SELECT count(*) FROM tenancy.distribute_plan(true)")" 55000
q -c "ALTER TABLE rental.staff DROP COLUMN lp; DROP TABLE rental.local_parent" >/dev/null
def=$(q -c "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'payment_p2022_02_staff_id_fkey'")
q -c "ALTER TABLE rental.payment_p2022_02 DROP CONSTRAINT payment_p2022_02_staff_id_fkey" >/dev/null
is "a foreign key on some partitions only: refused (0A000)" "$(state "SELECT count(*) FROM tenancy.distribute_plan(true)")" 0A000
q -c "ALTER TABLE rental.payment_p2022_02 ADD CONSTRAINT payment_p2022_02_staff_id_fkey $def" >/dev/null || bail "could not restore the key"
is "nothing was distributed by the refusals" "$(q -c "SELECT count(*) FROM pg_dist_partition")" 0

# ---- the plan and its run -----------------------------------------------
plan_out=$(q -c "SELECT step || ' ' || action || ' ' || relation FROM tenancy.distribute_plan(true) ORDER BY step")
first_ref=$(printf '%s\n' "$plan_out" | grep -n create_reference_table | head -1 | cut -d: -f1)
last_dist=$(printf '%s\n' "$plan_out" | grep -n create_distributed_table | tail -1 | cut -d: -f1)
like "the plan: payment's partition keys inherited first" "$(printf '%s\n' "$plan_out" | head -3 | tr '\n' '|')" \
     '^1 inherit_partition_foreign_key rental\.payment\|2 inherit_partition_foreign_key rental\.payment\|3 inherit_partition_foreign_key rental\.payment\|$'
like "the plan rebuilds the surrogate key of the hostile table" "$plan_out" "rebuild_surrogate_key rental\.\"no\"\"te"
like "the plan detaches the keys to shared tables and reattaches them" \
     "$(printf '%s\n' "$plan_out" | grep -c 'detach_shared_foreign_key') $(printf '%s\n' "$plan_out" | grep -c 'reattach_shared_foreign_key')" '^3 3$'
ok "$([ -n "$first_ref" ] && [ -n "$last_dist" ] && [ "$last_dist" -lt "$first_ref" ]; echo $?)" \
   "the plan distributes the registered tables, then the shared ones"
is "the first registered table anchors a new colocation group, the six others colocate with it" \
   "$(q -c "SELECT sql FROM tenancy.distribute_plan(true) WHERE action = 'create_distributed_table' ORDER BY step" \
      | grep -o "colocate_with => '.*$" | sort | uniq -c | awk '{printf "%s ", $1}')" "1 6 "
preview=$(q -c "SELECT * FROM tenancy.distribute_sql(true)")
like "the preview sets its timeouts first" "$(printf '%s\n' "$preview" | head -2 | tr '\n' '|')" "^SET lock_timeout = '100ms'\|SET statement_timeout = 0\|$"
is "a preview changes nothing" "$(q -c "SELECT count(*) FROM pg_dist_partition")" 0
out=$(gexec "SELECT * FROM tenancy.distribute_sql(allow_triggers => true)" 2>&1)
rc=$?; ok $rc "distribute_sql(allow_triggers => true) \\gexec runs"; [ $rc -eq 0 ] || diag "$(printf '%s\n' "$out" | grep -B3 -A6 ERROR | head -40)"
is "every registered table is distributed by its tenant column, in one colocation group" \
   "$(q -c "SELECT count(*) || ' ' || count(DISTINCT p.colocationid) FROM tenancy.tables t JOIN pg_dist_partition p ON p.logicalrelid = t.relation
             WHERE p.partmethod = 'h' AND column_to_column_name(p.logicalrelid, p.partkey) = t.column_name")" "7 1"
is "every shared table is a reference table" \
   "$(q -c "SELECT count(*) FROM tenancy.shared_tables s JOIN pg_dist_partition p ON p.logicalrelid = s.relation WHERE p.partmethod = 'n' AND p.repmodel = 't'")" 6
is "the hostile table's key now includes its tenant column" \
   "$(q -c "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'rental.$HQ'::regclass AND contype = 'p'")" \
   'PRIMARY KEY ("te""n ant", id)'
is "the keys to shared tables are back, validated" \
   "$(q -c "SELECT string_agg(conrelid::regclass || ':' || conname || ':' || convalidated, ' ' ORDER BY conrelid::regclass::text, conname)
             FROM pg_constraint WHERE contype = 'f' AND confrelid IN ('rental.city'::regclass, 'rental.film'::regclass) AND conrelid IN (SELECT relation FROM tenancy.tables)")" \
   "rental.customer:customer_city_id_fkey:true rental.inventory:inventory_film_id_fkey:true rental.store:store_city_id_fkey:true"
is "every row is still there (counted through the coordinator)" "$(q -c "$COUNTS")" "$before"
is "the audit triggers fire on the shards" \
   "$(q -c "UPDATE rental.store SET name = name || '' WHERE tenant_id = 2 AND store_id = 2; SELECT count(*) FROM rental.store WHERE tenant_id = 2 AND last_update > now() - interval '1 minute'")" 1
is "a rerun of the plan has nothing left" "$(q -c "SELECT count(*) FROM tenancy.distribute_plan(true)")" 0
is "verify(): every Citus check ok" \
   "$(q -c "SELECT string_agg(DISTINCT check_name || ':' || status, ' ') FROM tenancy.verify() WHERE check_name LIKE 'citus%'")" \
   "citus_colocation:ok citus_context:ok citus_distribution:ok citus_policy:ok citus_reference_table:ok"

# ---- a deliberately broken layout ---------------------------------------
q -v ON_ERROR_STOP=1 -o /dev/null -f - <<'SQL' || bail "the broken layout could not be made"
SET citus.enable_unsafe_triggers = on;
CREATE TABLE rental.wrongcol (id integer, body text);
CREATE TABLE rental.loose (id integer, body text);
CREATE TABLE rental.tag (tag_id integer PRIMARY KEY, name text);
CREATE TABLE rental.localonly (id integer, body text);
SELECT tenancy.add_tenant_column(t) FROM unnest('{rental.wrongcol,rental.loose,rental.localonly}'::regclass[]) t;
INSERT INTO rental.wrongcol SELECT g, 'w' || g, 1 + g % 3 FROM generate_series(1, 12) g;
INSERT INTO rental.loose SELECT g, 'l' || g, 1 + g % 3 FROM generate_series(1, 12) g;
SELECT tenancy.mark_shared('rental.tag');
ALTER TABLE rental.wrongcol ALTER COLUMN tenant_id SET NOT NULL;
ALTER TABLE rental.loose ALTER COLUMN tenant_id SET NOT NULL;
ALTER TABLE rental.localonly ALTER COLUMN tenant_id SET NOT NULL;
SELECT create_distributed_table('rental.wrongcol', 'id');
SELECT create_distributed_table('rental.loose', 'tenant_id', colocate_with => 'none');
CREATE POLICY sub ON rental.localonly USING (tenant_id IN (SELECT 1));
SQL
report=$(q -c "SELECT check_name || ' ' || relation || ' ' || status FROM tenancy.verify() WHERE check_name LIKE 'citus%' AND status <> 'ok' ORDER BY 1")
expect "verify(): the Citus checks fire on each broken table" \
"citus_colocation rental.loose failure
citus_distribution rental.localonly failure
citus_distribution rental.wrongcol failure
citus_policy rental.localonly failure
citus_reference_table rental.tag failure" "$report"
like "citus_distribution names the column it is distributed by, and the fix" \
     "$(q -c "SELECT detail || ' / ' || fix FROM tenancy.verify() WHERE check_name = 'citus_distribution' AND relation = 'rental.wrongcol'::regclass")" \
     "distributed by id, not by its tenant column tenant_id.*alter_distributed_table\('rental.wrongcol', distribution_column => 'tenant_id'"
is "a policy with a subquery: the plan refuses (0A000)" "$(state "SELECT count(*) FROM tenancy.distribute_plan(true)")" 0A000
q -c "DROP POLICY sub ON rental.localonly" >/dev/null
is "the plan repairs the rest: alter wrongcol and loose, distribute localonly, reference tag" \
   "$(q -c "SELECT string_agg(action || ' ' || relation, ', ' ORDER BY step) FROM tenancy.distribute_plan(true)")" \
   "create_distributed_table rental.localonly, alter_distributed_table rental.loose, alter_distributed_table rental.wrongcol, create_reference_table rental.tag"
old_oid=$(q -c "SELECT 'rental.wrongcol'::regclass::oid")
is "CALL tenancy.distribute() inside a transaction block: 25001" "$(state "BEGIN; CALL tenancy.distribute(true); COMMIT")" 25001
out=$(q -c "CALL tenancy.distribute(allow_triggers => true)" 2>&1)
rc=$?; ok $rc "CALL tenancy.distribute() runs the repair, a step a transaction"; [ $rc -eq 0 ] || diag "$(printf '%s\n' "$out" | grep -B3 -A6 ERROR | head -40)"
isnt "alter_distributed_table rebuilt wrongcol (a new OID)" "$(q -c "SELECT 'rental.wrongcol'::regclass::oid")" "$old_oid"
is "the bookkeeping follows the rebuilt tables (citus_remap)" \
   "$(q -c "SELECT count(*) FROM tenancy.tables t JOIN pg_class c ON c.oid = t.relation")" 10
is "verify(): every Citus check ok again" \
   "$(q -c "SELECT count(*) FROM tenancy.verify() WHERE check_name LIKE 'citus%' AND status <> 'ok'")" 0

# ---- isolating a large tenant -------------------------------------------
like "isolate_tenant_sql(): the preview" \
     "$(q -c "SELECT * FROM tenancy.isolate_tenant_sql('rental.store', 'store-2', shard_transfer_mode => 'block_writes')")" \
     "^SELECT pg_catalog.isolate_tenant_to_new_shard\('rental.store', '2', 'CASCADE', shard_transfer_mode => 'block_writes'\)$"
iso=$(q -c "SELECT relation || ' ' || rows_before || ' ' || rows_after || ' ' || isolated FROM tenancy.isolate_tenant('rental.store', 'store-2', shard_transfer_mode => 'block_writes') ORDER BY relation::text" 2>&1)
is "isolate_tenant(): each of the 10 colocated tables' rows of store-2, the same before and after, in a shard of its own" \
   "$(printf '%s\n' "$iso" | awk '$(NF-2) == $(NF-1) && $NF == "true" {n++} END {print n+0 "/" NR}')" "10/10" || diag "$iso"
like "isolate_tenant(): store-2's stores, customers and rentals counted" "$(printf '%s\n' "$iso" | tr '\n' '|')" \
     'rental\.customer 20 20 true\|.*rental\.rental 200 200 true\|.*rental\.store 1 1 true\|'
is "tenant_shards() after the commit: every new shard of store-2 holds exactly store-2's rows" \
   "$(q -c "SELECT count(*) FILTER (WHERE isolated AND tenant_rows = rows_in_shard) || '/' || count(*) FROM tenancy.tenant_shards('rental.store', 'store-2')")" "10/10"
is "the new shard of store holds one hash value only" \
   "$(q -c "SELECT shardminvalue = shardmaxvalue FROM pg_dist_shard WHERE shardid = get_shard_id_for_distribution_column('rental.store', 2)")" t
port2=${CITUS_PORT[2]}
out=$(gexec "SELECT * FROM tenancy.isolate_tenant_sql('rental.store', 'store-3', '127.0.0.1', $port2, 'block_writes')" 2>&1)
rc=$?; ok $rc "isolate_tenant_sql() with a node, \\gexec: isolate store-3, then move its shards"; [ $rc -eq 0 ] || diag "$(printf '%s\n' "$out" | grep -A6 ERROR | head -20)"
is "tenant_shards(): store-3's shards, all 10 on that node, isolated, each with all of store-3's rows" \
   "$(q -c "SELECT count(*) FILTER (WHERE node = '127.0.0.1:$port2' AND isolated AND tenant_rows = rows_in_shard) || '/' || count(*) FROM tenancy.tenant_shards('rental.store', 'store-3')")" "10/10"
is "an unknown tenant: 42704 (tenant_key())" "$(state "SELECT * FROM tenancy.isolate_tenant_sql('rental.store', 'no-such-store')")" 42704
is "a shared table cannot be isolated: 55000" "$(state "SELECT * FROM tenancy.isolate_tenant_sql('rental.film', 'store-1')")" 55000
is "every row is still there after the isolations" "$(q -c "$COUNTS" | sed 's/ rental\.\(localonly\|loose\|tag\|wrongcol\)=[0-9]*//g')" "$before"

# ---- the undo -----------------------------------------------------------
out=$(gexec "SELECT * FROM tenancy.undistribute_sql(true)" 2>&1)
rc=$?; ok $rc "undistribute_sql(true) \\gexec runs"; [ $rc -eq 0 ] || diag "$(printf '%s\n' "$out" | grep -B3 -A6 ERROR | head -40)"
is "no table of the schema is a Citus table any more" "$(q -c "SELECT count(*) FROM pg_dist_partition")" 0
is "the bookkeeping follows the local tables again" \
   "$(q -c "SELECT count(*) FROM tenancy.tables t JOIN pg_class c ON c.oid = t.relation") $(q -c "SELECT count(*) FROM tenancy.shared_tables t JOIN pg_class c ON c.oid = t.relation")" "10 7"
tap_end
