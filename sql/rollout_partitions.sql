-- Per-tenant rollout on a partitioned table (issue 18): every partition
-- carries the per-tenant policy (list and percentage), an enforced tenant
-- and a shadow tenant see and write what their mode says through the
-- parent and through a partition, a partition created after the rollout
-- gets it, the rollout functions refuse a partition (55000), and undo and
-- clear put the plain policy back on every partition.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
CREATE ROLE rop_app;
CREATE TABLE rop_events (id int, tenant_id uuid, body text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE rop_events_1 PARTITION OF rop_events FOR VALUES FROM (0) TO (100);
CREATE TABLE rop_events_2 PARTITION OF rop_events FOR VALUES FROM (100) TO (200);
CREATE INDEX ON rop_events (tenant_id);
INSERT INTO rop_events VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'acme 1'),
                              (2, '00000000-0000-0000-0000-0000000000b2', 'bolt 2'),
                              (101, '00000000-0000-0000-0000-0000000000a1', 'acme 101'),
                              (102, '00000000-0000-0000-0000-0000000000b2', 'bolt 102'),
                              (150, NULL, 'legacy 150');
GRANT SELECT, INSERT, UPDATE, DELETE ON rop_events, rop_events_1, rop_events_2 TO rop_app;
SELECT tenancy.enable_rls('rop_events', mode => 'shadow') IS NOT NULL AS enabled;
SELECT tenancy.reset_shadow_stats();

-- The policies of the whole tree, the marker naming the root.
CREATE VIEW rop_policies AS
SELECT polrelid::regclass AS relation, polname, pg_get_expr(polqual, polrelid) AS using_expr,
       pg_get_expr(polwithcheck, polrelid) AS check_expr
  FROM pg_policy WHERE polrelid::regclass::text LIKE 'rop_events%';
-- What a tenant sees through the parent and through each partition.
CREATE FUNCTION rop_seen(t text, OUT mode text, OUT parent text, OUT part_1 text, OUT part_2 text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenancy.set_tenant(t, false);
    mode := tenancy.rollout_current_mode('rop_events');
    SELECT string_agg(id::text, ',' ORDER BY id) INTO parent FROM rop_events;
    SELECT string_agg(id::text, ',' ORDER BY id) INTO part_1 FROM rop_events_1;
    SELECT string_agg(id::text, ',' ORDER BY id) INTO part_2 FROM rop_events_2;
END $$;
CREATE FUNCTION rop_seen_all() RETURNS TABLE (tenant text, mode text, parent text, part_1 text, part_2 text)
LANGUAGE sql AS $$
    SELECT t, (rop_seen(t)).* FROM unnest(ARRAY['acme', 'bolt']) t;
$$;

-- 1. The table in shadow mode; acme enforced by the list.
SELECT tenancy.set_tenant_mode('rop_events', ARRAY['acme'], 'enforce') IS NOT NULL AS changed;
SELECT * FROM rop_policies ORDER BY relation::text, polname;
SET ROLE rop_app;
SELECT * FROM rop_seen_all();
-- acme (enforce): its own rows only, through the parent and a partition.
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
INSERT INTO rop_events VALUES (3, '00000000-0000-0000-0000-0000000000b2', 'refused');
INSERT INTO rop_events_2 VALUES (103, '00000000-0000-0000-0000-0000000000b2', 'refused');
INSERT INTO rop_events VALUES (4, '00000000-0000-0000-0000-0000000000a1', 'acme 4') RETURNING id;
INSERT INTO rop_events_2 VALUES (104, '00000000-0000-0000-0000-0000000000a1', 'acme 104') RETURNING id;
UPDATE rop_events SET body = 'nope' WHERE id = 2 RETURNING id;
UPDATE rop_events_2 SET body = 'nope' WHERE id = 102 RETURNING id;
UPDATE rop_events_2 SET body = 'acme' WHERE id = 101 RETURNING id;
-- bolt (shadow): every row, and writes of acme's key go through (counted).
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
INSERT INTO rop_events VALUES (5, '00000000-0000-0000-0000-0000000000a1', 'shadow lets it through') RETURNING id;
INSERT INTO rop_events_2 VALUES (105, '00000000-0000-0000-0000-0000000000a1', 'shadow lets it through') RETURNING id;
UPDATE rop_events_1 SET body = 'shadow lets it through' WHERE id = 1 RETURNING id;
ROLLBACK;
RESET ROLE;
SELECT sum(writes_refused) AS bolt_writes_counted FROM tenancy.shadow_stats
 WHERE relation::text LIKE 'rop_events%';

-- The enforced tenant gets the plain equality policy on a partition too.
SET enable_seqscan = off;
SET ROLE rop_app;
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
EXPLAIN (COSTS OFF) SELECT body FROM rop_events_1;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
EXPLAIN (COSTS OFF) SELECT body FROM rop_events_1;
SELECT tenancy.clear_tenant() IS NOT NULL AS cleared;
RESET ROLE;
RESET enable_seqscan;

-- 2. A partition created after the rollout gets the per-tenant policy.
CREATE TABLE rop_events_3 PARTITION OF rop_events FOR VALUES FROM (200) TO (300);
GRANT SELECT, INSERT, UPDATE, DELETE ON rop_events_3 TO rop_app;
INSERT INTO rop_events VALUES (201, '00000000-0000-0000-0000-0000000000a1', 'acme 201'),
                              (202, '00000000-0000-0000-0000-0000000000b2', 'bolt 202');
SELECT relation, polname, using_expr, check_expr FROM rop_policies
 WHERE relation = 'rop_events_3'::regclass ORDER BY polname;
SELECT relation, root, mode FROM tenancy.rls_tables WHERE root = 'rop_events'::regclass ORDER BY relation::text;
CREATE FUNCTION rop_seen_3(t text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
    PERFORM tenancy.set_tenant(t, false);
    SELECT string_agg(id::text, ',' ORDER BY id) INTO r FROM rop_events_3;
    RETURN r;
END $$;
SET ROLE rop_app;
SELECT rop_seen_3('acme') AS acme_part_3, rop_seen_3('bolt') AS bolt_part_3;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
INSERT INTO rop_events_3 VALUES (203, '00000000-0000-0000-0000-0000000000b2', 'refused');
ROLLBACK;
SELECT tenancy.clear_tenant() IS NOT NULL AS cleared;
RESET ROLE;

-- 3. The rollout functions refuse a partition: the rollout is the root's.
SELECT count(*) AS log_before FROM tenancy.rollout_log \gset
SELECT tenancy.set_tenant_mode('rop_events_1', ARRAY['bolt'], 'enforce');
SELECT tenancy.set_tenant_mode_sql('rop_events_1', ARRAY['bolt'], 'enforce');
SELECT tenancy.set_rollout_percent('rop_events_2', 50);
SELECT tenancy.set_rollout_percent_sql('rop_events_2', 50);
SELECT tenancy.clear_rollout('rop_events_3');
SELECT tenancy.clear_rollout_sql('rop_events_3');
SELECT tenancy.undo_rollout('rop_events_1');
SELECT tenancy.undo_rollout_sql('rop_events_1');
SELECT tenancy.tenant_mode('rop_events_1', 'acme');
SELECT tenancy.rollout_record('percent', 'rop_events_1', NULL, 'enforce', 10, NULL);
SELECT count(*) - :log_before AS logged_by_errors FROM tenancy.rollout_log;
SELECT relation, tenant, mode FROM tenancy.rollout_tenants ORDER BY tenant;

-- 4. A percentage on the partitioned table: 100% enforce, acme listed in
-- shadow (the list wins over the percentage).
SELECT tenancy.set_rollout_percent('rop_events', 100) IS NOT NULL AS changed;
SELECT tenancy.set_tenant_mode('rop_events', ARRAY['acme'], 'shadow') IS NOT NULL AS changed;
SELECT relation, base_mode, percent, percent_mode, enforce_tenants, shadow_tenants FROM tenancy.rollout_state;
SELECT relation, count(*) FILTER (WHERE using_expr LIKE '%rollout_mode_is(''rop_events''::regclass, ''shadow''%') AS markers
  FROM rop_policies WHERE polname = 'tenancy_policy' GROUP BY relation ORDER BY relation::text;
SET ROLE rop_app;
SELECT * FROM rop_seen_all();
BEGIN;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
INSERT INTO rop_events_1 VALUES (6, '00000000-0000-0000-0000-0000000000a1', 'refused');
INSERT INTO rop_events VALUES (204, '00000000-0000-0000-0000-0000000000a1', 'refused');
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
INSERT INTO rop_events_1 VALUES (7, '00000000-0000-0000-0000-0000000000b2', 'shadow lets it through') RETURNING id;
ROLLBACK;
SELECT tenancy.clear_tenant() IS NOT NULL AS cleared;
RESET ROLE;

-- bolt migrating by the list: migrating mode's policies on every partition,
-- for bolt only (it sees the rows without a tenant, acme does not).
SELECT tenancy.set_tenant_mode('rop_events', ARRAY['bolt'], 'migrating') IS NOT NULL AS changed;
SELECT relation, count(*) AS legacy_policies FROM rop_policies
 WHERE polname LIKE 'tenancy_policy_legacy%' GROUP BY relation ORDER BY relation::text;
SET ROLE rop_app;
SELECT * FROM rop_seen_all();
SELECT rop_seen_3('bolt') AS bolt_part_3;
SELECT tenancy.clear_tenant() IS NOT NULL AS cleared;
RESET ROLE;
SELECT tenancy.undo_rollout('rop_events') IS NOT NULL AS undone;   -- bolt off the list
SELECT count(*) AS legacy_policies FROM rop_policies WHERE polname LIKE 'tenancy_policy_legacy%';

-- 5. undo, then clear: the plain policy on every partition again.
SELECT tenancy.undo_rollout('rop_events') IS NOT NULL AS undone;   -- acme back to enforce
SELECT tenancy.undo_rollout('rop_events') IS NOT NULL AS undone;   -- the 100%
SELECT relation, tenant, mode FROM tenancy.rollout_tenants ORDER BY tenant;
SELECT count(*) AS percentages FROM tenancy.rollouts;
SELECT tenancy.undo_rollout('rop_events') IS NOT NULL AS undone;   -- acme off the list: no rollout
SELECT count(*) AS listed FROM tenancy.rollout_tenants;
SELECT * FROM rop_policies ORDER BY relation::text, polname;
SET ROLE rop_app;
SELECT * FROM rop_seen_all();
RESET ROLE;
-- A new list and percentage, then clear_rollout().
SELECT tenancy.set_tenant_mode('rop_events', ARRAY['bolt'], 'enforce') IS NOT NULL AS changed;
SELECT tenancy.set_rollout_percent('rop_events', 50, 'shadow') IS NOT NULL AS changed;
SELECT count(*) FILTER (WHERE using_expr LIKE '%rollout_mode_is%') AS partitions_with_marker
  FROM rop_policies WHERE polname = 'tenancy_policy';
SELECT tenancy.clear_rollout('rop_events') IS NOT NULL AS cleared;
SELECT count(*) AS listed FROM tenancy.rollout_tenants;
SELECT count(*) AS percentages FROM tenancy.rollouts;
SELECT * FROM rop_policies ORDER BY relation::text, polname;
SELECT count(*) AS rollout_rows FROM tenancy.verify('rop_events') WHERE check_name = 'rollout';
SET ROLE rop_app;
SELECT * FROM rop_seen_all();
RESET ROLE;

DROP VIEW rop_policies;
DROP TABLE rop_events;
DROP FUNCTION rop_seen(text), rop_seen_all(), rop_seen_3(text);
RESET tenancy.tenant_id;
DROP ROLE rop_app;
DROP EXTENSION tenancy;
