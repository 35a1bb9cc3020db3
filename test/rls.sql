-- pgTAP: schema, privileges and security properties of the tenant policy.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION tenancy;
SELECT plan(43);

-- Schema
SELECT has_function('tenancy', 'enable_rls', ARRAY['regclass', 'name', 'regrole[]', 'text'], 'enable_rls() exists');
SELECT has_function('tenancy', 'policy_sql', ARRAY['regclass', 'name', 'regrole[]', 'text'], 'policy_sql() exists');
SELECT has_function('tenancy', 'disable_rls', ARRAY['regclass'], 'disable_rls() exists');
SELECT has_function('tenancy', 'set_mode', ARRAY['regclass', 'text'], 'set_mode() exists');
SELECT has_function('tenancy', 'rls_advisories', ARRAY['regclass', 'name'], 'rls_advisories() exists');
SELECT has_function('tenancy', 'reset_shadow_stats', ARRAY['regclass'], 'reset_shadow_stats() exists');
SELECT has_view('tenancy', 'shadow_stats', 'shadow_stats view exists');
SELECT columns_are('tenancy', 'shadow_stats',
    ARRAY['relation', 'rows_checked', 'rows_hidden', 'writes_refused', 'last_divergence'], 'shadow_stats columns');
SELECT col_type_is('tenancy', 'shadow_stats', 'relation', 'regclass', 'shadow_stats.relation is regclass');
SELECT col_type_is('tenancy', 'shadow_stats', 'last_divergence', 'timestamp with time zone', 'last_divergence is timestamptz');
SELECT has_table('tenancy', 'rls_tables', 'rls_tables exists');
SELECT volatility_is('tenancy', 'shadow_read', ARRAY['regclass', 'uuid'], 'volatile', 'shadow_read() is volatile: never folded at plan time');

-- Privileges
CREATE ROLE rls_tap_owner;
CREATE ROLE rls_tap_app;
CREATE ROLE rls_tap_other;
SELECT ok(NOT has_function_privilege('rls_tap_app', 'tenancy.rls_record_internal(text, regclass, regclass, name, text)', 'EXECUTE'),
          'the bookkeeping internals are not executable by PUBLIC');
SELECT ok(NOT has_function_privilege('rls_tap_app', 'tenancy.reset_shadow_stats(regclass)', 'EXECUTE'),
          'reset_shadow_stats() is not executable by PUBLIC');
SELECT ok(NOT has_table_privilege('rls_tap_app', 'tenancy.shadow_stats', 'SELECT'), 'shadow_stats is not readable by PUBLIC');
SELECT ok(has_table_privilege('pg_read_all_stats', 'tenancy.shadow_stats', 'SELECT'), 'pg_read_all_stats reads shadow_stats');
SELECT ok(NOT has_table_privilege('rls_tap_app', 'tenancy.rls_tables', 'INSERT'), 'rls_tables is not writable by PUBLIC');
SELECT ok(NOT has_table_privilege('rls_tap_app', 'tenancy.tables', 'UPDATE'), 'tenancy.tables is not writable by PUBLIC');
SELECT is((SELECT count(*)::int FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
            JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tenancy'
           WHERE p.prosecdef AND p.oid <> 'tenancy.set_tenant_as(text,text,boolean)'::regprocedure), 0,
          'no SECURITY DEFINER function in the extension but set_tenant_as()');
SELECT is((SELECT count(*)::int FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
            JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tenancy'
           WHERE p.proname LIKE 'rls%' AND p.prolang <> 13
             AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)), 0,
          'every SQL/plpgsql RLS function pins search_path');

-- Fixtures: a table owned by a non-superuser, the policy in enforce mode.
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1');
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2');
GRANT CREATE ON SCHEMA public TO rls_tap_owner;
SET LOCAL ROLE rls_tap_owner;
CREATE TABLE tap_docs (id int PRIMARY KEY, tenant_id uuid DEFAULT tenancy.current_tenant(), body text);
INSERT INTO tap_docs VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'a'),
                            (2, '00000000-0000-0000-0000-0000000000b2', 'b');
GRANT SELECT, INSERT, UPDATE, DELETE ON tap_docs TO rls_tap_app;
SELECT lives_ok($$SELECT tenancy.enable_rls('tap_docs')$$, 'a non-superuser owner enables row level security');
RESET ROLE;
SELECT policies_are('public', 'tap_docs', ARRAY['tenancy_policy'], 'one policy, tenancy_policy');
SELECT policy_cmd_is('public', 'tap_docs', 'tenancy_policy', 'ALL', 'the policy covers every command');
SELECT ok((SELECT polroles = '{0}' FROM pg_policy WHERE polrelid = 'tap_docs'::regclass), 'the policy applies to PUBLIC');
SELECT ok((SELECT relforcerowsecurity FROM pg_class WHERE oid = 'tap_docs'::regclass), 'row security is forced on the owner');
SELECT ok((SELECT pg_get_expr(polqual, polrelid) !~* '(select| or )' FROM pg_policy WHERE polrelid = 'tap_docs'::regclass),
          'enforce mode: no subquery and no OR');
SELECT is((SELECT stage FROM tenancy.tables WHERE relation = 'tap_docs'::regclass), 'enforce', 'stage recorded');

SET LOCAL ROLE rls_tap_other;
SELECT throws_ok($$SELECT tenancy.disable_rls('tap_docs')$$, '42501', NULL, 'a non-owner cannot disable it');
SELECT throws_ok($$SELECT tenancy.set_mode('tap_docs', 'shadow')$$, '42501', NULL, 'a non-owner cannot change the mode');
SELECT throws_ok($$SELECT tenancy.rls_record('unregister', 'tap_docs')$$, '42501', NULL, 'a non-owner cannot touch the bookkeeping');
RESET ROLE;

-- Both the application role and the owner, for tenant acme.
SET LOCAL ROLE rls_tap_app;
SELECT is((SELECT count(*)::int FROM tap_docs), 0, 'app, no tenant: nothing visible');
SELECT tenancy.set_tenant('acme');
SELECT results_eq('SELECT id FROM tap_docs', ARRAY[1], 'app, acme: only its row');
WITH u AS (UPDATE tap_docs SET body = 'x' WHERE id = 2 RETURNING 1)
SELECT is(count(*)::int, 0, 'app, acme: bolt''s row cannot be updated') FROM u;
WITH d AS (DELETE FROM tap_docs WHERE id = 2 RETURNING 1)
SELECT is(count(*)::int, 0, 'app, acme: bolt''s row cannot be deleted') FROM d;
SELECT throws_ok($$INSERT INTO tap_docs VALUES (3, '00000000-0000-0000-0000-0000000000b2', 'x')$$, '42501', NULL,
                 'app, acme: inserting a bolt row is refused');
SELECT throws_ok($$UPDATE tap_docs SET tenant_id = '00000000-0000-0000-0000-0000000000b2' WHERE id = 1$$, '42501', NULL,
                 'app, acme: moving a row to bolt is refused');
RESET ROLE;
SET LOCAL ROLE rls_tap_owner;
SELECT results_eq('SELECT id FROM tap_docs', ARRAY[1], 'owner (FORCE), acme: only its row');
SELECT throws_ok($$INSERT INTO tap_docs VALUES (3, '00000000-0000-0000-0000-0000000000b2', 'x')$$, '42501', NULL,
                 'owner, acme: inserting a bolt row is refused');
SELECT tenancy.set_tenant('bolt');
SELECT results_eq('SELECT id FROM tap_docs', ARRAY[2], 'owner, bolt: only its row');
SELECT set_config('tenancy.tenant_id', '', true);
SELECT is((SELECT count(*)::int FROM tap_docs), 0, 'owner, no tenant: nothing visible');
SELECT throws_ok($$INSERT INTO tap_docs (id, body) VALUES (4, 'x')$$, '42501', NULL, 'owner, no tenant: nothing writable');
RESET ROLE;

-- A prepared statement under a generic plan does not carry the tenant.
SET LOCAL plan_cache_mode = force_generic_plan;
SET LOCAL ROLE rls_tap_app;
PREPARE tap_q AS SELECT id FROM tap_docs;
SELECT tenancy.set_tenant('acme');
SELECT results_eq('EXECUTE tap_q', ARRAY[1], 'generic plan, acme');
SELECT tenancy.set_tenant('bolt');
SELECT results_eq('EXECUTE tap_q', ARRAY[2], 'generic plan re-executed after the switch, bolt');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
