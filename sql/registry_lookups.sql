-- The shared helpers of the registry and of lock retries, one of each:
-- tenancy.registered_table() (55000 for a table that exists but is not
-- registered, raised alike by the SQL functions and src/status.c),
-- tenancy.tenant_column() and tenancy.backoff_delay().
CREATE EXTENSION tenancy;
CREATE TABLE rl_unregistered (id int PRIMARY KEY, tenant_id uuid);
CREATE TABLE rl_registered (id int PRIMARY KEY);
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('acme') IS NOT NULL AS implicit;
SELECT tenancy.add_tenant_column('rl_registered', 'org_id') IS NOT NULL AS added;
-- registered_table(): the row, or 55000
SELECT relation, column_name, stage FROM tenancy.registered_table('rl_registered');
\set VERBOSITY default
SELECT * FROM tenancy.registered_table('rl_unregistered');
\set VERBOSITY sqlstate
-- the same condition, the same SQLSTATE, wherever it is checked
SELECT * FROM tenancy.enforce_not_null_sql('rl_unregistered');
SELECT * FROM tenancy.scope_constraints_sql('rl_unregistered');
SELECT * FROM tenancy.rollback_table_sql('rl_unregistered');
SELECT * FROM tenancy.refresh_status('rl_unregistered');
\set VERBOSITY default
-- and the same message and hint from C
SELECT * FROM tenancy.refresh_status('rl_unregistered');
-- tenant_column(): the registered column, else tenant_id
SELECT tenancy.tenant_column('rl_registered') AS registered,
       tenancy.tenant_column('rl_unregistered') AS unregistered,
       pg_typeof(tenancy.tenant_column('rl_registered')) AS type;
-- backoff_delay(): base doubled per attempt up to cap, jitter [0.5, 1.5)
SELECT a AS attempt,
       bool_and(d >= least(interval '10ms' * 2 ^ (a - 1), interval '2s') * 0.5
                AND d < least(interval '10ms' * 2 ^ (a - 1), interval '2s') * 1.5) AS within,
       count(DISTINCT d) > 1 AS jittered
  FROM generate_series(1, 12) a,
       LATERAL (SELECT tenancy.backoff_delay(a, '10ms', '2s') AS d FROM generate_series(1, 50)) s
 GROUP BY a ORDER BY a;
SELECT tenancy.backoff_delay(100000, '20ms', '5s') < interval '7.5s' AS capped;
\set VERBOSITY sqlstate
SELECT tenancy.backoff_delay(0, '10ms', '2s');
SELECT tenancy.backoff_delay(1, '0', '2s');
SELECT tenancy.backoff_delay(1, '1s', '10ms');
SELECT tenancy.backoff_delay(NULL, '10ms', '2s');
\set VERBOSITY default
DROP TABLE rl_unregistered, rl_registered;
DROP EXTENSION tenancy;
