-- Tenant registry: create, validate, suspend, implicit tenant, lookups, and
-- the per-backend cache and its invalidation from another session.
CREATE EXTENSION tenancy;
CREATE EXTENSION dblink;

SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('globex', 'Globex', '{BBBBBBBB000000000000000000000002}');
SELECT tenancy.create_tenant('random', 'Random') ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-' AS random_v4_key;
SELECT id, slug, name, status, is_implicit FROM tenancy.tenants WHERE slug <> 'random' ORDER BY slug;

-- Bad input changes nothing.
SELECT tenancy.create_tenant('Acme Corp', 'Acme');
SELECT tenancy.create_tenant('-acme', 'Acme');
SELECT tenancy.create_tenant('acme-', 'Acme');
SELECT tenancy.create_tenant(repeat('a', 64), 'Long');
SELECT tenancy.create_tenant('acme', 'Acme again');
SELECT tenancy.create_tenant('other', 'Other', 'aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('other', 'Other', 'not-a-key');
SELECT tenancy.create_tenant(NULL, 'Other');
\set VERBOSITY terse
INSERT INTO tenancy.tenants (id, slug, name, status) VALUES (gen_random_uuid(), 'x', 'X', 'deleted');
INSERT INTO tenancy.tenants (id, slug, name) VALUES (gen_random_uuid(), 'Upper', 'X');
\set VERBOSITY default
SELECT count(*) FROM tenancy.tenants;

-- Lookups by key or slug.
SELECT * FROM tenancy.lookup_tenant('acme');
SELECT * FROM tenancy.lookup_tenant('BBBBBBBB-0000-0000-0000-000000000002');
SELECT tenancy.lookup_tenant('nobody') IS NULL AS unknown;
SELECT tenancy.tenant_key('globex');
SELECT tenancy.tenant_key('nobody');

-- Implicit tenant: at most one.
SELECT tenancy.implicit_tenant() IS NULL AS none_yet;
SELECT tenancy.set_implicit_tenant('acme');
SELECT tenancy.implicit_tenant();
SELECT tenancy.set_implicit_tenant('bbbbbbbb-0000-0000-0000-000000000002');
SELECT slug FROM tenancy.tenants WHERE is_implicit;
SELECT tenancy.set_implicit_tenant('nobody');
SELECT tenancy.implicit_tenant();

-- Suspension: set_tenant refuses a suspended tenant (42501) until reactivated.
SELECT tenancy.reset_context_stats();
SELECT tenancy.suspend_tenant('globex');
\set VERBOSITY sqlstate
BEGIN;
SELECT tenancy.set_tenant('globex');
ROLLBACK;
\set VERBOSITY default
BEGIN;
SELECT tenancy.set_tenant('globex');
ROLLBACK;
SELECT tenancy.suspend_tenant('nobody');
SELECT tenancy.activate_tenant('globex');
BEGIN;
SELECT tenancy.set_tenant('globex');
COMMIT;
\set VERBOSITY sqlstate
BEGIN;
SELECT tenancy.set_tenant('cccccccc-0000-0000-0000-000000000003');
ROLLBACK;
\set VERBOSITY default
SELECT set_tenant_calls, refused_unknown, refused_suspended, refused_session
  FROM tenancy.context_stats();

-- validate_tenant = off: any well-formed key is taken without a lookup,
-- suspended tenants too; slugs still resolve through the registry.
SET tenancy.validate_tenant = off;
SELECT tenancy.suspend_tenant('acme');
BEGIN;
SELECT tenancy.set_tenant('cccccccc-0000-0000-0000-000000000003');
SELECT tenancy.set_tenant('acme');
SELECT tenancy.set_tenant('nobody');
ROLLBACK;
RESET tenancy.validate_tenant;
SELECT tenancy.activate_tenant('acme');

-- The cache: what this backend looked up is refreshed when another session
-- changes the registry.
SELECT format('dbname=%s host=%s port=%s', current_database(),
              current_setting('unix_socket_directories'), current_setting('port')) AS conn \gset
BEGIN;
SELECT tenancy.set_tenant('acme');           -- cached as active
COMMIT;
SELECT dblink_exec(:'conn', $$DO 'BEGIN PERFORM tenancy.suspend_tenant(''acme''); END'$$);
BEGIN;
SELECT tenancy.set_tenant('acme');           -- refused: the cache was invalidated
ROLLBACK;
SELECT dblink_exec(:'conn', $$DO 'BEGIN PERFORM tenancy.activate_tenant(''acme''); END'$$);
BEGIN;
SELECT tenancy.set_tenant('initech');        -- cached as unknown
ROLLBACK;
SELECT dblink_exec(:'conn', $$DO 'BEGIN PERFORM tenancy.create_tenant(''initech'', ''Initech'', ''dddddddd-0000-0000-0000-000000000004''); END'$$);
BEGIN;
SELECT tenancy.set_tenant('initech');        -- now known
COMMIT;
SELECT dblink_exec(:'conn', $$DELETE FROM tenancy.tenants WHERE slug = 'initech'$$);
BEGIN;
SELECT tenancy.set_tenant('initech');        -- gone again
ROLLBACK;

-- The registry is dumped by pg_dump.
SELECT c.relname, x.extcondition
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(cfg, extcondition)
  JOIN pg_class c ON c.oid = x.cfg
 WHERE e.extname = 'tenancy' AND c.relname IN ('tenants', 'tables') ORDER BY 1;

-- The trigger function refuses a direct call.
SELECT tenancy.registry_changed();

DROP EXTENSION dblink;
DROP EXTENSION tenancy CASCADE;
