-- pgTAP: the foundation's objects, their types, volatility and parallel
-- markings, and the privileges of an unprivileged application role.
BEGIN;
CREATE EXTENSION tenancy;
SELECT plan(46);

SELECT has_schema('tenancy');
SELECT has_table('tenancy', 'tenants', 'registry table exists');
SELECT col_is_pk('tenancy', 'tenants', 'id', 'tenants.id is the key');
SELECT col_type_is('tenancy', 'tenants', 'id', 'uuid', 'tenant keys are uuid by default');
SELECT col_not_null('tenancy', 'tenants', 'slug', 'slug is required');
SELECT col_is_unique('tenancy', 'tenants', 'slug', 'slug is unique');
SELECT col_has_check('tenancy', 'tenants', 'status', 'status is checked');
SELECT has_table('tenancy', 'tables', 'table registry exists');
SELECT col_type_is('tenancy', 'tables', 'relation', 'regclass', 'tables.relation is a regclass');
SELECT has_trigger('tenancy', 'tenants', 'tenants_changed', 'registry changes invalidate caches');

-- Signatures, return types, volatility, parallel safety.
SELECT function_returns('tenancy', 'current_tenant', ARRAY[]::text[], 'uuid');
SELECT function_returns('tenancy', 'current_tenant_bigint', ARRAY[]::text[], 'bigint');
SELECT function_returns('tenancy', 'current_tenant_text', ARRAY[]::text[], 'text');
SELECT volatility_is('tenancy', 'current_tenant', ARRAY[]::text[], 'stable');
SELECT volatility_is('tenancy', 'current_tenant_bigint', ARRAY[]::text[], 'stable');
SELECT volatility_is('tenancy', 'current_tenant_text', ARRAY[]::text[], 'stable');
SELECT is((SELECT proparallel FROM pg_proc WHERE oid = 'tenancy.current_tenant()'::regprocedure), 's',
          'current_tenant() is parallel safe');
SELECT is((SELECT proparallel FROM pg_proc WHERE oid = 'tenancy.current_tenant_bigint()'::regprocedure), 's',
          'current_tenant_bigint() is parallel safe');
SELECT is((SELECT proparallel FROM pg_proc WHERE oid = 'tenancy.current_tenant_text()'::regprocedure), 's',
          'current_tenant_text() is parallel safe');
SELECT function_lang_is('tenancy', 'current_tenant', ARRAY[]::text[], 'c');
SELECT function_returns('tenancy', 'set_tenant', ARRAY['text', 'boolean'], 'text');
SELECT volatility_is('tenancy', 'set_tenant', ARRAY['text', 'boolean'], 'volatile');
SELECT is((SELECT proparallel FROM pg_proc WHERE oid = 'tenancy.set_tenant(text,boolean)'::regprocedure), 'u',
          'set_tenant() is parallel unsafe (it sets a GUC)');
SELECT is((SELECT pronargdefaults FROM pg_proc WHERE oid = 'tenancy.set_tenant(text,boolean)'::regprocedure), 1::int2,
          'set_tenant() is transaction-local by default');
SELECT function_returns('tenancy', 'clear_tenant', ARRAY[]::text[], 'void');
SELECT function_returns('tenancy', 'create_tenant', ARRAY['text', 'text', 'text'], 'text');
SELECT function_returns('tenancy', 'implicit_tenant', ARRAY[]::text[], 'text');
SELECT function_returns('tenancy', 'key_type', ARRAY[]::text[], 'regtype');
SELECT isnt_definer('tenancy', 'set_tenant', ARRAY['text', 'boolean'], 'set_tenant() is not SECURITY DEFINER');
SELECT is((SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'tenancy' AND p.prosecdef
              AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)), 0::bigint,
          'every SECURITY DEFINER function pins search_path = pg_catalog, pg_temp');

-- GUCs.
SELECT is(current_setting('tenancy.tenant_type'), 'uuid', 'key type defaults to uuid');
SELECT is((SELECT context FROM pg_settings WHERE name = 'tenancy.tenant_type'), 'superuser',
          'only a superuser sets the key type');
SELECT is((SELECT context FROM pg_settings WHERE name = 'tenancy.tenant_id'), 'user',
          'any role sets its tenant');
SELECT is((SELECT context FROM pg_settings WHERE name = 'tenancy.allow_session_tenant'), 'superuser',
          'only a superuser lifts the pooler guard');
SELECT is((SELECT context FROM pg_settings WHERE name = 'tenancy.validate_tenant'), 'superuser',
          'only a superuser turns registry validation off');

-- An unprivileged application role.
CREATE ROLE schema_tap_app;
SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('globex', 'Globex', 'bbbbbbbb-0000-0000-0000-000000000002');
SELECT ok(has_function_privilege('schema_tap_app', 'tenancy.set_tenant(text,boolean)', 'EXECUTE'),
          'app role may call set_tenant()');
SELECT ok(has_function_privilege('schema_tap_app', 'tenancy.current_tenant()', 'EXECUTE'),
          'app role may call current_tenant()');
SELECT ok(NOT has_function_privilege('schema_tap_app', 'tenancy.create_tenant(text,text,text)', 'EXECUTE'),
          'app role may not call create_tenant()');
SELECT ok(NOT has_function_privilege('schema_tap_app', 'tenancy.lookup_tenant(text)', 'EXECUTE'),
          'app role may not list tenants through lookup_tenant()');
SELECT ok(NOT has_table_privilege('schema_tap_app', 'tenancy.tenants', 'SELECT'),
          'app role may not read the registry');

SET ROLE schema_tap_app;
SELECT is(tenancy.set_tenant('acme'), 'aaaaaaaa-0000-0000-0000-000000000001',
          'app role sets its tenant by slug without privileges on the registry');
SELECT is(tenancy.current_tenant(), 'aaaaaaaa-0000-0000-0000-000000000001'::uuid, 'and reads it back');
SELECT throws_ok($$SELECT tenancy.create_tenant('evil', 'Evil')$$, '42501', NULL,
                 'app role cannot register a tenant');
SELECT throws_ok($$UPDATE tenancy.tenants SET status = 'suspended'$$, '42501', NULL,
                 'app role cannot suspend tenants');
SELECT throws_ok($$INSERT INTO tenancy.tables (relation) VALUES ('pg_class')$$, '42501', NULL,
                 'app role cannot register tables');
SELECT throws_ok($$SET tenancy.validate_tenant = off$$, '42501', NULL,
                 'app role cannot turn validation off');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
