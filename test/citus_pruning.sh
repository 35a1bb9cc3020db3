#!/usr/bin/env bash
# One tenant, one shard on Citus (prune.c): a tenant-scoped query under the
# extension's policy is routed to the one shard that holds the tenant
# (EXPLAIN: Task Count: 1), where the common current_setting() policy runs
# on every shard; and a plan made for one tenant never runs under another
# (generic plans of prepared statements, PL/pgSQL's cached plans, a switch
# inside a transaction).  Coordinator and two workers, 8 shards.
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
source "$(dirname "${BASH_SOURCE[0]}")/lib/citus.bash"
citus_installed || citus_skip_all "no citus.so for $(pg_config --version)"
plan 25

tap_tmpdir DIR citus_pruning
citus_cluster_start "$DIR"
A=00000000-0000-0000-0000-0000000000a1
B=00000000-0000-0000-0000-0000000000b2

cq 0 >/dev/null <<SQL || bail "setup failed"
SET client_min_messages = warning;
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '$A');
SELECT tenancy.create_tenant('bolt', 'Bolt', '$B');
CREATE ROLE app LOGIN;
-- a quoted, 63-byte table name: the added qual is built from the policy's
-- nodes, never from SQL text
CREATE TABLE "Orders ""of""; \$\$ tenant xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" (
    tenant_id uuid NOT NULL, id int NOT NULL, amount int, PRIMARY KEY (tenant_id, id));
ALTER TABLE "Orders ""of""; \$\$ tenant xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" RENAME TO orders;
CREATE TABLE items (tenant_id uuid NOT NULL, order_id int NOT NULL, qty int);
-- the common policy of Citus users, for comparison
CREATE TABLE legacy (tenant_id uuid NOT NULL, id int NOT NULL, amount int);
SELECT create_distributed_table('orders', 'tenant_id');
SELECT create_distributed_table('items', 'tenant_id', colocate_with => 'orders');
SELECT create_distributed_table('legacy', 'tenant_id', colocate_with => 'orders');
INSERT INTO orders SELECT CASE WHEN g % 2 = 0 THEN '$A'::uuid ELSE '$B'::uuid END, g, g FROM generate_series(1, 100) g;
INSERT INTO items SELECT tenant_id, id, 1 FROM orders;
INSERT INTO legacy SELECT * FROM orders;
GRANT SELECT, INSERT, UPDATE, DELETE ON orders, items, legacy TO app;
SELECT tenancy.enable_rls('orders');
SELECT tenancy.enable_rls('items');
ALTER TABLE legacy ENABLE ROW LEVEL SECURITY;
CREATE POLICY legacy_tenant ON legacy USING (tenant_id = current_setting('app.tenant', true)::uuid);
-- a SQL function plans its statements together: the second one is planned
-- before the first switches the tenant
CREATE FUNCTION public.switch_then_total(t text) RETURNS bigint LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS \$\$
    SELECT set_config('tenancy.tenant_id', t, true);
    SELECT sum(amount) FROM public.orders;
\$\$;
CREATE FUNCTION public.order_total() RETURNS bigint LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS \$\$
DECLARE r bigint;
BEGIN
    SELECT sum(amount) INTO r FROM public.orders;
    RETURN r;
END \$\$;
SQL

# as_app TENANT SQL...: one session as app, the tenant set for the
# transaction with tenancy.set_tenant() (which carries it to the workers)
as_app() {
    local t=$1; shift
    cq 0 <<SQL
SET ROLE app;
BEGIN;
\\o /dev/null
SELECT tenancy.set_tenant('$t');
\\o
SET LOCAL app.tenant = '$t';
$*
COMMIT;
SQL
}
tasks() { grep -o 'Task Count: [0-9]*' | head -1; }

# --- routing --------------------------------------------------------------
is "under the tenant policy a tenant's aggregate is one task" \
   "$(as_app $A "EXPLAIN (COSTS OFF) SELECT count(*), sum(amount) FROM orders;" | tasks)" "Task Count: 1"
is "under the current_setting() policy the same query is one task per shard" \
   "$(as_app $A "EXPLAIN (COSTS OFF) SELECT count(*), sum(amount) FROM legacy;" | tasks)" "Task Count: 8"
is "a lookup by id is one task" \
   "$(as_app $A "EXPLAIN (COSTS OFF) SELECT * FROM orders WHERE id = 4;" | tasks)" "Task Count: 1"
is "a join of colocated tables is one task" \
   "$(as_app $A "EXPLAIN (COSTS OFF) SELECT count(*) FROM orders o JOIN items i ON i.tenant_id = o.tenant_id AND i.order_id = o.id;" | tasks)" "Task Count: 1"
is "an UPDATE is one task" \
   "$(as_app $A "EXPLAIN (COSTS OFF) UPDATE orders SET amount = amount WHERE id = 4;" | tasks)" "Task Count: 1"
is "tenancy.tenant_pruning = off: one task per shard" \
   "$(as_app $A "SET LOCAL tenancy.tenant_pruning = off; EXPLAIN (COSTS OFF) SELECT count(*) FROM orders;" | tasks)" "Task Count: 8"
like "the routed task carries the tenant as a constant" \
   "$(as_app $A "EXPLAIN (COSTS OFF, VERBOSE) SELECT count(*) FROM orders;" | tr '\n' ' ')" \
   "tenant_id = '$A'::uuid"

# --- rows -------------------------------------------------------------------
is "acme sees its 50 orders" "$(as_app $A "SELECT count(*), sum(amount) FROM orders;")" "50|2550"
is "bolt sees its 50 orders" "$(as_app $B "SELECT count(*), sum(amount) FROM orders;")" "50|2500"
is "the same rows as the current_setting() policy" \
   "$(as_app $B "SELECT count(*), sum(amount) FROM legacy;")" "50|2500"
is "joins see the tenant's rows only" \
   "$(as_app $A "SELECT count(*), count(DISTINCT i.tenant_id) FROM orders o JOIN items i ON i.tenant_id = o.tenant_id AND i.order_id = o.id;")" "50|1"
is "a CTE and a subquery: the tenant's rows, one task" \
   "$(as_app $B "WITH x AS MATERIALIZED (SELECT id FROM orders) SELECT count(*) FROM x WHERE id IN (SELECT id FROM orders WHERE amount > 50);") $(as_app $B "EXPLAIN (COSTS OFF) WITH x AS MATERIALIZED (SELECT id FROM orders) SELECT count(*) FROM x WHERE id IN (SELECT id FROM orders WHERE amount > 50);" | tasks)" \
   "25 Task Count: 1"
is "an UPDATE of another tenant's row changes nothing" \
   "$(as_app $A "UPDATE orders SET amount = 0 WHERE id = 3 RETURNING id;" | grep -c '^3$')" "0"
is "no tenant: nothing visible, no error" \
   "$(cq 0 -c "SET ROLE app" -c "SELECT count(*) FROM orders" 2>&1)" "0"
is "superuser: not specialised (one task per shard) and sees every row" \
   "$(cq 0 -c "SET tenancy.tenant_id = '$A'" -c "EXPLAIN (COSTS OFF) SELECT count(*) FROM orders" | tasks) $(cq 0 -c "SET tenancy.tenant_id = '$A'" -c "SELECT count(*) FROM orders")" \
   "Task Count: 8 100"

# --- a plan made for one tenant never runs under another --------------------
# One session: a prepared statement without parameters (always its generic
# plan) and one with a parameter (generic after five custom plans), each
# executed under alternating tenants, one transaction each.
out=$(cq 0 <<SQL
SET ROLE app;
PREPARE total AS SELECT sum(amount) FROM orders;
PREPARE upto(int) AS SELECT count(*) FROM orders WHERE id <= \$1;
-- until set_tenant propagates (cz-ctx)
BEGIN; SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL tenancy.tenant_id = '$A';
EXECUTE total; EXECUTE upto(100); EXECUTE upto(100); EXECUTE upto(100); EXECUTE upto(100); EXECUTE upto(100); EXECUTE upto(100); EXECUTE upto(100);
COMMIT;
BEGIN; SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL tenancy.tenant_id = '$B';
EXECUTE total; EXECUTE upto(100); EXECUTE upto(10);
COMMIT;
BEGIN; SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL tenancy.tenant_id = '$A';
EXECUTE total; EXECUTE upto(10);
COMMIT;
SELECT string_agg(name || ':' || (generic_plans > 0), ',' ORDER BY name) FROM pg_prepared_statements;
SQL
)
is "prepared statements, generic plans: each tenant its own rows" "$(echo $out)" \
   "2550 50 50 50 50 50 50 50 2500 50 5 2550 5 total:true,upto:true"

out=$(cq 0 <<SQL
SET ROLE app;
PREPARE total AS SELECT sum(amount) FROM orders;
-- until set_tenant propagates (cz-ctx)
BEGIN; SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL tenancy.tenant_id = '$A';
EXECUTE total;
EXPLAIN (COSTS OFF) EXECUTE total;
COMMIT;
BEGIN; SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL tenancy.tenant_id = '$B';
EXPLAIN (COSTS OFF, VERBOSE) EXECUTE total;
COMMIT;
SQL
)
like "the generic plan is one task" "$(echo "$out" | tasks)" "Task Count: 1"
like "after a switch the generic plan is made again for the new tenant" "$(echo "$out" | tr '\n' ' ')" \
   "tenant_id = '$B'::uuid"

is "PL/pgSQL cached plans: acme, bolt, acme" \
   "$(as_app $A "SELECT public.order_total();") $(as_app $B "SELECT public.order_total();") $(as_app $A "SELECT public.order_total();")" \
   "2550 2500 2550"
out=$(cq 0 <<SQL
SET ROLE app;
-- until set_tenant propagates (cz-ctx)
BEGIN; SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL tenancy.tenant_id = '$A';
SELECT public.order_total();
SET LOCAL tenancy.tenant_id = '$B';
SELECT public.order_total();
SELECT sum(amount) FROM orders;
SET LOCAL tenancy.tenant_id = '$A';
SELECT public.order_total();
COMMIT;
SQL
)
is "a switch within a transaction: plans made again each time" "$(echo $out)" "2550 2500 2500 2550"

out=$(cq 0 2>&1 <<SQL
SET ROLE app;
-- until set_tenant propagates (cz-ctx)
BEGIN; SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL tenancy.tenant_id = '$A';
DECLARE c CURSOR FOR SELECT id FROM orders ORDER BY id;
FETCH 1 FROM c;
SET LOCAL tenancy.tenant_id = '$B';
FETCH 1 FROM c;
COMMIT;
SQL
)
like "a cursor opened for one tenant is not fetched under another" "$out" "tenant changed"

like "a plan made before a switch it could not see is refused (55000), not run" \
   "$(as_app $A "\\set VERBOSITY verbose
SELECT public.switch_then_total('$B');" 2>&1 | tr '\n' ' ')" "ERROR: +55000: this plan was made for another tenant"

# Workers without the coordinator's tenant (set before propagation is on):
# the routed query carries the constant, and the workers' own policy still
# applies: nothing is shown.
is "the workers without the tenant: the routed query shows nothing" \
   "$(cq 0 <<SQL
SET ROLE app;
BEGIN;
SET LOCAL tenancy.tenant_id = '$A';
SET LOCAL citus.propagate_set_commands = 'local';
SELECT count(*) FROM orders WHERE id = 3;
COMMIT;
SQL
)" "0"

# The workers plan the shard queries: nothing is specialised there (auto
# specialises only Citus tables), so their plans are as before.
shard=$(cq 1 -c "SET citus.override_table_visibility = off" -c "SELECT relname FROM pg_class WHERE relname LIKE 'orders\_%' AND relkind = 'r' ORDER BY relname LIMIT 1")
is "a worker's plan of a shard query is not specialised" \
   "$([ -n "$shard" ] && cq 1 -c "SET ROLE app" -c "SET tenancy.tenant_id = '$A'" -c "EXPLAIN (COSTS OFF) SELECT count(*) FROM $shard" | grep -c "'$A'")" "0"

is "the pruning GUC is on every node, auto by default" \
   "$(for n in 0 1 2; do cq $n -c "SHOW tenancy.tenant_pruning"; done | tr '\n' ' ')" "auto auto auto "
tap_end
