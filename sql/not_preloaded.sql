-- Without shared_preload_libraries: the tenant context works, the features
-- that need shared memory say so (55000) with a hint.
SHOW shared_preload_libraries;
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
BEGIN;
SELECT tenancy.set_tenant('acme');
SELECT tenancy.current_tenant();
COMMIT;
\set VERBOSITY sqlstate
SELECT * FROM tenancy.context_stats();
\set VERBOSITY default
SELECT * FROM tenancy.context_stats();
SELECT tenancy.reset_context_stats();

-- Before the library is loaded in a session, tenancy.* settings are mere
-- placeholders; loading it validates them, and a malformed one is dropped
-- with a warning, so the session has no tenant (fail closed).
\c
SET tenancy.tenant_id = 'garbage';
SELECT tenancy.current_tenant() IS NULL AS dropped;
SET tenancy.tenant_id = 'garbage';
DROP EXTENSION tenancy CASCADE;
