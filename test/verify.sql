-- pgTAP: schema, privileges and security properties of the readiness,
-- contract and identity objects.
BEGIN;
CREATE EXTENSION tenancy;
SELECT plan(42);

-- Schema.
SELECT has_table('tenancy', 'memberships', 'memberships table');
SELECT has_table('tenancy', 'contract_log', 'contract_log table');
SELECT has_table('tenancy', 'identity_sources', 'identity_sources table');
SELECT columns_are('tenancy', 'memberships', ARRAY['tenant', 'user_key', 'role', 'created_at'], 'memberships columns');
SELECT col_type_is('tenancy', 'memberships', 'tenant', 'uuid', 'membership tenant has the key type');
SELECT col_is_pk('tenancy', 'memberships', ARRAY['tenant', 'user_key'], 'one membership per tenant and user');
SELECT fk_ok('tenancy', 'memberships', 'tenant', 'tenancy', 'tenants', 'id');
SELECT columns_are('tenancy', 'contract_log', ARRAY['id', 'relation', 'step', 'sql', 'undo_sql', 'done_at', 'undone_at'], 'contract_log columns');
SELECT is((SELECT array_to_string(proargnames[3:], ',') FROM pg_proc
            WHERE oid = 'tenancy.verify(regclass, bigint)'::regprocedure),
          'check_name,relation,status,rows_affected,detail,fix',
          'verify() returns check_name, relation, status, rows_affected, detail, fix');
SELECT has_function('tenancy', 'enforce_not_null_sql', ARRAY['regclass']);
SELECT has_function('tenancy', 'scope_constraints_sql', ARRAY['regclass']);
SELECT has_function('tenancy', 'rollback_table', ARRAY['regclass']);
SELECT has_function('tenancy', 'rollback_table_sql', ARRAY['regclass']);
SELECT has_function('tenancy', 'create_personal_tenants', ARRAY['regclass', 'name', 'name', 'regclass[]', 'name[]', 'text']);
SELECT ok(to_regprocedure('tenancy.enforce_not_null(regclass, interval, integer)') IS NOT NULL
          AND (SELECT prokind = 'p' FROM pg_proc WHERE oid = 'tenancy.enforce_not_null(regclass, interval, integer)'::regprocedure),
          'enforce_not_null is a procedure (it commits between steps)');

-- Functions: fixed search_path; SECURITY DEFINER only for set_tenant_as.
SELECT is_empty($$
    SELECT p.oid::regprocedure FROM pg_proc p
    WHERE p.pronamespace = 'tenancy'::regnamespace AND p.prokind = 'f' AND p.prolang <> 13
      AND p.proname IN ('tenant_accessor', 'column_list', 'unscoped_unique_indexes', 'log_step', 'verify',
                        'enforce_not_null_plan', 'enforce_not_null_sql', 'scope_constraints_plan',
                        'scope_constraints_sql', 'rollback_table_sql', 'rollback_table', 'add_member',
                        'remove_member', 'create_personal_tenants', 'set_tenant_as')
      AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)$$,
    'every readiness function sets search_path = pg_catalog, pg_temp');
SELECT ok((SELECT proconfig @> ARRAY['row_security=off'] FROM pg_proc WHERE oid = 'tenancy.verify(regclass, bigint)'::regprocedure),
          'verify() runs with row_security off (errors instead of counting through RLS)');
SELECT is_definer('tenancy', 'set_tenant_as', ARRAY['text', 'text', 'boolean'], 'set_tenant_as is SECURITY DEFINER');
SELECT results_eq($$
    SELECT count(*)::int FROM pg_proc p
    WHERE p.pronamespace = 'tenancy'::regnamespace AND p.prosecdef
      AND p.proname IN ('tenant_accessor', 'column_list', 'unscoped_unique_indexes', 'log_step', 'verify',
                        'enforce_not_null_plan', 'enforce_not_null_sql', 'scope_constraints_plan',
                        'scope_constraints_sql', 'rollback_table_sql', 'rollback_table', 'add_member',
                        'remove_member', 'create_personal_tenants', 'enforce_not_null')$$,
    $$VALUES (0)$$, 'no other readiness routine is SECURITY DEFINER');

-- Privileges: an ordinary role may only use set_tenant_as.
CREATE ROLE ready_tap_app;
SELECT ok(NOT has_table_privilege('ready_tap_app', 'tenancy.memberships', 'SELECT'), 'memberships not readable by PUBLIC');
SELECT ok(NOT has_table_privilege('ready_tap_app', 'tenancy.contract_log', 'SELECT'), 'contract_log not readable by PUBLIC');
SELECT ok(NOT has_table_privilege('ready_tap_app', 'tenancy.identity_sources', 'SELECT'), 'identity_sources not readable by PUBLIC');
SELECT is_empty($$
    SELECT p.oid::regprocedure FROM pg_proc p
    WHERE p.pronamespace = 'tenancy'::regnamespace
      AND p.proname IN ('tenant_accessor', 'column_list', 'unscoped_unique_indexes', 'log_step', 'verify',
                        'enforce_not_null_plan', 'enforce_not_null_sql', 'scope_constraints_plan',
                        'scope_constraints_sql', 'rollback_table_sql', 'rollback_table', 'add_member',
                        'remove_member', 'create_personal_tenants', 'enforce_not_null')
      AND has_function_privilege('ready_tap_app', p.oid, 'EXECUTE')$$,
    'PUBLIC cannot execute the administrative routines');
SELECT ok(has_function_privilege('ready_tap_app', 'tenancy.set_tenant_as(text, text, boolean)', 'EXECUTE'),
          'PUBLIC can execute set_tenant_as');

-- Membership-checked switch, as the application role.
DO $$ BEGIN
    PERFORM tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111');
    PERFORM tenancy.create_tenant('globex', 'Globex', '22222222-2222-2222-2222-222222222222');
    PERFORM tenancy.add_member('acme', 'u1', 'member');
END $$;
SET LOCAL ROLE ready_tap_app;
SELECT throws_ok($$SELECT tenancy.set_tenant_as('u1', 'globex')$$, '42501',
                 'user "u1" is not a member of tenant "globex"', 'a non-member is refused');
SELECT throws_ok($$SELECT tenancy.set_tenant_as('u2', 'acme')$$, '42501', NULL, 'an unknown user is refused');
SELECT is(tenancy.set_tenant_as('u1', 'acme'), '11111111-1111-1111-1111-111111111111', 'a member may switch');
SELECT is(tenancy.current_tenant(), '11111111-1111-1111-1111-111111111111'::uuid, 'the switch is visible to the caller');
SELECT throws_ok($$SELECT * FROM tenancy.memberships$$, '42501', NULL, 'the application role cannot read memberships');
SELECT throws_ok($$SELECT tenancy.add_member('globex', 'u1', 'owner')$$, '42501', NULL, 'nor grant itself a membership');
RESET ROLE;
DO $$ BEGIN PERFORM tenancy.clear_tenant(); END $$;

-- Memberships constraints.
SELECT throws_ok($$INSERT INTO tenancy.memberships (tenant, user_key, role) VALUES ('11111111-1111-1111-1111-111111111111', 'u3', 'god')$$,
                 '23514', NULL, 'membership roles are owner, admin, member, viewer');
SELECT throws_ok($$INSERT INTO tenancy.memberships (tenant, user_key) VALUES ('33333333-3333-3333-3333-333333333333', 'u3')$$,
                 '23503', NULL, 'a membership needs a registered tenant');

-- A messy database: every non-ok row names a fix; statuses are the three.
CREATE TABLE ready_tap_parent (id int PRIMARY KEY, tenant_id uuid, code text UNIQUE);
CREATE TABLE ready_tap_child (id int PRIMARY KEY, tenant_id uuid, parent_id int REFERENCES ready_tap_parent (id));
CREATE TABLE ready_tap_orphan (id int, parent_id int REFERENCES ready_tap_parent (id));
CREATE VIEW ready_tap_view AS SELECT * FROM ready_tap_parent;
INSERT INTO ready_tap_parent VALUES (1, '11111111-1111-1111-1111-111111111111', 'a'), (2, NULL, 'b'),
                                    (3, '44444444-4444-4444-4444-444444444444', 'c');
INSERT INTO ready_tap_child VALUES (1, '22222222-2222-2222-2222-222222222222', 1);
INSERT INTO tenancy.tables (relation) VALUES ('ready_tap_parent'), ('ready_tap_child');
DO $$ BEGIN PERFORM tenancy.set_implicit_tenant('acme'); END $$;
SELECT ok((SELECT count(*) FROM tenancy.verify() WHERE status <> 'ok') >= 15, 'the messy database fails many checks');
SELECT is_empty($$SELECT check_name, relation FROM tenancy.verify() WHERE status <> 'ok' AND fix IS NULL$$,
                'every warning and failure suggests a fix');
SELECT is_empty($$SELECT status FROM tenancy.verify() WHERE status NOT IN ('ok', 'warning', 'failure') OR detail IS NULL$$,
                'status is ok, warning or failure, with a detail');
SELECT set_eq($$SELECT DISTINCT check_name FROM tenancy.verify()$$,
              ARRAY['tenant_column', 'null_tenant', 'unknown_tenant', 'cross_tenant_reference', 'unique_scope',
                    'foreign_key_scope', 'rls_enabled', 'rls_forced', 'tenancy_policy', 'policy_mode',
                    'shadow_divergence', 'tenant_index', 'view_security_invoker', 'materialized_view',
                    'security_definer_function', 'bypassrls_role', 'unregistered_reference', 'shared_table',
                    'user_without_tenant', 'tenant_without_owner'],
              'the report covers every check');

-- Generated SQL quotes identifiers: a table and column that need quoting.
CREATE SCHEMA "ready Tap";
CREATE TABLE "ready Tap"."Odd ""Name""" ("Key" int PRIMARY KEY, "Tenant Id" uuid, "Code" text UNIQUE,
                                         "Parent" int REFERENCES ready_tap_parent (id));
INSERT INTO "ready Tap"."Odd ""Name""" VALUES (1, '11111111-1111-1111-1111-111111111111', 'x', 1);
INSERT INTO tenancy.tables (relation, column_name) VALUES ('"ready Tap"."Odd ""Name"""', 'Tenant Id');
SELECT lives_ok($$SELECT * FROM tenancy.verify('"ready Tap"."Odd ""Name"""')$$, 'verify() runs on odd names');
SELECT lives_ok($t$DO $d$ DECLARE s text; BEGIN
    FOR s IN SELECT DISTINCT fix FROM tenancy.verify('"ready Tap"."Odd ""Name"""')
             WHERE check_name IN ('rls_enabled', 'rls_forced', 'tenancy_policy') AND fix IS NOT NULL
    LOOP EXECUTE s; END LOOP; END $d$ $t$, 'the RLS fixes run on odd names');
SELECT lives_ok($t$DO $d$ DECLARE s text; BEGIN
    FOR s IN SELECT * FROM tenancy.enforce_not_null_sql('"ready Tap"."Odd ""Name"""') LOOP EXECUTE s; END LOOP; END $d$ $t$,
    'the NOT NULL statements run on odd names');
SELECT col_not_null('ready Tap', 'Odd "Name"', 'Tenant Id', 'and set NOT NULL');
UPDATE ready_tap_parent SET tenant_id = '11111111-1111-1111-1111-111111111111' WHERE tenant_id IS DISTINCT FROM '11111111-1111-1111-1111-111111111111';
SELECT lives_ok($t$DO $d$ DECLARE s text; BEGIN
    FOR s IN SELECT replace(sql, 'CONCURRENTLY ', '') FROM tenancy.scope_constraints_plan('"ready Tap"."Odd ""Name"""') ORDER BY step
    LOOP EXECUTE s; END LOOP; END $d$ $t$, 'the scoping statements run on odd names');
SELECT is_empty($$SELECT * FROM tenancy.verify('"ready Tap"."Odd ""Name"""')
                  WHERE check_name IN ('unique_scope', 'foreign_key_scope', 'rls_enabled', 'rls_forced', 'tenancy_policy', 'null_tenant')
                    AND status <> 'ok'$$,
                'and the report is ok for what they fixed');

SELECT * FROM finish();
ROLLBACK;
