-- From one node to many (issue 17), on a node without Citus: every
-- function that acts on a cluster says that Citus is missing (55000) and
-- changes nothing; verify() has no Citus rows; citus_installed() is false.
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('one', 'One', '1');
SELECT tenancy.set_implicit_tenant('one');
CREATE TABLE t (id integer PRIMARY KEY);
SELECT tenancy.add_tenant_column('t') IS NOT NULL AS added;
SELECT tenancy.citus_installed();
SELECT tenancy.citus_table('t');
SELECT tenancy.citus_anchor();
SELECT * FROM tenancy.distribute_order();
\set VERBOSITY sqlstate
SELECT * FROM tenancy.distribute_plan();
\set VERBOSITY default
SELECT * FROM tenancy.distribute_plan();
\set VERBOSITY terse
SELECT * FROM tenancy.distribute_sql();
CALL tenancy.distribute();
SELECT * FROM tenancy.undistribute_sql();
SELECT * FROM tenancy.isolate_tenant_sql('t', '1');
SELECT * FROM tenancy.isolate_tenant('t', '1');
SELECT * FROM tenancy.tenant_shards('t', '1');
SELECT tenancy.citus_required('a test');
-- citus_run() runs Citus's distribution calls only
SELECT tenancy.citus_run('DROP TABLE t');
SELECT tenancy.citus_run(NULL);
SELECT tenancy.citus_remap('[]');
SELECT tenancy.citus_remap('{}');
-- verify(): no Citus check without Citus
SELECT count(*) AS citus_rows FROM tenancy.verify() WHERE check_name LIKE 'citus%';
SELECT * FROM tenancy.citus_verify();
\set VERBOSITY default
-- the bookkeeping map names every registered table
SELECT tenancy.citus_names() = jsonb_build_object('t'::regclass::oid::text, 'public.t') AS names;
-- citus_remap() points the bookkeeping at a table of the same name rebuilt
CREATE TABLE t_new (id integer PRIMARY KEY, tenant_id bigint);
-- (the background worker's status row of t is bookkeeping too: made now, so
-- that the count does not depend on whether the worker has counted t yet)
SELECT count(*) AS status_rows FROM tenancy.refresh_status('t');
SELECT tenancy.citus_remap(jsonb_build_object('t'::regclass::oid::text, 'public.t_new')) AS rows_changed;
SELECT relation FROM tenancy.tables;
DROP EXTENSION tenancy CASCADE;
DROP TABLE t, t_new;
RESET tenancy.tenant_type;
