-- The Citus glue of issue 17 (src/citus_context.c, src/citus_context.sql)
-- on one node without Citus: nothing is forwarded and nothing else changes
-- (test/citus_context.sh covers the cluster).
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
CREATE ROLE cz_app;
CREATE ROLE cz_bound;
\set VERBOSITY default
\set ON_ERROR_STOP 0

-- No Citus here: set_tenant() sets the tenant and nothing else.
SELECT current_setting('citus.propagate_set_commands', true) IS NULL AS no_citus;
BEGIN;
SELECT tenancy.set_tenant('acme');
SELECT current_setting('tenancy.tenant_id') AS tenant,
       current_setting('tenancy.tenant_token') AS token,
       current_setting('citus.propagate_set_commands', true) AS propagate;
SELECT tenancy.clear_tenant();
SELECT current_setting('tenancy.tenant_id') AS tenant, current_setting('tenancy.tenant_token') AS token;
COMMIT;

-- tenancy.tenant_token is hidden, and verified when set: a malformed token
-- is refused (22P02), and so is any token without a keys file (55000); it
-- is empty by default and may always be cleared.
SELECT count(*) FROM pg_settings WHERE name = 'tenancy.tenant_token';
BEGIN;
SET LOCAL tenancy.tenant_token = 'abc';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SET LOCAL tenancy.tenant_token = 'eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJ0ZW5hbnRfaWQiOiJhYWFhYWFhYS0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDEifQ.c2lnbmF0dXJl';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SET tenancy.tenant_token = '';
RESET tenancy.tenant_token;
SHOW tenancy.tenant_token;

-- A token that was never verified admits no tenant: token mode refuses a
-- role's bare key whatever tenancy.tenant_token held before.
SET tenancy.context_source = token;
SET ROLE cz_app;
BEGIN;
SET LOCAL tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
RESET tenancy.context_source;

-- Role bindings: the copy-to-workers trigger does nothing without Citus.
SELECT tgname, tgdeferrable, tginitdeferred FROM pg_trigger
 WHERE tgrelid = 'tenancy.role_bindings'::regclass AND tgname = 'role_bindings_citus';
SELECT tenancy.bind_role('cz_bound', 'acme') IS NOT NULL AS bound;
SELECT role, tenant FROM tenancy.role_bindings;
SELECT tenancy.unbind_role('cz_bound') IS NOT NULL AS unbound;
SELECT count(*) FROM tenancy.role_bindings;
-- Neither the trigger function nor the node check is for PUBLIC.
SELECT has_function_privilege('public', 'tenancy.citus_forward_binding()', 'EXECUTE') AS public_may_execute;
SELECT has_function_privilege('public', 'tenancy.citus_context_problems()', 'EXECUTE') AS public_may_execute;
-- Without Citus there is no node to check.
SELECT count(*) FROM tenancy.citus_context_problems();

DROP ROLE cz_app;
DROP ROLE cz_bound;
DROP EXTENSION tenancy;
