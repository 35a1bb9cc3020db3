-- "Last change" of a table (issue 18): migration_overview.last_change and
-- report() move on a mode change (set_mode(), recorded as
-- tenancy.rls_tables.mode_changed_at) and on a rollout change
-- (tenancy.rollout_log), besides registration, enable_rls and contract
-- steps.  Each change runs in its own transaction and is compared with
-- that transaction's now().
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
CREATE TABLE rlc_orders (id int PRIMARY KEY, tenant_id uuid);
CREATE TABLE rlc_parts (id int, tenant_id uuid) PARTITION BY RANGE (id);
CREATE TABLE rlc_parts_1 PARTITION OF rlc_parts FOR VALUES FROM (0) TO (100);
SELECT tenancy.enable_rls('rlc_orders', mode => 'shadow') IS NOT NULL AS enabled;
SELECT tenancy.enable_rls('rlc_parts', mode => 'shadow') IS NOT NULL AS enabled;
-- Not changed since enable_rls(): no mode change recorded.
SELECT relation, mode_changed_at IS NULL AS never_changed FROM tenancy.rls_tables ORDER BY relation::text;
CREATE VIEW rlc_now AS
SELECT o.relation, o.last_change = now() AS overview_now, r.last_change = now() AS report_now,
       (SELECT t.mode_changed_at = now() FROM tenancy.rls_tables t WHERE t.relation = o.relation) AS mode_changed_now
  FROM tenancy.migration_overview o JOIN tenancy.report() r ON r.relation = o.relation
 WHERE o.relation::text LIKE 'rlc_%' ORDER BY o.relation::text;

-- set_mode(): the table's last change is now, the other table's is not.
BEGIN;
SELECT tenancy.set_mode('rlc_orders', 'enforce') IS NOT NULL AS changed;
SELECT * FROM rlc_now;
COMMIT;
-- The same mode again is no change.
BEGIN;
SELECT tenancy.set_mode('rlc_orders', 'enforce') IS NOT NULL AS changed;
SELECT * FROM rlc_now;
COMMIT;
-- A partitioned table: the root and every partition record the change.
BEGIN;
SELECT tenancy.set_mode('rlc_parts', 'migrating') IS NOT NULL AS changed;
SELECT * FROM rlc_now;
SELECT relation, mode, mode_changed_at = now() AS changed_now FROM tenancy.rls_tables
 WHERE root = 'rlc_parts'::regclass ORDER BY relation::text;
COMMIT;

-- Rollout changes: a tenant listed, a percentage, undo, clear.
BEGIN;
SELECT tenancy.set_tenant_mode('rlc_orders', ARRAY['acme'], 'shadow') IS NOT NULL AS changed;
SELECT * FROM rlc_now;
COMMIT;
BEGIN;
SELECT tenancy.set_rollout_percent('rlc_parts', 10) IS NOT NULL AS changed;
SELECT * FROM rlc_now;
COMMIT;
BEGIN;
SELECT tenancy.undo_rollout('rlc_orders') IS NOT NULL AS undone;
SELECT * FROM rlc_now;
COMMIT;
BEGIN;
SELECT tenancy.clear_rollout('rlc_parts') IS NOT NULL AS cleared;
SELECT * FROM rlc_now;
COMMIT;
-- A failed change moves nothing.
SELECT last_change AS before FROM tenancy.migration_overview WHERE relation = 'rlc_orders'::regclass \gset
SELECT tenancy.set_mode('rlc_orders', 'loose');
SELECT tenancy.set_tenant_mode('rlc_orders', ARRAY['nobody'], 'enforce');
SELECT last_change = :'before'::timestamptz AS unchanged FROM tenancy.migration_overview WHERE relation = 'rlc_orders'::regclass;
-- The newest of all: last_change is never older than any of its sources.
SELECT o.relation,
       o.last_change >= greatest(t.registered_at, r.enabled_at, r.mode_changed_at,
                                 (SELECT max(l.at) FROM tenancy.rollout_log l WHERE l.relation = o.relation)) AS newest
  FROM tenancy.migration_overview o JOIN tenancy.tables t USING (relation) JOIN tenancy.rls_tables r USING (relation)
 WHERE o.relation::text LIKE 'rlc_%' ORDER BY o.relation::text;

DROP VIEW rlc_now;
DROP TABLE rlc_orders, rlc_parts;
DROP EXTENSION tenancy;
