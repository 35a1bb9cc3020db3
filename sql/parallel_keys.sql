-- Parallel queries with every key type (issue 14, item 1): a parallel
-- worker restores the leader's settings in name order, tenancy.tenant_id
-- before tenancy.tenant_type, so the key must not be parsed under the key
-- type the worker has at that moment.  Each key type is set per database
-- (ALTER DATABASE), per role (ALTER ROLE ... IN DATABASE) or, for uuid,
-- left at its default; the cluster-wide setting (postgresql.conf) is in
-- the shell TAP test test/parallel_keys.sh.
CREATE ROLE par_app LOGIN;
CREATE DATABASE tenancy_par_bigint;
ALTER DATABASE tenancy_par_bigint SET tenancy.tenant_type = 'bigint';
CREATE DATABASE tenancy_par_text;
ALTER DATABASE tenancy_par_text SET tenancy.tenant_type = 'text';
CREATE DATABASE tenancy_par_role;
ALTER ROLE postgres IN DATABASE tenancy_par_role SET tenancy.tenant_type = 'text';
ALTER ROLE par_app IN DATABASE tenancy_par_role SET tenancy.tenant_type = 'text';

-- uuid, the default.
CREATE EXTENSION tenancy;
\set keytype uuid
\set accessor 'tenancy.current_tenant()'
\set k1 aaaaaaaa-0000-0000-0000-000000000001
\set k2 aaaaaaaa-0000-0000-0000-000000000002
\ir parallel_keys.psql
DROP TABLE par_plain, par_rls, par_part;
DROP EXTENSION tenancy;

-- bigint, set for the database.
\c tenancy_par_bigint
CREATE EXTENSION tenancy;
SHOW tenancy.tenant_type;
\set keytype bigint
\set accessor 'tenancy.current_tenant_bigint()'
\set k1 1
\set k2 12
\ir parallel_keys.psql

-- text, set for the database.
\c tenancy_par_text
CREATE EXTENSION tenancy;
SHOW tenancy.tenant_type;
\set keytype text
\set accessor 'tenancy.current_tenant_text()'
\set k1 'store 1'
-- k2 has the shape of a uuid, not its canonical spelling
\set k2 'AAAAAAAA-0000-0000-0000-00000000000C'
\ir parallel_keys.psql

-- text, set for the roles (superuser and application role) in the
-- database; then the application role is bound to a tenant (bind_role(),
-- tenancy.tenant_id at role level too) and logs in with it as its default.
\c tenancy_par_role
CREATE EXTENSION tenancy;
SHOW tenancy.tenant_type;
\set keytype text
\set accessor 'tenancy.current_tenant_text()'
\set k1 'store 1'
\set k2 '12'
\ir parallel_keys.psql
SELECT tenancy.bind_role('par_app', 'par-two') IS NOT NULL AS bound;
\c tenancy_par_role par_app
SHOW tenancy.tenant_type;
SHOW tenancy.tenant_id;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
SET enable_indexscan = off;
SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM par_rls;
SELECT (SELECT count(*) FROM par_plain WHERE tenant_id = tenancy.current_tenant_text()) AS plain,
       (SELECT count(*) FROM par_part WHERE tenant_id = tenancy.current_tenant_text()) AS part,
       (SELECT count(*) FROM par_rls) AS rls;
-- A bound role cannot switch (sql/role_bindings.sql): without the binding,
-- its default set by ALTER ROLE alone, it switches for one transaction.
\c tenancy_par_role postgres
DELETE FROM tenancy.role_bindings;
\c tenancy_par_role par_app
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
SET enable_indexscan = off;
SET enable_bitmapscan = off;
BEGIN;
SELECT tenancy.set_tenant('store 1') IS NOT NULL AS set;
SELECT (SELECT count(*) FROM par_plain WHERE tenant_id = tenancy.current_tenant_text()) AS plain,
       (SELECT count(*) FROM par_part WHERE tenant_id = tenancy.current_tenant_text()) AS part,
       (SELECT count(*) FROM par_rls) AS rls;
COMMIT;

\c contrib_regression postgres
DROP DATABASE tenancy_par_bigint;
DROP DATABASE tenancy_par_text;
DROP DATABASE tenancy_par_role;
DROP ROLE par_app;
