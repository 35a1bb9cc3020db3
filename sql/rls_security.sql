-- Row-level security: what a non-owner application role and the table owner
-- (subject to the policy through FORCE) can see and write.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
SELECT tenancy.create_tenant('legacy', 'Legacy', '00000000-0000-0000-0000-0000000000c3') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('legacy') IS NOT NULL AS implicit;
CREATE ROLE rls_security_owner;
CREATE ROLE rls_security_app;
CREATE ROLE rls_security_bypass BYPASSRLS;
CREATE ROLE rls_security_legacy LOGIN;
GRANT CREATE ON SCHEMA public TO rls_security_owner;

SET ROLE rls_security_owner;
CREATE TABLE docs (
    id int PRIMARY KEY,
    tenant_id uuid DEFAULT tenancy.current_tenant(),
    body text
);
CREATE INDEX docs_tenant ON docs (tenant_id);
INSERT INTO docs VALUES
    (1, '00000000-0000-0000-0000-0000000000a1', 'a one'),
    (2, '00000000-0000-0000-0000-0000000000a1', 'a two'),
    (3, '00000000-0000-0000-0000-0000000000a1', 'a three'),
    (5, '00000000-0000-0000-0000-0000000000b2', 'b five'),
    (6, '00000000-0000-0000-0000-0000000000b2', 'b six'),
    (7, '00000000-0000-0000-0000-0000000000c3', 'legacy seven'),
    (9, NULL, 'unmigrated');
CREATE VIEW docs_view AS SELECT * FROM docs;
CREATE VIEW docs_view_invoker WITH (security_invoker = true) AS SELECT * FROM docs;
CREATE FUNCTION docs_ids() RETURNS int[] SECURITY DEFINER LANGUAGE sql
    SET search_path = public, pg_temp
    AS 'SELECT array_agg(id ORDER BY id) FROM docs';
GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO rls_security_app, rls_security_legacy;
GRANT SELECT ON docs TO rls_security_bypass;
GRANT SELECT ON docs_view, docs_view_invoker TO rls_security_app, rls_security_owner;
SELECT tenancy.enable_rls('docs') IS NOT NULL AS enabled;
RESET ROLE;
CREATE VIEW docs_view_bypass AS SELECT * FROM docs;
ALTER VIEW docs_view_bypass OWNER TO rls_security_bypass;
GRANT SELECT ON docs_view_bypass TO rls_security_app, rls_security_owner;

\set who rls_security_app
\ir rls_security_matrix.psql
\set who rls_security_owner
\ir rls_security_matrix.psql

-- Migrating mode: rows whose tenant is still NULL are visible, writes must
-- carry the tenant (the column default gives it).
SET ROLE rls_security_owner;
SELECT tenancy.set_mode('docs', 'migrating') IS NOT NULL AS switched;
RESET ROLE;
SET ROLE rls_security_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT array_agg(id ORDER BY id) AS visible FROM docs;
INSERT INTO docs (id, body) VALUES (10, 'defaulted') RETURNING tenant_id;
INSERT INTO docs (id, tenant_id, body) VALUES (11, NULL, 'no tenant');
\echo :LAST_ERROR_SQLSTATE
-- (only the implicit tenant may change a row whose tenant is still NULL:
-- sql/security_migrating.sql)
UPDATE docs SET body = 'claimed' WHERE id = 9 RETURNING id;
UPDATE docs SET body = 'claimed', tenant_id = tenancy.current_tenant() WHERE id = 9 RETURNING id, tenant_id;
ROLLBACK;
SELECT count(*) AS visible_without_tenant FROM docs;
RESET ROLE;
SET ROLE rls_security_owner;
SELECT tenancy.set_mode('docs', 'enforce') IS NOT NULL AS switched;
RESET ROLE;

-- The legacy code path: a role bound to the implicit tenant sees exactly the
-- implicit tenant's rows without setting anything, next to the new path.
SELECT tenancy.bind_role('rls_security_legacy') IS NOT NULL AS bound;
SELECT current_user AS orig_user \gset
\c - rls_security_legacy
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT array_agg(id ORDER BY id) AS legacy_sees FROM docs;
INSERT INTO docs (id, body) VALUES (12, 'legacy insert') RETURNING tenant_id;
-- A bound role cannot switch (sql/role_bindings.sql): it keeps its rows.
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT array_agg(id ORDER BY id) AS legacy_still_sees FROM docs;
COMMIT;
SELECT array_agg(id ORDER BY id) AS legacy_sees_again FROM docs;
\c - :orig_user
\set SHOW_CONTEXT never
\set VERBOSITY terse
-- The new path, beside it.
SET ROLE rls_security_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT array_agg(id ORDER BY id) AS new_path_sees FROM docs;
COMMIT;
RESET ROLE;
SELECT tenancy.unbind_role('rls_security_legacy') IS NOT NULL AS unbound;

-- The tenant is fixed per query: the accessor is folded into a constant
-- while the plan is compiled (and the plan restored), or evaluated per row
-- with tenancy.fold_tenant off; both give the same rows.
SET ROLE rls_security_app;
BEGIN;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
SET LOCAL enable_indexscan = off;
SET LOCAL enable_bitmapscan = off;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT id FROM docs;
SELECT array_agg(id ORDER BY id) AS folded FROM docs;
SET LOCAL tenancy.fold_tenant = off;
SELECT array_agg(id ORDER BY id) AS per_row FROM docs;
COMMIT;
-- With tenancy.require_tenant, no tenant still raises (nothing is folded).
SET tenancy.require_tenant = on;
SELECT count(*) FROM docs;
\echo :LAST_ERROR_SQLSTATE
RESET tenancy.require_tenant;
-- A PL/pgSQL loop over the table cannot switch tenants half-way.
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT id FROM docs, generate_series(1, 20) g LOOP
        PERFORM tenancy.set_tenant('bolt');
    END LOOP;
END $$;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;

-- bigint and text keys: the policy uses the accessor of the column type,
-- folded the same way.
SET tenancy.validate_tenant = off;
SET tenancy.tenant_type = 'bigint';
CREATE TABLE by_org (org bigint, v text);
INSERT INTO by_org VALUES (41, 'a'), (42, 'b'), (42, 'c'), (NULL, 'd');
GRANT SELECT ON by_org TO rls_security_app;
SELECT tenancy.enable_rls('by_org', 'org') IS NOT NULL AS enabled;
SET tenancy.tenant_type = 'text';
CREATE TABLE by_name (tenant_id text, v text);
INSERT INTO by_name VALUES ('north', 'a'), ('south', 'b'), ('north', 'c');
GRANT SELECT ON by_name TO rls_security_app;
SELECT tenancy.enable_rls('by_name') IS NOT NULL AS enabled;
-- (the key type is a superuser setting: set it, then switch role)
SET tenancy.tenant_type = 'bigint';
SET ROLE rls_security_app;
BEGIN;
SELECT tenancy.set_tenant('42') IS NOT NULL AS set;
SELECT array_agg(v ORDER BY v) AS org_42 FROM by_org;
SET LOCAL tenancy.fold_tenant = off;
SELECT array_agg(v ORDER BY v) AS org_42_per_row FROM by_org;
COMMIT;
RESET ROLE;
SET tenancy.tenant_type = 'text';
SET ROLE rls_security_app;
BEGIN;
SELECT tenancy.set_tenant('north') IS NOT NULL AS set;
SELECT array_agg(v ORDER BY v) AS north FROM by_name;
COMMIT;
-- Under another key type the bigint policy raises instead of matching.
BEGIN;
SELECT tenancy.set_tenant('42') IS NOT NULL AS set;
SELECT count(*) FROM by_org;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
RESET tenancy.tenant_type;
RESET tenancy.validate_tenant;
DROP TABLE by_org, by_name;

DROP VIEW docs_view_bypass;
DROP TABLE docs CASCADE;
DROP FUNCTION docs_ids();
DROP EXTENSION tenancy CASCADE;
REVOKE ALL ON SCHEMA public FROM rls_security_owner;
DROP ROLE rls_security_owner, rls_security_app, rls_security_bypass, rls_security_legacy;
