-- One tenant, one shard (prune.c): with tenancy.tenant_pruning a query over a
-- table under the tenant policy is planned for the current tenant (the
-- policy with the tenant as a constant, which Citus routes on).  Such a plan
-- never runs under another tenant: generic plans of prepared statements,
-- PL/pgSQL's cached plans and a switch inside a transaction are planned
-- again.  Here on one node, with tenant_pruning = on (auto specialises only
-- Citus tables); test/citus_pruning.sh does the same on Citus.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
CREATE ROLE pts_owner;
CREATE ROLE pts_app;
CREATE ROLE pts_bypass BYPASSRLS;
GRANT CREATE ON SCHEMA public TO pts_owner;
SET ROLE pts_owner;
-- A hostile column name: the added qual is built from the policy's own
-- nodes, never from SQL text.
CREATE TABLE pts_docs (id int PRIMARY KEY, "Tenant ""Key"";" uuid NOT NULL, body text);
CREATE INDEX pts_docs_tenant ON pts_docs ("Tenant ""Key"";");
INSERT INTO pts_docs SELECT g, CASE WHEN g <= 3 THEN '00000000-0000-0000-0000-0000000000a1'::uuid
                                    ELSE '00000000-0000-0000-0000-0000000000b2'::uuid END, 'doc ' || g
  FROM generate_series(1, 5) g;
CREATE TABLE pts_notes (doc int, tenant_id uuid NOT NULL, note text);
INSERT INTO pts_notes VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'a note'),
                             (4, '00000000-0000-0000-0000-0000000000b2', 'b note');
GRANT SELECT, INSERT, UPDATE, DELETE ON pts_docs, pts_notes TO pts_app, pts_bypass;
SELECT tenancy.enable_rls('pts_docs', 'Tenant "Key";') IS NOT NULL AS enabled;
SELECT tenancy.enable_rls('pts_notes') IS NOT NULL AS enabled;
RESET ROLE;

-- The default, auto, specialises only Citus tables: one node plans as 0.1.
SHOW tenancy.tenant_pruning;
SET ROLE pts_app;
SELECT tenancy.set_tenant('acme', is_local => false) IS NOT NULL AS set;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pts_docs;
-- on: the policy with the tenant as a constant, in the relation's security
-- quals and, for a query over one relation, in its WHERE clause.
SET tenancy.tenant_pruning = on;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pts_docs;
EXPLAIN (COSTS OFF) SELECT d.id, n.note FROM pts_docs d LEFT JOIN pts_notes n ON n.doc = d.id;
-- An outer join keeps its null-extended rows (the qual is on the scan).
SELECT d.id, n.note FROM pts_docs d LEFT JOIN pts_notes n ON n.doc = d.id ORDER BY d.id;
SELECT id FROM pts_docs WHERE id IN (SELECT doc FROM pts_notes) ORDER BY id;
-- UPDATE and DELETE are specialised too; writes stay within the tenant.
EXPLAIN (COSTS OFF) UPDATE pts_docs SET body = body WHERE id = 1;
UPDATE pts_docs SET body = body || '!' WHERE id IN (1, 4) RETURNING id, body;
DELETE FROM pts_docs WHERE id = 5 RETURNING id;
-- off: never.
SET tenancy.tenant_pruning = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pts_docs;
SET tenancy.tenant_pruning = on;

-- No tenant: nothing is specialised, nothing is visible, nothing raises.
RESET tenancy.tenant_id;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pts_docs;
SELECT count(*) AS visible FROM pts_docs;
RESET ROLE;

-- Where RLS does not apply nothing is added: superuser, BYPASSRLS, and
-- the owner without FORCE.
SELECT tenancy.set_tenant('acme', is_local => false) IS NOT NULL AS set;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pts_docs;
SELECT count(*) AS superuser_sees FROM pts_docs;
SET ROLE pts_bypass;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pts_docs;
SELECT count(*) AS bypassrls_sees FROM pts_docs;
RESET ROLE;
ALTER TABLE pts_notes NO FORCE ROW LEVEL SECURITY;
SET ROLE pts_owner;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pts_notes;
SELECT count(*) AS owner_sees FROM pts_notes;
RESET ROLE;
ALTER TABLE pts_notes FORCE ROW LEVEL SECURITY;

-- Prepared statements: a parameterless one always runs its generic plan;
-- one with a parameter switches to the generic plan after five custom
-- plans.  Each execution under the other tenant sees that tenant's rows.
SET ROLE pts_app;
PREPARE pts_all AS SELECT string_agg(id::text, ',' ORDER BY id) FROM pts_docs;
PREPARE pts_upto(int) AS SELECT string_agg(id::text, ',' ORDER BY id) FROM pts_docs WHERE id <= $1;
SELECT tenancy.set_tenant('acme', is_local => false) IS NOT NULL AS set;
EXECUTE pts_all;
EXECUTE pts_upto(9);
EXECUTE pts_upto(9);
EXECUTE pts_upto(9);
EXECUTE pts_upto(9);
EXECUTE pts_upto(9);
EXECUTE pts_upto(9);
SELECT name, generic_plans > 0 AS generic FROM pg_prepared_statements WHERE name = 'pts_upto';
SELECT tenancy.set_tenant('bolt', is_local => false) IS NOT NULL AS set;
EXECUTE pts_all;
EXECUTE pts_upto(9);
EXECUTE pts_upto(9);
SELECT tenancy.set_tenant('acme', is_local => false) IS NOT NULL AS set;
EXECUTE pts_all;
EXECUTE pts_upto(9);
SELECT name, generic_plans > 1 AS generic FROM pg_prepared_statements WHERE name IN ('pts_all', 'pts_upto') ORDER BY name;
-- The plan shown is the generic plan for the tenant now current.
EXPLAIN (COSTS OFF) EXECUTE pts_all;
-- With no tenant the generic plan is planned again, unspecialised.
RESET tenancy.tenant_id;
EXPLAIN (COSTS OFF) EXECUTE pts_all;
EXECUTE pts_all;
EXECUTE pts_upto(9);

-- A switch within a transaction, SET LOCAL and its end included.
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
EXECUTE pts_all;
SET LOCAL tenancy.tenant_id = '00000000-0000-0000-0000-0000000000b2';
EXECUTE pts_all;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
EXECUTE pts_all;
COMMIT;
BEGIN;
SET LOCAL tenancy.tenant_id = '00000000-0000-0000-0000-0000000000b2';
EXECUTE pts_all;
ROLLBACK;
-- After COMMIT and ROLLBACK no tenant is set: the plan is unspecialised.
EXECUTE pts_all;
SELECT tenancy.set_tenant('bolt', is_local => false) IS NOT NULL AS set;
BEGIN;
SET LOCAL tenancy.tenant_id = '00000000-0000-0000-0000-0000000000a1';
EXECUTE pts_all;
ROLLBACK;
-- After the rollback the tenant is bolt again (session setting).
EXECUTE pts_all;
RESET ROLE;

-- PL/pgSQL caches the plans of its statements.
CREATE FUNCTION pts_ids() RETURNS text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE r text;
BEGIN
    SELECT string_agg(id::text, ',' ORDER BY id) INTO r FROM public.pts_docs;
    RETURN r;
END $$;
CREATE FUNCTION pts_ids_switching() RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE r text := '';
BEGIN
    FOR i IN 1..4 LOOP
        PERFORM tenancy.set_tenant(CASE WHEN i % 2 = 1 THEN 'acme' ELSE 'bolt' END, false);
        r := r || coalesce((SELECT string_agg(id::text, ',' ORDER BY id) FROM public.pts_docs), '-') || ';';
    END LOOP;
    RETURN r;
END $$;
GRANT EXECUTE ON FUNCTION pts_ids(), pts_ids_switching() TO pts_app;
SET ROLE pts_app;
SELECT tenancy.set_tenant('acme', is_local => false) IS NOT NULL AS set;
SELECT pts_ids();
SELECT tenancy.set_tenant('bolt', is_local => false) IS NOT NULL AS set;
SELECT pts_ids();
SELECT tenancy.set_tenant('acme', is_local => false) IS NOT NULL AS set;
SELECT pts_ids();
SELECT pts_ids_switching();
SELECT pts_ids_switching();
RESET ROLE;

-- A SQL function plans all its statements when first called: a plan made
-- before a switch in its body is refused at executor start, not run.
CREATE FUNCTION pts_sql_switch() RETURNS bigint LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.set_tenant('bolt', false);
    SELECT count(*) FROM public.pts_docs;
$$;
GRANT EXECUTE ON FUNCTION pts_sql_switch() TO pts_app;
SET ROLE pts_app;
SELECT tenancy.set_tenant('acme', is_local => false) IS NOT NULL AS set;
SELECT pts_sql_switch();
\echo :SQLSTATE
-- With tenant_pruning = off it runs (and sees bolt's rows).
SET tenancy.tenant_pruning = off;
SELECT tenancy.set_tenant('acme', is_local => false) IS NOT NULL AS set;
SELECT pts_sql_switch();
SET tenancy.tenant_pruning = on;

-- Migrating mode ORs the policy with the legacy policies: not specialised.
RESET ROLE;
SELECT tenancy.set_mode('pts_notes', 'migrating') IS NOT NULL AS migrating;
SET ROLE pts_app;
SELECT tenancy.set_tenant('acme', is_local => false) IS NOT NULL AS set;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pts_notes;
RESET ROLE;

DEALLOCATE ALL;
DROP FUNCTION pts_ids(), pts_ids_switching(), pts_sql_switch();
DROP TABLE pts_docs, pts_notes;
REVOKE CREATE ON SCHEMA public FROM pts_owner;
DROP ROLE pts_owner;
DROP ROLE pts_app;
DROP ROLE pts_bypass;
DROP EXTENSION tenancy;
