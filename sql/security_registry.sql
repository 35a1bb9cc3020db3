-- tenancy.tables (the registry of tables under migration: tenant column,
-- source, stage) is written only through the extension: no role is granted
-- INSERT, UPDATE or DELETE on it, so a migration role cannot point a table
-- at another tenant column nor claim a stage; and verify()'s policy_mode
-- reads the mode from tenancy.rls_tables and pg_policy, not from the stage.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('acme') IS NOT NULL AS implicit;
CREATE ROLE sreg_owner;
CREATE ROLE sreg_migrator;
CREATE SCHEMA sreg AUTHORIZATION sreg_owner;
GRANT USAGE ON SCHEMA sreg TO PUBLIC;
-- The grants the README lists for a migration role (Backfilling).
GRANT USAGE ON SCHEMA tenancy TO sreg_migrator;
GRANT SELECT ON tenancy.tenants, tenancy.backfill_jobs, tenancy.tables TO sreg_migrator;
GRANT EXECUTE ON FUNCTION tenancy.tenant_key(text), tenancy.lookup_tenant(text),
    tenancy.backfill_job_insert(regclass, name, text, text, text, text, jsonb),
    tenancy.backfill_job_update(bigint, jsonb) TO sreg_migrator;
GRANT EXECUTE ON PROCEDURE tenancy.backfill TO sreg_migrator;
GRANT EXECUTE ON FUNCTION tenancy.backfill_try_lock(regclass), tenancy.backfill_unlock(regclass),
    tenancy.preallocate_wal(bigint) TO sreg_migrator;
GRANT EXECUTE ON FUNCTION tenancy.tables_register(regclass, name, text),
    tenancy.tables_set_stage(regclass, text, text) TO sreg_migrator;

SET ROLE sreg_owner;
CREATE TABLE sreg.notes (id int PRIMARY KEY, tenant_id uuid, ref uuid);
INSERT INTO sreg.notes SELECT g FROM generate_series(1, 3) g;
CREATE TABLE sreg.inv (id int PRIMARY KEY, tenant_id uuid, ref uuid);
INSERT INTO sreg.inv VALUES (1, NULL, '11111111-1111-1111-1111-111111111111'),
                            (2, NULL, '11111111-1111-1111-1111-111111111111');
GRANT SELECT, UPDATE ON sreg.notes, sreg.inv TO sreg_migrator;
RESET ROLE;

-- The migration role backfills with these grants: the registry is written
-- for it (registered, stage backfill).
SET ROLE sreg_migrator;
CALL tenancy.backfill('sreg.notes');
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS left_null FROM sreg.notes;
SELECT relation, column_name, source, stage FROM tenancy.tables ORDER BY relation::text;
RESET ROLE;
-- The owner puts the policy on, in migrating mode; inv is registered.
SET ROLE sreg_owner;
SELECT tenancy.enable_rls('sreg.notes', mode => 'migrating') IS NOT NULL AS enabled;
RESET ROLE;
INSERT INTO tenancy.tables (relation) VALUES ('sreg.inv');

-- Repro 1: claiming stage enforce.  No direct write, and the writer
-- function refuses the policy stages (only enable_rls()/set_mode() set
-- them) and tables the role does not own.
SET ROLE sreg_migrator;
UPDATE tenancy.tables SET stage = 'enforce' WHERE relation = 'sreg.notes'::regclass;
INSERT INTO tenancy.tables (relation, column_name, stage) VALUES ('sreg.notes', 'ref', 'enforce')
    ON CONFLICT (relation) DO UPDATE SET column_name = 'ref', stage = 'enforce';
DELETE FROM tenancy.tables WHERE relation = 'sreg.inv'::regclass;
SELECT tenancy.tables_set_stage('sreg.notes', 'enforce');
SELECT tenancy.tables_set_stage('sreg.inv', 'contract');
SELECT tenancy.tables_set_stage('sreg.inv', 'backfill');
-- What a backfill does, for a column it may update: expand to backfill.
SELECT tenancy.tables_set_stage('sreg.inv', 'backfill', 'expand');
SELECT tenancy.tables_set_stage('sreg.inv', 'backfill', 'expand') AS again;
-- Repro 2: pointing inv at another uuid column, hiding its NULL tenants.
UPDATE tenancy.tables SET column_name = 'ref' WHERE relation = 'sreg.inv'::regclass;
SELECT tenancy.tables_register('sreg.inv', 'ref', NULL);
RESET ROLE;
SELECT relation, column_name, source, stage FROM tenancy.tables ORDER BY relation::text;
SELECT check_name, relation, status, rows_affected FROM tenancy.verify()
 WHERE check_name IN ('tenant_column', 'null_tenant', 'policy_mode') ORDER BY relation::text, check_name;

-- Even a stage forged by a role that can write the table (a superuser
-- here) does not fool policy_mode: the mode is the policy's.
UPDATE tenancy.tables SET stage = 'enforce' WHERE relation IN ('sreg.notes'::regclass, 'sreg.inv'::regclass);
SELECT check_name, relation, status, detail FROM tenancy.verify()
 WHERE check_name = 'policy_mode' ORDER BY relation::text;
SET ROLE sreg_owner;
SELECT tenancy.set_mode('sreg.notes', 'enforce') IS NOT NULL AS enforced;
RESET ROLE;
UPDATE tenancy.tables SET stage = 'backfill' WHERE relation = 'sreg.notes'::regclass;
SELECT check_name, relation, status, detail FROM tenancy.verify()
 WHERE check_name = 'policy_mode' ORDER BY relation::text;

-- A tenancy_policy made by hand (not recorded by enable_rls()) has no known
-- mode: a failure whatever the stage says.
CREATE POLICY tenancy_policy ON sreg.inv USING (true);
SELECT check_name, relation, status, detail FROM tenancy.verify('sreg.inv')
 WHERE check_name = 'policy_mode';
DROP POLICY tenancy_policy ON sreg.inv;

-- Bad input changes nothing.
SELECT tenancy.tables_set_stage(NULL, 'backfill');
SELECT tenancy.tables_set_stage('sreg.inv', 'nonsense');
SELECT tenancy.tables_register('sreg.inv', NULL, NULL);
SELECT tenancy.tables_register('sreg.inv', 'no_such_column', NULL);
SELECT relation, column_name, source, stage FROM tenancy.tables ORDER BY relation::text;

SET ROLE sreg_owner;
SELECT tenancy.disable_rls('sreg.notes') IS NOT NULL AS disabled;
RESET ROLE;
DROP SCHEMA sreg CASCADE;
DROP OWNED BY sreg_migrator;
DROP ROLE sreg_migrator, sreg_owner;
DROP EXTENSION tenancy;
