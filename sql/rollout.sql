-- Per-tenant rollout (issue 18): a table's mode per tenant, by list and by
-- a stable percentage of tenants; previews, the log and undo; plans
-- specialised to a tenant's mode never run under another mode.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
SELECT tenancy.create_tenant('corp', 'Corp', '00000000-0000-0000-0000-0000000000c3') IS NOT NULL AS created;
CREATE ROLE rollout_app;
CREATE ROLE rollout_stranger;
CREATE TABLE orders (id int PRIMARY KEY, tenant_id uuid, body text);
CREATE INDEX orders_tenant ON orders (tenant_id);
INSERT INTO orders VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'acme 1'),
                          (2, '00000000-0000-0000-0000-0000000000a1', 'acme 2'),
                          (3, '00000000-0000-0000-0000-0000000000b2', 'bolt 3'),
                          (4, '00000000-0000-0000-0000-0000000000c3', 'corp 4'),
                          (5, NULL, 'legacy 5');
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO rollout_app, rollout_stranger;
SELECT tenancy.enable_rls('orders', mode => 'shadow') IS NOT NULL AS enabled;
SELECT tenancy.reset_shadow_stats();

-- What each tenant sees, as the application role.
-- seen() switches the tenant between its statements: its cached plan is
-- replanned when the mode differs.
CREATE FUNCTION seen(t text, OUT mode text, OUT sees text) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenancy.set_tenant(t, false);
    mode := tenancy.rollout_current_mode('orders');
    SELECT string_agg(id::text, ',' ORDER BY id) INTO sees FROM orders;
END $$;
CREATE FUNCTION seen_all() RETURNS TABLE (tenant text, mode text, sees text) LANGUAGE sql AS $$
    SELECT t, (seen(t)).* FROM unnest(ARRAY['acme', 'bolt', 'corp']) t;
$$;

-- 1. Shadow for all: every tenant sees every row.
SET ROLE rollout_app;
SELECT * FROM seen_all();
RESET ROLE;

-- 2. One early tenant enforced: the preview, then the change.
SELECT tenancy.set_tenant_mode_sql('orders', ARRAY['acme'], 'enforce');
SELECT count(*) AS nothing_recorded_by_preview FROM tenancy.rollout_tenants;
SELECT tenancy.set_tenant_mode('orders', ARRAY['acme'], 'enforce') IS NOT NULL AS changed;
SELECT relation, tenant, mode FROM tenancy.rollout_tenants ORDER BY tenant;
SELECT polname, pg_get_expr(polqual, polrelid) AS using_expr FROM pg_policy WHERE polrelid = 'orders'::regclass ORDER BY polname;
SET ROLE rollout_app;
SELECT * FROM seen_all();
-- acme (enforce) cannot write bolt's row; bolt (shadow) can, and it is counted.
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
INSERT INTO orders VALUES (10, '00000000-0000-0000-0000-0000000000b2', 'refused');
INSERT INTO orders VALUES (11, '00000000-0000-0000-0000-0000000000a1', 'acme 11');
UPDATE orders SET body = 'nope' WHERE id = 3 RETURNING id;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
INSERT INTO orders VALUES (12, '00000000-0000-0000-0000-0000000000a1', 'shadow lets it through') RETURNING id;
UPDATE orders SET body = 'shadow lets it through' WHERE id = 1 RETURNING id;
ROLLBACK;
RESET ROLE;
-- bolt's two writes of acme's rows are counted as refusals enforce mode would make.
SELECT writes_refused FROM tenancy.shadow_stats WHERE relation = 'orders'::regclass;

-- The enforced tenant gets the plain equality policy (index scan, no
-- shadow function); the shadow tenant the shadow function.
SET enable_seqscan = off;
SET ROLE rollout_app;
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
EXPLAIN (COSTS OFF) SELECT body FROM orders;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
EXPLAIN (COSTS OFF) SELECT body FROM orders;
RESET ROLE;
RESET enable_seqscan;

-- 3. Every combination on one table: acme enforced, bolt shadow (the
-- table's mode), corp migrating (sees its rows and those without a tenant).
SELECT tenancy.set_tenant_mode('orders', ARRAY['corp'], 'migrating') IS NOT NULL AS changed;
SELECT polname FROM pg_policy WHERE polrelid = 'orders'::regclass ORDER BY polname;
SET ROLE rollout_app;
SELECT * FROM seen_all();
BEGIN;
SELECT tenancy.set_tenant('corp') IS NOT NULL AS set;
INSERT INTO orders VALUES (13, '00000000-0000-0000-0000-0000000000a1', 'refused for corp');
ROLLBACK;
RESET ROLE;
-- The table in enforce mode, bolt parked in shadow, corp migrating.
SELECT tenancy.set_mode('orders', 'enforce') IS NOT NULL AS changed;
SELECT tenancy.set_tenant_mode('orders', ARRAY['bolt'], 'shadow') IS NOT NULL AS changed;
SET ROLE rollout_app;
SELECT * FROM seen_all();
SELECT tenancy.clear_tenant() IS NOT NULL AS cleared;
SELECT count(*) AS no_tenant_sees FROM orders;
RESET ROLE;

-- 4. A tenant moved back: acme to shadow, then off the list (the table's mode).
SELECT tenancy.set_tenant_mode('orders', ARRAY['acme'], 'shadow') IS NOT NULL AS changed;
SET ROLE rollout_app;
SELECT * FROM seen_all();
RESET ROLE;
SELECT tenancy.set_tenant_mode('orders', ARRAY['acme'], NULL) IS NOT NULL AS changed;
SELECT tenancy.tenant_mode('orders', 'acme') AS acme, tenancy.tenant_mode('orders', 'bolt') AS bolt,
       tenancy.tenant_mode('orders', 'corp') AS corp;

-- 5. Plans specialised to a mode never run under another.  Prepared
-- statements past the 5th execution (generic plan), forced generic plans,
-- a tenant switch within a transaction, and PL/pgSQL's cached plans.
SET ROLE rollout_app;
PREPARE q AS SELECT string_agg(id::text, ',' ORDER BY id) FROM orders;
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;    -- enforce (the table's mode)
EXECUTE q; EXECUTE q; EXECUTE q; EXECUTE q; EXECUTE q; EXECUTE q; EXECUTE q;
SELECT generic_plans > 0 AS generic FROM pg_prepared_statements WHERE name = 'q';
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;    -- shadow
EXECUTE q;
SELECT tenancy.set_tenant('corp', false) IS NOT NULL AS set;    -- migrating
EXECUTE q;
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
EXECUTE q;
SET plan_cache_mode = force_generic_plan;
EXPLAIN (COSTS OFF) EXECUTE q;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
EXPLAIN (COSTS OFF) EXECUTE q;
BEGIN;
SELECT tenancy.set_tenant('bolt', true) IS NOT NULL AS set;
EXECUTE q;
SELECT tenancy.set_tenant('acme', true) IS NOT NULL AS set;
EXECUTE q;
SELECT tenancy.set_tenant('bolt', true) IS NOT NULL AS set;
EXECUTE q;
COMMIT;
-- SET LOCAL rolled back at the end of the transaction: back to acme.
EXECUTE q;
RESET plan_cache_mode;
RESET ROLE;
CREATE FUNCTION visible_ids() RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
    SELECT string_agg(id::text, ',' ORDER BY id) INTO r FROM orders;
    RETURN r;
END $$;
SET ROLE rollout_app;
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
SELECT visible_ids(), visible_ids(), visible_ids(), visible_ids(), visible_ids(), visible_ids();
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
SELECT visible_ids();
BEGIN;
SELECT tenancy.set_tenant('acme', true) IS NOT NULL AS set;
SELECT visible_ids();
SELECT tenancy.set_tenant('corp', true) IS NOT NULL AS set;
SELECT visible_ids();
COMMIT;
SELECT visible_ids();
-- A cursor opened for an enforced tenant cannot be read by a shadow one.
BEGIN;
SELECT tenancy.set_tenant('acme', true) IS NOT NULL AS set;
DECLARE c CURSOR FOR SELECT id FROM orders ORDER BY id;
FETCH 1 FROM c;
SELECT tenancy.set_tenant('bolt', true) IS NOT NULL AS set;
FETCH 1 FROM c;
ROLLBACK;
-- A rollout change replans too: acme enforced explicitly, then shadow.
RESET ROLE;
SELECT tenancy.set_tenant_mode('orders', ARRAY['acme'], 'shadow') IS NOT NULL AS changed;
SET ROLE rollout_app;
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
EXECUTE q;
SELECT visible_ids();
DEALLOCATE q;
RESET ROLE;
SELECT tenancy.set_tenant_mode('orders', ARRAY['acme'], NULL) IS NOT NULL AS changed;

-- 6. A stable percentage: the table in shadow mode, 50% of 40 tenants
-- enforced.  The set is the documented hash (first 32 bits of md5 of the
-- key, mod 10000, below percent * 100) and the same in another backend.
SELECT tenancy.set_mode('orders', 'shadow') IS NOT NULL AS changed;
SELECT count(*) AS created FROM generate_series(1, 40) g,
       LATERAL tenancy.create_tenant(format('p%s', g), format('P%s', g),
                                     format('00000000-0000-0000-0001-%s', lpad(g::text, 12, '0')));
SELECT tenancy.set_rollout_percent_sql('orders', 50);
SELECT tenancy.set_rollout_percent('orders', 50) IS NOT NULL AS changed;
CREATE TABLE first_backend AS
SELECT t.id::text AS id, tenancy.tenant_mode('orders', t.id::text) AS mode, tenancy.rollout_bucket(t.id::text) AS bucket
  FROM tenancy.tenants t WHERE t.slug LIKE 'p%';
SELECT count(*) FILTER (WHERE mode = 'enforce') AS enforced, count(*) FILTER (WHERE mode = 'shadow') AS shadowed
  FROM first_backend;
SELECT count(*) AS disagree_with_documented_hash FROM first_backend
 WHERE bucket <> ('x' || substr(md5(id), 1, 8))::bit(32)::bigint % 10000
    OR (mode = 'enforce') <> (bucket < 5000);
SELECT tenancy.rollout_bucket('00000000-0000-0000-0000-0000000000a1') AS acme_bucket,
       tenancy.rollout_bucket('00000000-0000-0000-0000-0000000000b2') AS bolt_bucket;
\c
SELECT pg_backend_pid() <> 0 AS new_backend;
SELECT count(*) AS disagree_across_backends FROM first_backend f
 WHERE tenancy.tenant_mode('orders', f.id) <> f.mode;
-- Raising the percentage only adds tenants.
SELECT tenancy.set_rollout_percent('orders', 75) IS NOT NULL AS changed;
SELECT count(*) AS dropped_out FROM first_backend f
 WHERE f.mode = 'enforce' AND tenancy.tenant_mode('orders', f.id) <> 'enforce';
SELECT count(*) FILTER (WHERE tenancy.tenant_mode('orders', f.id) = 'enforce') AS enforced_at_75 FROM first_backend f;
-- The application role sees what the mode says.
SET ROLE rollout_app;
SELECT * FROM seen_all();
RESET ROLE;

-- 7. verify() reports the rollout.
SELECT check_name, status, rows_affected, detail, fix FROM tenancy.verify('orders')
 WHERE check_name IN ('rollout', 'tenancy_policy', 'policy_mode');
SELECT relation, base_mode, percent, percent_mode, enforce_tenants, shadow_tenants, migrating_tenants
  FROM tenancy.rollout_state;

-- 8. The log, and undo: back to 50%, then the whole way back.
SELECT id, op, tenants, old_modes, new_mode, old_percent, old_percent_mode, new_percent, new_percent_mode,
       by_role = current_user AS by_me, undoes, undone_by
  FROM tenancy.rollout_log ORDER BY id;
SELECT tenancy.undo_rollout_sql('orders');
SELECT tenancy.undo_rollout('orders') IS NOT NULL AS undone;
SELECT percent, percent_mode FROM tenancy.rollout_state;
SELECT tenancy.undo_rollout('orders') IS NOT NULL AS undone;   -- the 50%
SELECT tenancy.undo_rollout('orders') IS NOT NULL AS undone;   -- acme off the list
SELECT tenancy.undo_rollout('orders') IS NOT NULL AS undone;   -- acme to shadow
SELECT tenant, mode FROM tenancy.rollout_tenants ORDER BY tenant;
SELECT id, op, undoes, undone_by FROM tenancy.rollout_log WHERE id > 7 ORDER BY id;

-- 9. All enforced: the rollout cleared, the table in enforce mode, the
-- plain policy again.
SELECT tenancy.clear_rollout('orders') IS NOT NULL AS cleared;
SELECT tenancy.set_mode('orders', 'enforce') IS NOT NULL AS changed;
SELECT polname, pg_get_expr(polqual, polrelid) AS using_expr FROM pg_policy WHERE polrelid = 'orders'::regclass ORDER BY polname;
SELECT count(*) AS rollout_rows FROM tenancy.verify('orders') WHERE check_name = 'rollout';
SET ROLE rollout_app;
SELECT * FROM seen_all();
RESET ROLE;
-- clear_rollout() is undone like any change.
SELECT tenancy.undo_rollout('orders') IS NOT NULL AS undone;
SELECT tenant, mode FROM tenancy.rollout_tenants ORDER BY tenant;
SELECT tenancy.clear_rollout('orders') IS NOT NULL AS cleared;

-- 10. Errors: nothing changes.
SELECT count(*) AS log_before FROM tenancy.rollout_log \gset
SELECT tenancy.set_tenant_mode('no_such_table', ARRAY['acme'], 'enforce');
CREATE TABLE plain (id int, tenant_id uuid);
SELECT tenancy.set_tenant_mode('plain', ARRAY['acme'], 'enforce');
SELECT tenancy.set_tenant_mode('orders', ARRAY['nobody'], 'enforce');
SELECT tenancy.set_tenant_mode('orders', ARRAY['acme'], 'loose');
SELECT tenancy.set_tenant_mode('orders', ARRAY[]::text[], 'enforce');
SELECT tenancy.set_tenant_mode('orders', ARRAY['acme', NULL], 'enforce');
SELECT tenancy.set_rollout_percent('orders', -1);
SELECT tenancy.set_rollout_percent('orders', 100.5);
SELECT tenancy.set_rollout_percent('orders', 12.345);
SELECT tenancy.set_rollout_percent('orders', NULL);
SELECT tenancy.set_rollout_percent('orders', 10, 'loose');
SELECT tenancy.undo_rollout_sql('plain');
CREATE TABLE fresh (id int, tenant_id uuid);
SELECT tenancy.enable_rls('fresh') IS NOT NULL AS enabled;
SELECT tenancy.undo_rollout('fresh');
SELECT tenancy.undo_rollout_sql('fresh');
SELECT tenancy.tenant_mode('orders', 'nobody');
SET ROLE rollout_stranger;
SELECT tenancy.set_tenant_mode('orders', ARRAY['acme'], 'shadow');
SELECT tenancy.rollout_record('percent', 'orders', NULL, 'enforce', 10, NULL);
SELECT tenancy.tenant_mode('orders');
RESET ROLE;
SELECT count(*) AS listed FROM tenancy.rollout_tenants;
SELECT count(*) AS percentages FROM tenancy.rollouts;
SELECT count(*) - :log_before AS logged_by_errors FROM tenancy.rollout_log;

-- A table owner who is not a superuser runs a rollout on its own table.
CREATE ROLE rollout_owner;
CREATE TABLE owned (id int, tenant_id uuid);
CREATE INDEX ON owned (tenant_id);
ALTER TABLE owned OWNER TO rollout_owner;
INSERT INTO owned VALUES (1, '00000000-0000-0000-0000-0000000000a1'), (2, '00000000-0000-0000-0000-0000000000b2');
SET ROLE rollout_owner;
SELECT tenancy.enable_rls('owned', mode => 'shadow') IS NOT NULL AS enabled;
SELECT tenancy.set_tenant_mode('owned', ARRAY['bolt'], 'enforce') IS NOT NULL AS changed;
SELECT tenancy.set_rollout_percent('owned', 10) IS NOT NULL AS changed;
SELECT tenancy.undo_rollout('owned') IS NOT NULL AS undone;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
SELECT tenancy.rollout_current_mode('owned') AS mode, count(*) AS sees FROM owned;
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
SELECT tenancy.rollout_current_mode('owned') AS mode, count(*) AS sees FROM owned;
SELECT tenancy.clear_tenant() IS NOT NULL AS cleared;
RESET ROLE;
SELECT by_role, op FROM tenancy.rollout_log WHERE relation = 'owned'::regclass ORDER BY id;
DROP TABLE owned;
DROP ROLE rollout_owner;

-- 11. disable_rls() forgets the rollout with the policy.
SELECT tenancy.set_tenant_mode('orders', ARRAY['bolt'], 'shadow') IS NOT NULL AS changed;
SELECT tenancy.disable_rls('orders') IS NOT NULL AS disabled;
SELECT count(*) AS listed FROM tenancy.rollout_tenants;

DROP TABLE orders, plain, fresh, first_backend;
DROP FUNCTION seen(text), seen_all(), visible_ids();
RESET tenancy.tenant_id;
DROP ROLE rollout_app, rollout_stranger;
DROP EXTENSION tenancy;
