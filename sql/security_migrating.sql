-- Migrating mode: rows whose tenant is still NULL stay readable by every
-- tenant, but only the implicit tenant may update or delete them; with no
-- implicit tenant nobody may until they are backfilled.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
SELECT tenancy.create_tenant('legacy', 'Legacy', '00000000-0000-0000-0000-0000000000c3') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('legacy') IS NOT NULL AS implicit;
CREATE ROLE sec_mig_owner;
CREATE ROLE sec_mig_app;
CREATE ROLE sec_mig_legacy LOGIN;
GRANT CREATE ON SCHEMA public TO sec_mig_owner;

SET ROLE sec_mig_owner;
CREATE TABLE mig (id int PRIMARY KEY, tenant_id uuid DEFAULT tenancy.current_tenant(), body text);
CREATE INDEX mig_tenant ON mig (tenant_id);
INSERT INTO mig VALUES
    (1, '00000000-0000-0000-0000-0000000000a1', 'a one'),
    (2, '00000000-0000-0000-0000-0000000000b2', 'b two'),
    (3, '00000000-0000-0000-0000-0000000000c3', 'legacy three'),
    (9, NULL, 'original nine'),
    (10, NULL, 'original ten');
GRANT SELECT, INSERT, UPDATE, DELETE ON mig TO sec_mig_app, sec_mig_legacy;
-- The preview shows every policy of the mode.
SELECT tenancy.policy_sql('mig', mode => 'migrating');
SELECT tenancy.enable_rls('mig', mode => 'migrating') IS NOT NULL AS enabled;
SELECT polname, polcmd, pg_get_expr(polqual, polrelid) AS using_expr,
       pg_get_expr(polwithcheck, polrelid) AS check_expr
  FROM pg_policy WHERE polrelid = 'mig'::regclass ORDER BY polname;
RESET ROLE;

-- The attack: tenant bolt moves or deletes the original customer's rows.
SET ROLE sec_mig_app;
BEGIN;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
SELECT array_agg(id ORDER BY id) AS bolt_reads FROM mig;
UPDATE mig SET tenant_id = tenancy.current_tenant() WHERE tenant_id IS NULL RETURNING id;
UPDATE mig SET body = 'edited by bolt' WHERE id = 9 RETURNING id;
DELETE FROM mig WHERE tenant_id IS NULL RETURNING id;
SELECT FROM mig WHERE id = 9 FOR UPDATE;
-- nor write rows without a tenant
INSERT INTO mig VALUES (11, NULL, 'no tenant');
\echo :LAST_ERROR_SQLSTATE
UPDATE mig SET tenant_id = NULL WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
COMMIT;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT array_agg(id ORDER BY id) AS acme_reads FROM mig;
DELETE FROM mig WHERE id IN (9, 10) RETURNING id;
COMMIT;
RESET ROLE;
SELECT id, tenant_id, body FROM mig ORDER BY id;

-- The implicit tenant may: the bound legacy role, as the legacy code does.
SELECT tenancy.bind_role('sec_mig_legacy') IS NOT NULL AS bound;
SELECT current_user AS orig_user \gset
\c - sec_mig_legacy
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT array_agg(id ORDER BY id) AS legacy_reads FROM mig;
UPDATE mig SET body = 'edited by legacy' WHERE id = 9 RETURNING id, tenant_id;
UPDATE mig SET tenant_id = tenancy.current_tenant() WHERE id = 10 RETURNING id, tenant_id;
BEGIN;
DELETE FROM mig WHERE id = 9 RETURNING id;
ROLLBACK;
\c - :orig_user
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.unbind_role('sec_mig_legacy') IS NOT NULL AS unbound;

-- The implicit tenant is looked up when the statement runs: no implicit
-- tenant, nobody may change the rows (no set_mode() needed in between).
UPDATE tenancy.tenants SET is_implicit = false;
SET ROLE sec_mig_app;
BEGIN;
SELECT tenancy.set_tenant('legacy') IS NOT NULL AS set;
UPDATE mig SET body = 'edited without implicit' WHERE id = 9 RETURNING id;
DELETE FROM mig WHERE tenant_id IS NULL RETURNING id;
SELECT array_agg(id ORDER BY id) AS still_reads FROM mig;
COMMIT;
RESET ROLE;
SELECT tenancy.set_implicit_tenant('legacy') IS NOT NULL AS implicit;

-- Other modes have the one policy; migrating gets its own back.
SET ROLE sec_mig_owner;
SELECT tenancy.set_mode_sql('mig', 'enforce');
SELECT tenancy.set_mode('mig', 'enforce') IS NOT NULL AS switched;
SELECT polname FROM pg_policy WHERE polrelid = 'mig'::regclass ORDER BY polname;
SELECT tenancy.set_mode('mig', 'migrating') IS NOT NULL AS switched;
SELECT polname FROM pg_policy WHERE polrelid = 'mig'::regclass ORDER BY polname;
RESET ROLE;
SELECT check_name, status, detail FROM tenancy.verify('mig') WHERE check_name = 'tenancy_policy';
SET ROLE sec_mig_owner;
-- verify(): a legacy policy missing in migrating, or left over in enforce
DROP POLICY tenancy_policy_legacy_delete ON mig;
RESET ROLE;
SELECT check_name, status, detail FROM tenancy.verify('mig') WHERE check_name = 'tenancy_policy';
SET ROLE sec_mig_owner;
SELECT tenancy.set_mode('mig', 'enforce') IS NOT NULL AS switched;
CREATE POLICY tenancy_policy_legacy_read ON mig FOR SELECT USING (tenant_id IS NULL);
RESET ROLE;
SELECT check_name, status, detail FROM tenancy.verify('mig') WHERE check_name = 'tenancy_policy';
SET ROLE sec_mig_owner;
SELECT kind, object FROM tenancy.rls_advisories('mig') WHERE kind = 'permissive_policy';
SELECT tenancy.set_mode('mig', 'migrating') IS NOT NULL AS switched;
-- disable_rls() and rollback drop them all.
SELECT tenancy.disable_rls('mig') IS NOT NULL AS disabled;
SELECT count(*) AS left_policies FROM pg_policy WHERE polrelid = 'mig'::regclass;
SELECT tenancy.enable_rls('mig', mode => 'migrating') IS NOT NULL AS enabled;
RESET ROLE;
SELECT count(*) AS undone FROM tenancy.rollback_table('mig');
SELECT count(*) AS left_policies FROM pg_policy WHERE polrelid = 'mig'::regclass;

DROP TABLE mig;
DROP EXTENSION tenancy;
REVOKE ALL ON SCHEMA public FROM sec_mig_owner;
DROP ROLE sec_mig_owner, sec_mig_app, sec_mig_legacy;
