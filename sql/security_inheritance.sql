-- Inheritance children of a covered table get the tenant policy, as
-- partitions do: created with INHERITS, attached with ALTER TABLE ... INHERIT,
-- at any depth.  verify() reports a child without it as a failure.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
CREATE ROLE sec_inh_owner;
CREATE ROLE sec_inh_app;
GRANT CREATE ON SCHEMA public TO sec_inh_owner;

SET ROLE sec_inh_owner;
-- the default privileges of the finding: every new table is readable by the app
ALTER DEFAULT PRIVILEGES GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO sec_inh_app;
CREATE TABLE inh_parent (id int, tenant_id uuid DEFAULT tenancy.current_tenant(), body text);
CREATE INDEX inh_parent_tenant ON inh_parent (tenant_id);
SELECT tenancy.enable_rls('inh_parent', roles => '{sec_inh_app}') IS NOT NULL AS enabled;
CREATE TABLE inh_child (extra int) INHERITS (inh_parent);
CREATE TABLE inh_grandchild () INHERITS (inh_child);
CREATE TABLE inh_late (id int, tenant_id uuid, body text);
ALTER TABLE inh_late INHERIT inh_parent;
SELECT relation, root, mode FROM tenancy.rls_tables ORDER BY relation::text;
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, p.polname, p.polroles::regrole[]
  FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
 WHERE c.relname LIKE 'inh\_%' AND c.relkind = 'r' ORDER BY c.relname, p.polname;
RESET ROLE;
INSERT INTO inh_child (id, tenant_id, body, extra) VALUES
    (1, '00000000-0000-0000-0000-0000000000a1', 'a child', 1),
    (2, '00000000-0000-0000-0000-0000000000b2', 'b child', 2);
INSERT INTO inh_grandchild VALUES
    (3, '00000000-0000-0000-0000-0000000000b2', 'b grandchild', 3);
INSERT INTO inh_late VALUES (4, '00000000-0000-0000-0000-0000000000b2', 'b late');

-- The app in tenant acme reads no row of bolt, through the parent or directly.
SET ROLE sec_inh_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT array_agg(id ORDER BY id) AS via_parent FROM inh_parent;
SELECT array_agg(id ORDER BY id) AS child FROM inh_child;
SELECT array_agg(id ORDER BY id) AS grandchild FROM inh_grandchild;
SELECT array_agg(id ORDER BY id) AS late FROM inh_late;
INSERT INTO inh_grandchild VALUES (5, '00000000-0000-0000-0000-0000000000b2', 'into bolt', 5);
COMMIT;
RESET ROLE;

-- set_mode() and disable_rls() act on the children too; not on a child.
SET ROLE sec_inh_owner;
SELECT tenancy.set_mode('inh_child', 'migrating');
SELECT tenancy.set_mode('inh_parent', 'migrating') IS NOT NULL AS switched;
SELECT relation, mode FROM tenancy.rls_tables ORDER BY relation::text;
SELECT tenancy.set_mode('inh_parent', 'enforce') IS NOT NULL AS switched;
RESET ROLE;

-- A child the event trigger did not see (it was disabled) is a failure in
-- verify() and an advisory.
ALTER EVENT TRIGGER tenancy_rls_cover_partitions DISABLE;
SET ROLE sec_inh_owner;
CREATE TABLE inh_missed () INHERITS (inh_parent);
RESET ROLE;
ALTER EVENT TRIGGER tenancy_rls_cover_partitions ENABLE;
SELECT check_name, relation, status, fix FROM tenancy.verify('inh_parent')
 WHERE check_name IN ('rls_enabled', 'rls_forced', 'tenancy_policy') ORDER BY relation::text, check_name;
SELECT kind, object FROM tenancy.rls_advisories('inh_parent') WHERE kind LIKE '%child%' ORDER BY object;
-- verify()'s fix covers it.
SET ROLE sec_inh_owner;
SELECT tenancy.set_mode('inh_parent', 'enforce') IS NOT NULL AS switched;
RESET ROLE;
SELECT check_name, relation, status FROM tenancy.verify('inh_parent')
 WHERE relation = 'inh_missed'::regclass AND check_name IN ('rls_enabled', 'rls_forced', 'tenancy_policy')
 ORDER BY check_name;
SET ROLE sec_inh_owner;
DROP TABLE inh_missed;

SELECT tenancy.disable_rls('inh_parent') IS NOT NULL AS disabled;
SELECT count(*) AS left_registered FROM tenancy.rls_tables;
SELECT count(*) AS left_policies FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relname LIKE 'inh\_%';
SELECT count(*) AS left_rls FROM pg_class c WHERE c.relname LIKE 'inh\_%' AND (c.relrowsecurity OR c.relforcerowsecurity);
DROP TABLE inh_parent CASCADE;
ALTER DEFAULT PRIVILEGES REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM sec_inh_app;
RESET ROLE;
DROP EXTENSION tenancy;
REVOKE ALL ON SCHEMA public FROM sec_inh_owner;
DROP ROLE sec_inh_owner, sec_inh_app;
