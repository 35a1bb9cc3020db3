-- tenancy.tables.stage reaches contract (issue 14, item 11): a table in
-- stage enforce whose tenant column is NOT NULL and whose unique
-- constraints and foreign keys are tenant-scoped.  enforce_not_null() and
-- the last statement of scope_constraints_sql() set it, whichever ends the
-- contract phase; rollback_table() puts the stage back.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('acme') IS NOT NULL AS implicit;
CREATE TABLE sc_parent (id int PRIMARY KEY, code text UNIQUE);
CREATE TABLE sc_child (id int PRIMARY KEY, parent_id int CONSTRAINT sc_child_parent_fk REFERENCES sc_parent);
CREATE TABLE sc_other (id int PRIMARY KEY);
INSERT INTO sc_parent SELECT g, 'p' || g FROM generate_series(1, 3) g;
INSERT INTO sc_child SELECT g, 1 + g % 3 FROM generate_series(1, 6) g;
INSERT INTO sc_other SELECT g FROM generate_series(1, 3) g;
SET client_min_messages = warning;
SELECT tenancy.add_tenant_column('sc_parent', fill_existing => true) IS NOT NULL AS added;
SELECT tenancy.add_tenant_column('sc_child', fill_existing => true) IS NOT NULL AS added;
SELECT tenancy.add_tenant_column('sc_other', fill_existing => true) IS NOT NULL AS added;
SELECT tenancy.enable_rls('sc_parent', mode => 'enforce') IS NOT NULL AS rls;
SELECT tenancy.enable_rls('sc_child', mode => 'enforce') IS NOT NULL AS rls;
SELECT tenancy.enable_rls('sc_other', mode => 'migrating') IS NOT NULL AS rls;
RESET client_min_messages;
SELECT relation, stage FROM tenancy.tables ORDER BY relation::text;

-- NOT NULL alone: the constraints are left, the stage stays enforce.
CALL tenancy.enforce_not_null('sc_parent');
CALL tenancy.enforce_not_null('sc_child');
SELECT relation, stage FROM tenancy.tables ORDER BY relation::text;
SELECT tenancy.finish_contract('sc_parent') AS reached;

-- The scoped constraints: the plan's last statement ends the phase (before
-- the RESET of the preview's timeouts).
SELECT s FROM tenancy.scope_constraints_sql('sc_child') WITH ORDINALITY AS x(s, i) WHERE s !~ '^RESET ' ORDER BY i DESC LIMIT 1;
\set ON_ERROR_STOP on
SELECT * FROM tenancy.scope_constraints_sql() \gexec
\set ON_ERROR_STOP off
SELECT relation, stage FROM tenancy.tables ORDER BY relation::text;

-- A table in stage migrating does not: contract follows enforce, and the
-- table's NOT NULL then ends it from enforce_not_null().
CALL tenancy.enforce_not_null('sc_other');
SELECT tenancy.finish_contract('sc_other') AS reached;
SELECT tenancy.set_mode('sc_other', 'enforce') IS NOT NULL AS enforced;
CALL tenancy.enforce_not_null('sc_other');
SELECT relation, stage FROM tenancy.tables WHERE relation = 'sc_other'::regclass;

-- rollback_table(): the stage goes back to backfill.
SELECT count(*) > 0 AS undone FROM tenancy.rollback_table('sc_other');
SELECT relation, stage FROM tenancy.tables WHERE relation = 'sc_other'::regclass;

-- Only the migration roles may (revoked from PUBLIC).
CREATE ROLE sc_nobody;
SET ROLE sc_nobody;
SELECT tenancy.finish_contract('sc_parent');
RESET ROLE;
DROP ROLE sc_nobody;

DROP TABLE sc_child, sc_parent, sc_other;
DROP EXTENSION tenancy;
