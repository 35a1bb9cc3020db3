-- pgTAP: objects, settings and privileges of the migration status and the
-- background worker.
BEGIN;
CREATE EXTENSION tenancy;
SELECT plan(25);

SELECT has_table('tenancy', 'migration_status', 'migration_status exists');
SELECT col_is_pk('tenancy', 'migration_status', 'relation', 'one status row per relation');
SELECT col_type_is('tenancy', 'migration_status', 'relation', 'regclass', 'relation is a regclass');
SELECT col_type_is('tenancy', 'migration_status', 'unmigrated', 'bigint', 'unmigrated is a bigint');
SELECT col_type_is('tenancy', 'migration_status', 'total_rows', 'bigint', 'total_rows is a bigint');
SELECT col_type_is('tenancy', 'migration_status', 'percent_migrated', 'numeric', 'percent_migrated is numeric');
SELECT col_type_is('tenancy', 'migration_status', 'rate_per_s', 'numeric', 'rate_per_s is numeric');
SELECT col_type_is('tenancy', 'migration_status', 'eta', 'interval', 'eta is an interval');
SELECT col_type_is('tenancy', 'migration_status', 'checked_at', 'timestamp with time zone', 'checked_at is a timestamptz');
SELECT col_has_check('tenancy', 'migration_status', 'method', 'method is checked');
SELECT throws_ok($$INSERT INTO tenancy.migration_status (relation, column_name, method, checked_at)
                   VALUES ('pg_class', 'x', 'guess', now())$$, '23514', NULL,
                 'method is proof, exact or estimate');
SELECT ok(NOT EXISTS (SELECT 1 FROM pg_extension e, unnest(e.extconfig) c
                       WHERE e.extname = 'tenancy' AND c = 'tenancy.migration_status'::regclass),
          'migration_status is derived data, not dumped');

SELECT function_returns('tenancy', 'refresh_status', ARRAY['regclass'], 'setof tenancy.migration_status');
SELECT volatility_is('tenancy', 'refresh_status', ARRAY['regclass'], 'volatile');
SELECT isnt_definer('tenancy', 'refresh_status', ARRAY['regclass'], 'refresh_status() runs as its caller');

-- An application role can neither read the status nor refresh it.
CREATE ROLE worker_schema_app;
SELECT ok(NOT has_table_privilege('worker_schema_app', 'tenancy.migration_status', 'SELECT'),
          'PUBLIC cannot read migration_status');
SELECT ok(NOT has_table_privilege('worker_schema_app', 'tenancy.migration_status', 'INSERT'),
          'PUBLIC cannot write migration_status');
SELECT ok(NOT has_function_privilege('worker_schema_app', 'tenancy.refresh_status(regclass)', 'EXECUTE'),
          'PUBLIC cannot call refresh_status()');
SET LOCAL ROLE worker_schema_app;
SELECT throws_ok($$SELECT * FROM tenancy.refresh_status()$$, '42501', NULL,
                 'refresh_status() refused to an application role');
RESET ROLE;

-- Settings: reloadable worker settings, superuser-only budgets.
SELECT is((SELECT context FROM pg_settings WHERE name = 'tenancy.worker_databases'), 'sighup',
          'worker_databases is reloaded on SIGHUP');
SELECT is((SELECT context FROM pg_settings WHERE name = 'tenancy.worker_interval'), 'sighup',
          'worker_interval is reloaded on SIGHUP');
SELECT is((SELECT context FROM pg_settings WHERE name = 'tenancy.worker_role'), 'sighup',
          'worker_role is reloaded on SIGHUP');
SELECT is((SELECT context FROM pg_settings WHERE name = 'tenancy.worker_run_backfills'), 'sighup',
          'worker_run_backfills is reloaded on SIGHUP');
SELECT is((SELECT context FROM pg_settings WHERE name = 'tenancy.worker_cycle_budget'), 'superuser',
          'worker_cycle_budget is for superusers');
SELECT throws_ok($$SET tenancy.worker_databases = 'a,"b'$$, '55P02', NULL,
                 'worker_databases cannot be set in a session');

SELECT * FROM finish();
ROLLBACK;
