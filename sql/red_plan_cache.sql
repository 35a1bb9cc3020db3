-- Red team (issues 17, 18): plans specialised to one tenant (rollout.c folds
-- the per-tenant mode, prune.c adds `tenant = <const>`) must never show or
-- write another tenant's rows, whatever caches or holds the plan, and
-- whatever switches the tenant.  The application role is no owner and has
-- no BYPASSRLS.  Every query below asserts the secure outcome.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
CREATE ROLE red_app;
-- orders: shadow for every tenant (sees all), acme enforced by the rollout.
CREATE TABLE orders (id int PRIMARY KEY, tenant_id uuid, body text);
INSERT INTO orders VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'acme 1'),
                          (3, '00000000-0000-0000-0000-0000000000b2', 'bolt 3');
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO red_app;
SELECT tenancy.enable_rls('orders', mode => 'shadow') IS NOT NULL AS enabled;
SELECT tenancy.set_tenant_mode('orders', ARRAY['acme'], 'enforce') IS NOT NULL AS changed;
-- items: enforce for everyone, planned with tenancy.tenant_pruning = on.
CREATE TABLE items (id int PRIMARY KEY, tenant_id uuid, body text);
INSERT INTO items VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'acme item'),
                         (3, '00000000-0000-0000-0000-0000000000b2', 'bolt item');
GRANT SELECT, INSERT, UPDATE, DELETE ON items TO red_app;
SELECT tenancy.enable_rls('items') IS NOT NULL AS enabled;

-- The functions the application runs (SECURITY INVOKER).
CREATE FUNCTION orders_as(t text) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT tenancy.set_tenant(t, false);
    SELECT body FROM orders ORDER BY id;
$$;
CREATE FUNCTION touch_as(t text) RETURNS SETOF int LANGUAGE sql AS $$
    SELECT tenancy.set_tenant(t, false);
    UPDATE orders SET body = 'written by acme' WHERE id = 3 RETURNING id;
$$;
CREATE FUNCTION items_as(t text) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT tenancy.set_tenant(t, false);
    SELECT body FROM items ORDER BY id;
$$;
CREATE FUNCTION plpgsql_orders() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT string_agg(body, ',' ORDER BY id) FROM orders);
END $$;

SET ROLE red_app;

-- 1. A SQL function plans all its statements when it starts: the SELECT is
-- planned under bolt (shadow: every row) and runs after the switch to acme
-- (enforce).  It must not show bolt's row to acme (refused, or acme's rows
-- only).
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
SELECT * FROM orders_as('acme');
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
SELECT * FROM touch_as('acme');
RESET ROLE;
SELECT body AS bolt_row_untouched FROM orders WHERE id = 3;
SET ROLE red_app;
-- The same under prune.c's specialisation (its executor check refuses).
SET tenancy.tenant_pruning = on;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
SELECT * FROM items_as('acme');
RESET tenancy.tenant_pruning;

-- 2. A generic plan (force_generic_plan, and past the fifth execution)
-- made under bolt, run under acme: replanned.
SET plan_cache_mode = force_generic_plan;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
PREPARE o AS SELECT string_agg(body, ',' ORDER BY id) FROM orders;
EXECUTE o;
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
EXECUTE o;
RESET plan_cache_mode;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
PREPARE o2(int) AS SELECT string_agg(body, ',' ORDER BY id) FROM orders WHERE id > $1;
EXECUTE o2(0); EXECUTE o2(0); EXECUTE o2(0); EXECUTE o2(0); EXECUTE o2(0); EXECUTE o2(0);
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
EXECUTE o2(0);
-- the same with pruning on: a plan specialised to bolt, run under acme
SET tenancy.tenant_pruning = on;
SET plan_cache_mode = force_generic_plan;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
PREPARE i AS SELECT string_agg(body, ',' ORDER BY id) FROM items;
EXECUTE i;
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
EXECUTE i;
RESET plan_cache_mode;
RESET tenancy.tenant_pruning;

-- 3. Switches the assign hooks see only indirectly: SET LOCAL undone by
-- ROLLBACK TO SAVEPOINT, and by COMMIT; RESET; set_config().
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
BEGIN;
SAVEPOINT s;
SET LOCAL tenancy.tenant_id = '00000000-0000-0000-0000-0000000000b2';
EXECUTE o;
ROLLBACK TO SAVEPOINT s;
EXECUTE o;
SELECT set_config('tenancy.tenant_id', '00000000-0000-0000-0000-0000000000b2', true) IS NOT NULL AS set;
EXECUTE o;
COMMIT;
EXECUTE o;
RESET tenancy.tenant_id;
EXECUTE o;

-- 4. PL/pgSQL: its cached plan made under bolt, run under acme.
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
SELECT plpgsql_orders() FROM generate_series(1, 6);
SELECT tenancy.set_tenant('acme', false) IS NOT NULL AS set;
SELECT plpgsql_orders();

-- 5. Cursors opened under bolt, fetched under acme: refused.
BEGIN;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
DECLARE c CURSOR FOR SELECT body FROM orders ORDER BY id;
FETCH 1 FROM c;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
FETCH 1 FROM c;
ROLLBACK;

-- 6. The rollout changes while bolt's shadow plan is cached: the DBA
-- enforces bolt; the cached plan must not show acme's row to bolt.
SET plan_cache_mode = force_generic_plan;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
PREPARE o3 AS SELECT string_agg(body, ',' ORDER BY id) FROM orders;
EXECUTE o3;
RESET ROLE;
SELECT tenancy.set_tenant_mode('orders', ARRAY['bolt'], 'enforce') IS NOT NULL AS changed;
SET ROLE red_app;
EXECUTE o3;
RESET plan_cache_mode;
RESET ROLE;

-- 7. The same on a partition queried directly: its plan names the
-- partition, the rollout is the root's.
CREATE TABLE parts (id int, tenant_id uuid, body text) PARTITION BY RANGE (id);
CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (100);
INSERT INTO parts VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'acme part'),
                         (3, '00000000-0000-0000-0000-0000000000b2', 'bolt part');
GRANT SELECT ON parts, parts_1 TO red_app;
SELECT tenancy.enable_rls('parts', mode => 'shadow') IS NOT NULL AS enabled;
SET ROLE red_app;
SET plan_cache_mode = force_generic_plan;
SELECT tenancy.set_tenant('bolt', false) IS NOT NULL AS set;
PREPARE p1 AS SELECT string_agg(body, ',' ORDER BY id) FROM parts_1;
EXECUTE p1;
RESET ROLE;
SELECT tenancy.set_tenant_mode('parts', ARRAY['bolt'], 'enforce') IS NOT NULL AS changed;
SET ROLE red_app;
EXECUTE p1;
RESET plan_cache_mode;
RESET ROLE;

DROP FUNCTION orders_as(text), touch_as(text), items_as(text), plpgsql_orders();
DROP TABLE orders, items, parts;
DROP ROLE red_app;
DROP EXTENSION tenancy;
