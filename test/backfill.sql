-- pgTAP: objects of the backfill feature, their privileges and security
-- properties, and the behaviour that can be checked inside a transaction.
BEGIN;
CREATE EXTENSION tenancy;
SELECT plan(43);

-- Objects.
SELECT has_table('tenancy', 'backfill_jobs', 'backfill_jobs exists');
SELECT has_view('tenancy', 'backfill_progress', 'backfill_progress exists');
SELECT columns_are('tenancy', 'backfill_progress',
    ARRAY['id', 'relation', 'column_name', 'state', 'interrupted', 'running_pid', 'phase', 'cursor',
          'rows_done', 'rows_scanned', 'rows_total', 'percent', 'rows_per_s', 'batch_size', 'last_batch_ms',
          'max_batch_ms', 'retries', 'throttle', 'eta', 'last_error', 'updated_at'],
    'backfill_progress shows state, cursor, rows, rate, batch size, throttle and ETA');
SELECT col_type_is('tenancy', 'backfill_jobs', 'relation', 'regclass', 'jobs name their table');
SELECT col_has_check('tenancy', 'backfill_jobs', 'state', 'job states are checked');
SELECT col_default_is('tenancy', 'backfill_jobs', 'state', 'queued', 'new jobs are queued');
SELECT is((SELECT indexdef LIKE '%UNIQUE%(relation, column_name)%WHERE (state <> %done%'
             FROM pg_indexes WHERE schemaname = 'tenancy' AND indexname = 'backfill_jobs_one_open'), true,
          'at most one open job per table and column');
SELECT ok((SELECT 'tenancy.backfill_jobs'::regclass::oid = ANY (extconfig) FROM pg_extension WHERE extname = 'tenancy'),
          'backfill_jobs is dumped by pg_dump');
SELECT has_function('tenancy', 'add_tenant_column', ARRAY['regclass', 'name', 'boolean', 'interval', 'integer']);
SELECT has_function('tenancy', 'add_tenant_column_sql', ARRAY['regclass', 'name', 'boolean']);
SELECT has_function('tenancy', 'queue_backfill', 'queue_backfill() exists');
SELECT is((SELECT prokind FROM pg_proc WHERE proname = 'backfill' AND pronamespace = 'tenancy'::regnamespace),
          'p'::"char", 'tenancy.backfill is a procedure');
SELECT is((SELECT pronargdefaults FROM pg_proc WHERE proname = 'backfill' AND pronamespace = 'tenancy'::regnamespace),
          17::int2, 'every backfill option is optional');

-- Security properties: the procedure commits, so it has no SET clause and
-- is not SECURITY DEFINER (it runs as its caller); the functions that run
-- dynamic SQL pin their search_path; none is SECURITY DEFINER.
SELECT is((SELECT proconfig FROM pg_proc WHERE proname = 'backfill' AND pronamespace = 'tenancy'::regnamespace),
          NULL, 'backfill() has no SET clause (it could not commit)');
SELECT is((SELECT count(*)::int FROM pg_proc WHERE pronamespace = 'tenancy'::regnamespace AND prosecdef
             AND proname IN ('backfill', 'add_tenant_column', 'add_tenant_column_sql', 'queue_backfill', 'backfill_job',
                             'check_tenant_table', 'add_tenant_column_ddl', 'tenant_default_sql')), 0,
          'no backfill function is SECURITY DEFINER');
SELECT is((SELECT array_agg(proname::text ORDER BY proname) FROM pg_proc
            WHERE pronamespace = 'tenancy'::regnamespace AND prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')
              AND proname IN ('add_tenant_column', 'add_tenant_column_sql', 'add_tenant_column_ddl', 'backfill_job',
                              'check_tenant_table', 'tenant_default_sql', 'backfill_options', 'backfill_null_source')
              AND 'search_path=pg_catalog, pg_temp' = ANY (proconfig)),
          ARRAY['add_tenant_column', 'add_tenant_column_ddl', 'add_tenant_column_sql', 'backfill_job', 'backfill_null_source',
                'backfill_options', 'check_tenant_table', 'tenant_default_sql'],
          'plpgsql helpers pin search_path');

-- Privileges: nothing here is for PUBLIC.
CREATE ROLE tap_backfill_app LOGIN;
SELECT ok(NOT has_function_privilege('tap_backfill_app', 'tenancy.add_tenant_column(regclass,name,boolean,interval,integer)', 'EXECUTE'),
          'PUBLIC cannot add tenant columns');
SELECT ok(NOT has_function_privilege('tap_backfill_app', 'tenancy.add_tenant_column_sql(regclass,name,boolean)', 'EXECUTE'),
          'PUBLIC cannot preview them');
SELECT ok(NOT has_function_privilege('tap_backfill_app',
          'tenancy.backfill(regclass,text,text,name,name,integer,integer,integer,interval,interval,interval,interval,interval,interval,interval,integer,boolean,boolean)', 'EXECUTE'),
          'PUBLIC cannot run backfills');
SELECT ok(NOT has_function_privilege('tap_backfill_app',
          'tenancy.queue_backfill(regclass,text,text,name,name,integer,integer,integer,interval,interval,interval,interval,interval,integer,boolean,boolean)', 'EXECUTE'),
          'PUBLIC cannot queue backfills');
-- Helpers stay executable but write nothing without table privileges.
SET ROLE tap_backfill_app;
SELECT throws_ok($$SELECT tenancy.backfill_job('pg_class', NULL, NULL, NULL, NULL, NULL, 'public')$$, '42501', NULL,
                 'helpers give nothing beyond the caller''s own privileges');
RESET ROLE;
SELECT ok(NOT has_table_privilege('tap_backfill_app', 'tenancy.backfill_jobs', 'SELECT'),
          'PUBLIC cannot read backfill jobs');
SELECT ok(NOT has_table_privilege('tap_backfill_app', 'tenancy.backfill_progress', 'SELECT'),
          'PUBLIC cannot read backfill progress');

-- The application role keeps writing through the column DEFAULT, with no
-- privilege on the tenancy schema beyond the context functions.
DO $$
BEGIN
    PERFORM tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111');
    PERFORM tenancy.create_tenant('beta', 'Beta', '22222222-2222-2222-2222-222222222222');
    PERFORM tenancy.set_implicit_tenant('acme');
END
$$;
CREATE TABLE tap_bf_orders (id int PRIMARY KEY, note text);
INSERT INTO tap_bf_orders VALUES (1, 'old');
GRANT SELECT, INSERT ON tap_bf_orders TO tap_backfill_app;
SELECT lives_ok($$SELECT tenancy.add_tenant_column('tap_bf_orders')$$, 'add_tenant_column() runs');
SELECT is((SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
            WHERE d.adrelid = 'tap_bf_orders'::regclass AND a.attname = 'tenant_id'),
          'COALESCE(tenancy.current_tenant(), ''11111111-1111-1111-1111-111111111111''::uuid)',
          'the column defaults to the current tenant, else the implicit one');
SELECT col_is_null('public', 'tap_bf_orders', 'tenant_id', 'the column stays nullable until the backfill is done');
SET ROLE tap_backfill_app;
INSERT INTO tap_bf_orders (id, note) VALUES (2, 'legacy');
DO $$ BEGIN PERFORM tenancy.set_tenant('beta'); END $$;
INSERT INTO tap_bf_orders (id, note) VALUES (3, 'beta');
DO $$ BEGIN PERFORM tenancy.clear_tenant(); END $$;
RESET ROLE;
SELECT results_eq($$SELECT id, tenant_id::text FROM tap_bf_orders ORDER BY id$$,
                  $$VALUES (1, NULL), (2, '11111111-1111-1111-1111-111111111111'), (3, '22222222-2222-2222-2222-222222222222')$$,
                  'an unprivileged writer gets its tenant, or the implicit one');
SELECT is((SELECT stage FROM tenancy.tables WHERE relation = 'tap_bf_orders'::regclass), 'expand',
          'add_tenant_column() registers the table at stage expand');

-- A table owner without privileges on tenancy cannot use the feature.
CREATE ROLE tap_backfill_owner LOGIN;
CREATE TABLE tap_bf_owned (id int PRIMARY KEY);
ALTER TABLE tap_bf_owned OWNER TO tap_backfill_owner;
SET ROLE tap_backfill_owner;
SELECT throws_ok($$SELECT tenancy.add_tenant_column('tap_bf_owned')$$, '42501', NULL,
                 'add_tenant_column() needs a grant');
RESET ROLE;
-- Someone who may not update the table cannot backfill it, even when granted the feature.
CREATE TABLE tap_bf_readonly (id int PRIMARY KEY, tenant_id uuid);
GRANT SELECT ON tap_bf_readonly TO tap_backfill_owner;
GRANT USAGE ON SCHEMA tenancy TO tap_backfill_owner;
GRANT SELECT ON tenancy.backfill_jobs TO tap_backfill_owner;
GRANT SELECT ON tenancy.tables TO tap_backfill_owner;
GRANT EXECUTE ON FUNCTION tenancy.tables_register(regclass, name, text),
    tenancy.tables_set_stage(regclass, text, text) TO tap_backfill_owner;
GRANT EXECUTE ON FUNCTION tenancy.backfill_job_insert(regclass, name, text, text, text, text, jsonb),
    tenancy.backfill_job_update(bigint, jsonb) TO tap_backfill_owner;
GRANT EXECUTE ON FUNCTION tenancy.queue_backfill(regclass,text,text,name,name,integer,integer,integer,interval,interval,interval,interval,interval,integer,boolean,boolean)
    TO tap_backfill_owner;
SET ROLE tap_backfill_owner;
SELECT throws_ok($$SELECT tenancy.queue_backfill('tap_bf_readonly')$$, '42501', 'permission denied to backfill table "public.tap_bf_readonly"',
                 'a backfill needs UPDATE on the tenant column');
RESET ROLE;

-- A CALL inside a transaction block (this test is one) is refused up front.
SELECT throws_ok($$CALL tenancy.backfill('tap_bf_orders')$$, '25001',
                 'tenancy.backfill() cannot run inside a transaction block',
                 'CALL inside BEGIN: clear error');
SELECT is((SELECT count(*)::int FROM tenancy.backfill_jobs), 0, 'and no job was recorded');

-- Queued jobs carry what a later run needs.
SELECT lives_ok($$SELECT tenancy.queue_backfill('tap_bf_orders', tenant => 'beta', batch_size => 50, pause => '10ms')$$,
                'queue_backfill() records a job');
SELECT results_eq($$SELECT state, source_kind, source, options::text FROM tenancy.backfill_jobs$$,
                  $$VALUES ('queued', 'tenant', '22222222-2222-2222-2222-222222222222', '{"pause_ms": 10, "batch_size": 50}')$$,
                  'a queued job: state, source and options');
SELECT throws_ok($$SELECT tenancy.queue_backfill('tap_bf_orders', tenant => 'acme')$$, '55000', NULL,
                 'an open job with another source is not replaced');
SELECT is(tenancy.queue_backfill('tap_bf_orders'), (SELECT id FROM tenancy.backfill_jobs),
          'queueing again returns the open job');

-- The C helpers: the per-table lock and the per-batch statement timer.
SELECT ok(tenancy.backfill_try_lock('tap_bf_orders'), 'the backfill lock of a table is free');
SELECT ok(NOT tenancy.backfill_try_lock('tap_bf_orders'), 'and not taken twice');
SELECT is((SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND classid = 1952804450
             AND objid = 'tap_bf_orders'::regclass::oid AND pid = pg_backend_pid()), 1,
          'it shows in pg_locks');
SELECT lives_ok($$SELECT tenancy.backfill_unlock('tap_bf_orders')$$, 'it is released');
SELECT ok(tenancy.backfill_try_lock('tap_bf_orders') AND tenancy.backfill_unlock('tap_bf_orders') IS NOT NULL,
          'and free again');
-- (throws_ok() catches OTHERS, which excludes query_canceled)
CREATE FUNCTION pg_temp.tap_timer(ms integer) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenancy.batch_timeout(ms);
    PERFORM pg_sleep(0.5);
    PERFORM tenancy.batch_timeout(0);
    RETURN 'not canceled';
EXCEPTION WHEN query_canceled THEN
    RETURN SQLSTATE || ' ' || SQLERRM;
END
$$;
SELECT is(pg_temp.tap_timer(20), '57014 canceling statement due to statement timeout',
          'the batch timer cancels a statement');
SELECT lives_ok($$SELECT tenancy.batch_timeout(0), pg_sleep(0.05)$$, 'disarmed, it does not');

SELECT * FROM finish();
ROLLBACK;
