-- tenancy.allow_session_tenant = off: no transaction may leave a
-- session-level tenant behind, whatever way it was set.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('globex', 'Globex', 'bbbbbbbb-0000-0000-0000-000000000002');
SELECT tenancy.reset_context_stats();
SET tenancy.allow_session_tenant = off;

-- Refused up front by set_tenant(..., is_local => false).
SELECT tenancy.set_tenant('acme', false);
-- Refused at commit for SET and set_config(..., false), in or out of a block.
\set VERBOSITY sqlstate
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
\set VERBOSITY default
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
SELECT tenancy.current_tenant() IS NULL AS not_kept;
SELECT set_config('tenancy.tenant_id', 'aaaaaaaa-0000-0000-0000-000000000001', false);
SELECT tenancy.current_tenant() IS NULL AS not_kept;
BEGIN;
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
SELECT tenancy.current_tenant();
COMMIT;
SELECT tenancy.current_tenant() IS NULL AS not_kept;
-- A session SET masked by a later SET LOCAL is still refused.
BEGIN;
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
SET LOCAL tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-000000000002';
COMMIT;
SELECT tenancy.current_tenant() IS NULL AS not_kept;
-- A session SET inside a released savepoint is refused too.
BEGIN;
SAVEPOINT s;
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
RELEASE SAVEPOINT s;
COMMIT;
SELECT tenancy.current_tenant() IS NULL AS not_kept;

-- Allowed: transaction-local settings, and unsetting.
BEGIN;
SET LOCAL tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
SELECT tenancy.current_tenant_text();
COMMIT;
BEGIN;
SELECT tenancy.set_tenant('globex');
SELECT tenancy.current_tenant_text();
COMMIT;
BEGIN;
SELECT set_config('tenancy.tenant_id', 'aaaaaaaa-0000-0000-0000-000000000001', true) IS NOT NULL AS local_ok;
COMMIT;
-- Parallel workers inherit the transaction's tenant; their setup is not a
-- session-level setting.
CREATE TABLE session_guard_rows AS
SELECT i, CASE WHEN i % 2 = 0 THEN 'aaaaaaaa-0000-0000-0000-000000000001'::uuid
               ELSE 'bbbbbbbb-0000-0000-0000-000000000002'::uuid END AS tenant_id
  FROM generate_series(1, 1000) AS i;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS tenant_set;
SET LOCAL force_parallel_mode = on;
SET LOCAL parallel_setup_cost = 0;
SET LOCAL parallel_tuple_cost = 0;
EXPLAIN (COSTS OFF) SELECT count(*) FROM session_guard_rows WHERE tenant_id = tenancy.current_tenant();
SELECT count(*) FROM session_guard_rows WHERE tenant_id = tenancy.current_tenant();
COMMIT;
DROP TABLE session_guard_rows;

-- A session SET undone by a savepoint rollback leaves nothing behind.
BEGIN;
SAVEPOINT s;
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
ROLLBACK TO SAVEPOINT s;
COMMIT;
SET tenancy.tenant_id = '';
RESET tenancy.tenant_id;
SELECT tenancy.clear_tenant();
DISCARD ALL;
SELECT tenancy.current_tenant() IS NULL AS unset;

-- DISCARD ALL reset the guard itself (it is a session setting here).
SHOW tenancy.allow_session_tenant;
SELECT refused_session FROM tenancy.context_stats();

-- An application role cannot lift the guard.
CREATE ROLE session_guard_app;
SET tenancy.allow_session_tenant = off;
SET ROLE session_guard_app;
SET tenancy.allow_session_tenant = on;
SHOW tenancy.allow_session_tenant;
RESET ROLE;
DROP ROLE session_guard_app;
RESET tenancy.allow_session_tenant;

DROP EXTENSION tenancy CASCADE;
