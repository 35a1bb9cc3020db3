-- Tenant context: set, read, scope and clearing of the current tenant (uuid keys).
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('globex', 'Globex', 'bbbbbbbb-0000-0000-0000-000000000002');

-- Nothing set: NULL, never an error.
SELECT tenancy.current_tenant() IS NULL AS unset, tenancy.current_tenant_text() IS NULL AS unset_text;

-- set_tenant by key and by slug, transaction-local by default.
BEGIN;
SELECT tenancy.set_tenant('aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.current_tenant(), tenancy.current_tenant_text();
SELECT tenancy.set_tenant('globex');
SELECT tenancy.current_tenant();
SHOW tenancy.tenant_id;
COMMIT;
SELECT tenancy.current_tenant() IS NULL AS gone_after_commit;

BEGIN;
SELECT tenancy.set_tenant('acme');
ROLLBACK;
SELECT tenancy.current_tenant() IS NULL AS gone_after_rollback;

-- Any spelling uuid_in accepts is stored in canonical form.
BEGIN;
SELECT tenancy.set_tenant('{AAAAAAAA000000000000000000000001}');
SELECT tenancy.set_tenant('AAAAAAAA-0000-0000-0000-000000000001');
SHOW tenancy.tenant_id;
COMMIT;

-- Savepoints: a rolled-back savepoint restores the earlier tenant.
BEGIN;
SELECT tenancy.set_tenant('acme');
SAVEPOINT s1;
SELECT tenancy.set_tenant('globex');
SELECT tenancy.current_tenant_text();
ROLLBACK TO SAVEPOINT s1;
SELECT tenancy.current_tenant_text();
SAVEPOINT s2;
SELECT tenancy.set_tenant('globex');
RELEASE SAVEPOINT s2;
SELECT tenancy.current_tenant_text();
COMMIT;

-- Outside a transaction block the tenant lasts one statement: a warning says so.
SELECT tenancy.set_tenant('acme');
SELECT tenancy.current_tenant() IS NULL AS statement_only;
-- In a DO block the tenant lasts until the block ends: no warning there.
DO $$
BEGIN
    PERFORM tenancy.set_tenant('globex');
    RAISE NOTICE 'inside the block: %', tenancy.current_tenant_text();
END
$$;
SELECT tenancy.current_tenant() IS NULL AS gone_after_the_block;

-- Session scope survives COMMIT; RESET, DISCARD ALL, clear_tenant() and '' unset it.
SELECT tenancy.set_tenant('acme', is_local => false);
BEGIN; SELECT tenancy.current_tenant_text(); COMMIT;
SELECT tenancy.current_tenant_text();
RESET tenancy.tenant_id;
SELECT tenancy.current_tenant() IS NULL AS unset_after_reset;
SELECT tenancy.set_tenant('acme', false);
RESET ALL;
SELECT tenancy.current_tenant() IS NULL AS unset_after_reset_all;
SELECT tenancy.set_tenant('acme', false);
DISCARD ALL;
SELECT tenancy.current_tenant() IS NULL AS unset_after_discard_all;
SELECT tenancy.set_tenant('acme', false);
SELECT tenancy.clear_tenant();
SELECT tenancy.current_tenant() IS NULL AS unset_after_clear;
SET tenancy.tenant_id = '';
SELECT tenancy.current_tenant() IS NULL AS unset_when_empty;

-- A session tenant with a local override: the session value comes back.
SELECT tenancy.set_tenant('acme', false);
BEGIN;
SELECT tenancy.set_tenant('globex');
SELECT tenancy.current_tenant_text();
COMMIT;
SELECT tenancy.current_tenant_text();
SELECT tenancy.clear_tenant();

-- The GUC validates when set: a malformed key fails (22P02) and changes nothing.
\set VERBOSITY sqlstate
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
SET tenancy.tenant_id = 'not-a-uuid';
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-00000000000';
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000011';
SET tenancy.tenant_id = '-aaaaaaaa-0000-0000-0000-000000000001';
SELECT set_config('tenancy.tenant_id', 'zzz', false);
\set VERBOSITY default
SET tenancy.tenant_id = 'not-a-uuid';
SHOW tenancy.tenant_id;
SELECT tenancy.current_tenant_text();
RESET tenancy.tenant_id;

-- set_tenant error paths; each leaves the tenant as it was.
BEGIN;
SELECT tenancy.set_tenant('acme');
SAVEPOINT s;
SELECT tenancy.set_tenant(NULL);
ROLLBACK TO s;
SELECT tenancy.set_tenant('');
ROLLBACK TO s;
SELECT tenancy.set_tenant('Not A Slug!');
ROLLBACK TO s;
SELECT tenancy.set_tenant('{AAAAAAAA00000000000000000000000 1}');
ROLLBACK TO s;
SELECT tenancy.set_tenant('cccccccc-0000-0000-0000-000000000003');
ROLLBACK TO s;
SELECT tenancy.set_tenant('initech');
ROLLBACK TO s;
SELECT tenancy.current_tenant_text();
COMMIT;

-- require_tenant: reading with no tenant raises instead of returning NULL.
SET tenancy.require_tenant = on;
SELECT tenancy.current_tenant();
SELECT tenancy.current_tenant_text();
BEGIN;
SELECT tenancy.set_tenant('acme');
SELECT tenancy.current_tenant();
COMMIT;
RESET tenancy.require_tenant;
SELECT tenancy.current_tenant() IS NULL AS unset;

-- Accessor of another key type: a clear error, not a cast error.
SELECT tenancy.current_tenant_bigint();

-- STABLE per query, and the value follows a tenant switch between statements
-- of a prepared statement.
CREATE TABLE context_rows (tenant_id uuid, v int);
INSERT INTO context_rows VALUES ('aaaaaaaa-0000-0000-0000-000000000001', 1),
                                ('bbbbbbbb-0000-0000-0000-000000000002', 2);
PREPARE q AS SELECT v FROM context_rows WHERE tenant_id = tenancy.current_tenant();
SET plan_cache_mode = force_generic_plan;
BEGIN; SELECT tenancy.set_tenant('acme'); EXECUTE q; COMMIT;
BEGIN; SELECT tenancy.set_tenant('globex'); EXECUTE q; COMMIT;
EXECUTE q;
RESET plan_cache_mode;
DEALLOCATE q;
DROP TABLE context_rows;

-- normalize_key and key_type.
SELECT tenancy.key_type(), tenancy.normalize_key('{AAAAAAAA000000000000000000000001}');
SELECT tenancy.normalize_key('nope');

DROP EXTENSION tenancy CASCADE;
