-- tenancy.verify(): every check of the readiness report, each seeded with a
-- database that fails it exactly once, then fixed (and its ok row after).
-- Fixes that do not depend on other features are run from the report's own
-- fix column with \gexec.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
SELECT tenancy.create_tenant('globex', 'Globex', '22222222-2222-2222-2222-222222222222') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('acme') IS NOT NULL AS implicit;

-- A clean database: two registered tables, a composite foreign key, tenant
-- indexes, forced RLS with the extension's policy (made by hand here), stage
-- enforce.
CREATE TABLE ready_verify_parent (
    id        bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    name      text NOT NULL,
    UNIQUE (tenant_id, id)
);
CREATE TABLE ready_verify_child (
    id        bigserial PRIMARY KEY,
    tenant_id uuid,
    parent_id bigint NOT NULL,
    CONSTRAINT ready_verify_child_parent_fkey FOREIGN KEY (tenant_id, parent_id)
        REFERENCES ready_verify_parent (tenant_id, id)
);
CREATE INDEX ready_verify_child_tenant ON ready_verify_child (tenant_id, parent_id);
INSERT INTO ready_verify_parent (tenant_id, name) VALUES
    ('11111111-1111-1111-1111-111111111111', 'a1'),
    ('22222222-2222-2222-2222-222222222222', 'g1');
INSERT INTO ready_verify_child (tenant_id, parent_id) VALUES
    ('11111111-1111-1111-1111-111111111111', 1),
    ('22222222-2222-2222-2222-222222222222', 2);
-- Backfilled, then enforced by enable_rls() (policy_mode reads the mode
-- from tenancy.rls_tables, not from the stage).
INSERT INTO tenancy.tables (relation, stage) VALUES ('ready_verify_parent', 'backfill'), ('ready_verify_child', 'backfill');
SET client_min_messages = warning;
SELECT tenancy.enable_rls(t) IS NOT NULL AS enabled FROM unnest(ARRAY['ready_verify_parent', 'ready_verify_child']) t;
RESET client_min_messages;

\set report 'SELECT check_name, relation, status, rows_affected, detail, fix FROM tenancy.verify()'
\set fixes 'SELECT fix FROM tenancy.verify()'

-- The full report of a clean database: only ok rows, one per check and table.
SELECT check_name, relation, status, rows_affected, detail FROM tenancy.verify();
SELECT count(*) FILTER (WHERE status <> 'ok') AS not_ok, count(*) AS checked FROM tenancy.verify();
-- One table only.
SELECT count(*) AS checked, count(DISTINCT relation) AS relations FROM tenancy.verify('ready_verify_child');

-- Errors.
\set VERBOSITY sqlstate
SELECT * FROM tenancy.verify('pg_class');
SELECT * FROM tenancy.verify(max_rows => 0);
\set VERBOSITY default
SELECT * FROM tenancy.verify('pg_class');

-- tenant_column
ALTER TABLE ready_verify_child RENAME COLUMN tenant_id TO tid;
SELECT check_name, relation, status, detail, fix IS NOT NULL AS has_fix
  FROM tenancy.verify('ready_verify_child');
ALTER TABLE ready_verify_child RENAME COLUMN tid TO tenant_id;
:report WHERE check_name = 'tenant_column' AND relation = 'ready_verify_child'::regclass;
-- a tenant column of another type than the keys: a warning
CREATE TABLE ready_verify_typed (tenant_id text);
INSERT INTO tenancy.tables (relation) VALUES ('ready_verify_typed');
:report WHERE check_name = 'tenant_column' AND status <> 'ok';
:fixes WHERE check_name = 'tenant_column' AND status <> 'ok' \gexec
:report WHERE check_name = 'tenant_column' AND relation = 'ready_verify_typed'::regclass;
DELETE FROM tenancy.tables WHERE relation = 'ready_verify_typed'::regclass;
DROP TABLE ready_verify_typed;

-- null_tenant (the fix is the backfill, or an UPDATE to the implicit tenant)
INSERT INTO ready_verify_child (tenant_id, parent_id) VALUES (NULL, 1);
SELECT check_name, relation, status, rows_affected, detail, fix IS NOT NULL AS has_fix
  FROM tenancy.verify() WHERE check_name = 'null_tenant' AND status <> 'ok';
-- capped counting
INSERT INTO ready_verify_child (tenant_id, parent_id) VALUES (NULL, 1), (NULL, 1);
SELECT rows_affected, detail FROM tenancy.verify(max_rows => 2) WHERE check_name = 'null_tenant' AND status <> 'ok';
UPDATE ready_verify_child SET tenant_id = '11111111-1111-1111-1111-111111111111' WHERE tenant_id IS NULL;
:report WHERE check_name = 'null_tenant';

-- unknown_tenant
INSERT INTO ready_verify_parent (tenant_id, name) VALUES ('33333333-3333-3333-3333-333333333333', 'i1');
:report WHERE check_name = 'unknown_tenant' AND status <> 'ok';
:fixes WHERE check_name = 'unknown_tenant' AND status <> 'ok' \gexec
SELECT tenancy.create_tenant('initech', 'Initech', '33333333-3333-3333-3333-333333333333') IS NOT NULL AS created;
:report WHERE check_name = 'unknown_tenant' AND relation = 'ready_verify_parent'::regclass;

-- foreign_key_scope: a plain foreign key instead of the composite one
ALTER TABLE ready_verify_child DROP CONSTRAINT ready_verify_child_parent_fkey,
    ADD CONSTRAINT ready_verify_child_parent_fkey FOREIGN KEY (parent_id) REFERENCES ready_verify_parent (id);
:report WHERE check_name = 'foreign_key_scope' AND status <> 'ok';

-- cross_tenant_reference: a globex child of an acme parent
INSERT INTO ready_verify_child (tenant_id, parent_id) VALUES ('22222222-2222-2222-2222-222222222222', 1);
:report WHERE check_name = 'cross_tenant_reference' AND status <> 'ok';
:fixes WHERE check_name = 'cross_tenant_reference' AND status <> 'ok' \gexec
:report WHERE check_name = 'cross_tenant_reference';

-- foreign_key_scope, fixed with the generated SQL
\set ON_ERROR_STOP on
SELECT * FROM tenancy.scope_constraints_sql('ready_verify_child') \gexec
\set ON_ERROR_STOP off
:report WHERE check_name = 'foreign_key_scope';

-- unique_scope: a global unique constraint; a natural primary key
ALTER TABLE ready_verify_parent ADD CONSTRAINT ready_verify_parent_name_key UNIQUE (name);
:report WHERE check_name = 'unique_scope' AND status <> 'ok';
\set ON_ERROR_STOP on
SELECT * FROM tenancy.scope_constraints_sql('ready_verify_parent') \gexec
\set ON_ERROR_STOP off
:report WHERE check_name = 'unique_scope';
CREATE TABLE ready_verify_natural (code text PRIMARY KEY, tenant_id uuid NOT NULL);
INSERT INTO tenancy.tables (relation, stage) VALUES ('ready_verify_natural', 'enforce');
:report WHERE check_name = 'unique_scope' AND relation = 'ready_verify_natural'::regclass;
DELETE FROM tenancy.tables WHERE relation = 'ready_verify_natural'::regclass;
DROP TABLE ready_verify_natural;

-- rls_enabled
ALTER TABLE ready_verify_parent DISABLE ROW LEVEL SECURITY;
SELECT check_name, relation, status, detail, fix IS NOT NULL AS has_fix
  FROM tenancy.verify() WHERE status <> 'ok';
ALTER TABLE ready_verify_parent ENABLE ROW LEVEL SECURITY;
:report WHERE check_name = 'rls_enabled' AND relation = 'ready_verify_parent'::regclass;

-- rls_forced
ALTER TABLE ready_verify_parent NO FORCE ROW LEVEL SECURITY;
SELECT check_name, relation, status, detail, fix IS NOT NULL AS has_fix
  FROM tenancy.verify() WHERE status <> 'ok';
ALTER TABLE ready_verify_parent FORCE ROW LEVEL SECURITY;
:report WHERE check_name = 'rls_forced' AND relation = 'ready_verify_parent'::regclass;

-- tenancy_policy
DROP POLICY tenancy_policy ON ready_verify_child;
SELECT check_name, relation, status, detail, fix IS NOT NULL AS has_fix
  FROM tenancy.verify() WHERE status <> 'ok';
CREATE POLICY tenancy_policy ON ready_verify_child USING (tenant_id = tenancy.current_tenant())
    WITH CHECK (tenant_id = tenancy.current_tenant());
:report WHERE check_name = 'tenancy_policy' AND relation = 'ready_verify_child'::regclass;

-- rls checks cover each partition of a registered partitioned table
CREATE TABLE ready_verify_part (tenant_id uuid NOT NULL, n int) PARTITION BY LIST (tenant_id);
CREATE TABLE ready_verify_part_acme PARTITION OF ready_verify_part
    FOR VALUES IN ('11111111-1111-1111-1111-111111111111');
ALTER TABLE ready_verify_part ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenancy_policy ON ready_verify_part USING (tenant_id = tenancy.current_tenant());
INSERT INTO tenancy.tables (relation, stage) VALUES ('ready_verify_part', 'enforce');
SELECT check_name, relation, status, detail FROM tenancy.verify('ready_verify_part')
 WHERE check_name IN ('rls_enabled', 'rls_forced', 'tenancy_policy');
DELETE FROM tenancy.tables WHERE relation = 'ready_verify_part'::regclass;
DROP TABLE ready_verify_part;

-- policy_mode: shadow is a warning, backfill a failure
SELECT tenancy.set_mode('ready_verify_child', 'shadow') IS NOT NULL AS shadow;
SELECT check_name, relation, status, detail, fix IS NOT NULL AS has_fix
  FROM tenancy.verify() WHERE status <> 'ok';
SELECT tenancy.disable_rls('ready_verify_child') IS NOT NULL AS disabled;
SELECT check_name, relation, status, detail, fix IS NOT NULL AS has_fix
  FROM tenancy.verify() WHERE status <> 'ok';
SET client_min_messages = warning;
SELECT tenancy.enable_rls('ready_verify_child') IS NOT NULL AS enabled;
RESET client_min_messages;
:report WHERE check_name = 'policy_mode';

-- tenant_index
DROP INDEX ready_verify_child_tenant;
:report WHERE check_name = 'tenant_index' AND status <> 'ok';
:fixes WHERE check_name = 'tenant_index' AND status <> 'ok' \gexec
:report WHERE check_name = 'tenant_index';

-- view_security_invoker: a view, and a view over an invoker view
CREATE VIEW ready_verify_view AS SELECT id, name FROM ready_verify_parent;
:report WHERE check_name = 'view_security_invoker' AND status <> 'ok';
:fixes WHERE check_name = 'view_security_invoker' AND status <> 'ok' \gexec
CREATE VIEW ready_verify_view2 AS SELECT id FROM ready_verify_view;
:report WHERE check_name = 'view_security_invoker' AND status <> 'ok';
:fixes WHERE check_name = 'view_security_invoker' AND status <> 'ok' \gexec
:report WHERE check_name = 'view_security_invoker';
DROP VIEW ready_verify_view2, ready_verify_view;

-- bypassrls_role (superusers are left out by design)
CREATE ROLE ready_verify_bypass BYPASSRLS;
GRANT SELECT ON ready_verify_parent TO ready_verify_bypass;
:report WHERE check_name = 'bypassrls_role' AND status <> 'ok';
:fixes WHERE check_name = 'bypassrls_role' AND status <> 'ok' \gexec
:report WHERE check_name = 'bypassrls_role';

-- unregistered_reference
CREATE TABLE ready_verify_orphan (id int PRIMARY KEY, parent_id bigint REFERENCES ready_verify_parent (id));
SELECT check_name, relation, status, detail, fix IS NOT NULL AS has_fix
  FROM tenancy.verify() WHERE status <> 'ok';
INSERT INTO tenancy.tables (relation) VALUES ('ready_verify_orphan');
:report WHERE check_name = 'unregistered_reference';
DELETE FROM tenancy.tables WHERE relation = 'ready_verify_orphan'::regclass;
DROP TABLE ready_verify_orphan;

-- a registered table that was dropped
CREATE TABLE ready_verify_gone (tenant_id uuid);
INSERT INTO tenancy.tables (relation) VALUES ('ready_verify_gone');
DROP TABLE ready_verify_gone;
SELECT check_name, status, detail ~ 'no longer exists' AS gone, fix ~ '^DELETE FROM tenancy.tables' AS fix_deletes
  FROM tenancy.verify() WHERE status <> 'ok';
DO $$ BEGIN EXECUTE (SELECT fix FROM tenancy.verify() WHERE status <> 'ok'); END $$;

-- counting runs with row_security off: a role subject to RLS gets an
-- error, not a wrong count
CREATE ROLE ready_verify_dba;
GRANT SELECT ON ready_verify_parent, ready_verify_child TO ready_verify_dba;
GRANT SELECT ON tenancy.tables, tenancy.tenants, tenancy.memberships, tenancy.identity_sources TO ready_verify_dba;
-- (verify()'s checks run as its caller: it needs them too)
GRANT EXECUTE ON FUNCTION tenancy.verify(regclass, bigint),
    tenancy.verify_tenant_column(regclass, name, boolean, smallint, oid),
    tenancy.verify_null_tenant(regclass, name, bigint),
    tenancy.verify_unknown_tenant(regclass, name, oid, bigint),
    tenancy.verify_conflicting_parents(regclass, bigint),
    tenancy.verify_derived_tenant_mismatch(regclass, name, bigint),
    tenancy.verify_cross_tenant_reference(regclass, name, oid, bigint, text[]),
    tenancy.verify_unique_scope(regclass, name, smallint),
    tenancy.verify_foreign_key_scope(regclass, name),
    tenancy.verify_row_security(regclass, name, text),
    tenancy.verify_policy_mode(regclass, name, text),
    tenancy.verify_rollout(regclass),
    tenancy.verify_shadow_divergence(regclass),
    tenancy.verify_tenant_index(regclass, name, smallint, "char"),
    tenancy.verify_view_security_invoker(regclass),
    tenancy.verify_materialized_view(regclass),
    tenancy.verify_security_definer_function(regclass),
    tenancy.verify_bypassrls_role(regclass),
    tenancy.verify_unregistered_reference(regclass),
    tenancy.verify_shared_table(),
    tenancy.verify_user_without_tenant(bigint),
    tenancy.verify_tenant_without_owner()
    TO ready_verify_dba;
SET ROLE ready_verify_dba;
SELECT count(*) FROM tenancy.verify();
RESET ROLE;

-- Clean again.
SELECT count(*) FILTER (WHERE status <> 'ok') AS not_ok, count(*) AS checked FROM tenancy.verify();

DROP EXTENSION tenancy CASCADE;
DROP TABLE ready_verify_child, ready_verify_parent;
DROP ROLE ready_verify_bypass, ready_verify_dba;
