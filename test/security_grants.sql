-- pgTAP: who may execute each routine of schema tenancy, and who holds
-- which privilege on each of its tables, views and sequences (issue 13,
-- finding 9).  The lists below are the complete expected state, read from
-- the catalog (pg_proc.proacl, pg_class.relacl through aclexplode; the
-- owner is left out, as it is whoever ran CREATE EXTENSION): a new routine
-- or relation, or a new grant, fails this test until it is added here.
-- On failure the diagnostics list the extra and missing rows, in the
-- format of the lists.
--
-- Grantees: '' none but the owner; 'PUBLIC'; role names, comma-separated.
-- Every PUBLIC routine must run as its caller (no SECURITY DEFINER, except
-- set_tenant_as) or check the caller's rights itself (rls_record,
-- table_exec, table_query); see README, "Privileges".
BEGIN;
CREATE EXTENSION tenancy;
SELECT plan(13);

CREATE TEMP TABLE expected_routines (routine text, grantees text);
INSERT INTO expected_routines VALUES
    ('tenancy.ack_fingerprint(text,text)', 'PUBLIC'),
    ('tenancy.citus_anchor()', 'PUBLIC'),
    ('tenancy.citus_installed()', 'PUBLIC'),
    ('tenancy.citus_names()', ''),
    ('tenancy.citus_remap(jsonb)', ''),
    ('tenancy.citus_required(text)', 'PUBLIC'),
    ('tenancy.citus_run(text)', ''),
    ('tenancy.citus_table(regclass)', 'PUBLIC'),
    ('tenancy.citus_undistribute(text)', ''),
    ('tenancy.distribute(boolean,integer)', ''),
    ('tenancy.distribute_order()', 'PUBLIC'),
    ('tenancy.distribute_plan(boolean)', ''),
    ('tenancy.distribute_sql(boolean)', ''),
    ('tenancy.isolate_tenant(regclass,text,text)', ''),
    ('tenancy.isolate_tenant_sql(regclass,text,text,integer,text)', ''),
    ('tenancy.tenant_shards(regclass,text)', ''),
    ('tenancy.undistribute_sql(boolean)', ''),
    ('tenancy.citus_verify(regclass)', 'PUBLIC'),
    ('tenancy.ack_kind(text)', 'PUBLIC'),
    ('tenancy.ack_state(text,text)', 'PUBLIC'),
    ('tenancy.acknowledge(text,text,text)', ''),
    ('tenancy.activate_tenant(text)', ''),
    ('tenancy.add_member(text,text,text)', ''),
    ('tenancy.add_tenant_column(regclass,name,boolean,interval,integer)', ''),
    ('tenancy.add_tenant_column_ddl(regclass,name,boolean)', 'PUBLIC'),
    ('tenancy.add_tenant_column_sql(regclass,name,boolean)', ''),
    ('tenancy.backfill(regclass,text,text,name,name,integer,integer,integer,interval,interval,interval,interval,interval,interval,interval,integer,boolean,boolean)', ''),
    ('tenancy.backfill_batch_sql(tenancy.backfill_jobs)', 'PUBLIC'),
    ('tenancy.backfill_check_no_triggers(regclass,name)', 'PUBLIC'),
    ('tenancy.backfill_failing_row(tenancy.backfill_jobs,tenancy.backfill_statements,text[])', 'PUBLIC'),
    ('tenancy.backfill_first_run(tenancy.backfill_jobs,text)', 'PUBLIC'),
    ('tenancy.backfill_job(regclass,name,text,text,name,jsonb,text)', 'PUBLIC'),
    ('tenancy.backfill_job_insert(regclass,name,text,text,text,text,jsonb)', ''),
    ('tenancy.backfill_job_update(bigint,jsonb)', ''),
    ('tenancy.backfill_next_size(text,integer,integer,integer,numeric,numeric,numeric,integer,boolean)', 'PUBLIC'),
    ('tenancy.backfill_null_source(anyelement)', 'PUBLIC'),
    ('tenancy.backfill_options(integer,integer,integer,interval,interval,interval,interval,interval,interval,interval,integer,boolean)', 'PUBLIC'),
    ('tenancy.backfill_rows_per_block(regclass)', 'PUBLIC'),
    ('tenancy.backfill_run_batch(tenancy.backfill_jobs,tenancy.backfill_statements,text[],text[],integer,numeric,boolean,integer,integer,boolean,text,text,text[],text)', 'PUBLIC'),
    ('tenancy.backfill_try_lock(regclass)', ''),
    ('tenancy.backfill_unlock(regclass)', ''),
    ('tenancy.backfill_user_triggers(regclass,name,boolean)', 'PUBLIC'),
    ('tenancy.backfill_value_sql(regclass,text,text)', 'PUBLIC'),
    ('tenancy.backoff_delay(integer,interval,interval)', 'PUBLIC'),
    ('tenancy.batch_timeout(integer)', 'PUBLIC'),
    ('tenancy.bind_role(regrole,text)', ''),
    ('tenancy.bind_role_sql(regrole,text)', ''),
    ('tenancy.check_tenant_table(regclass,boolean)', 'PUBLIC'),
    ('tenancy.clear_tenant()', 'PUBLIC'),
    ('tenancy.column_list(regclass,smallint[])', ''),
    ('tenancy.context_stats()', 'pg_read_all_stats'),
    ('tenancy.contract_guard(regclass,text,name)', 'PUBLIC'),
    ('tenancy.contract_guard(regclass,text,name,text[],regclass)', 'PUBLIC'),
    ('tenancy.create_personal_tenants(regclass,name,name,regclass[],name[],text)', ''),
    ('tenancy.create_tenant(text,text,text)', ''),
    ('tenancy.current_tenant()', 'PUBLIC'),
    ('tenancy.current_tenant_bigint()', 'PUBLIC'),
    ('tenancy.current_tenant_text()', 'PUBLIC'),
    ('tenancy.current_user_key()', 'PUBLIC'),
    ('tenancy.derive_lookup(regclass)', ''),
    ('tenancy.derive_policy_stmt(regclass,regclass,name,text)', 'PUBLIC'),
    ('tenancy.derive_source(regclass,text,name)', 'PUBLIC'),
    ('tenancy.derive_tenant(regclass,text,name,name)', ''),
    ('tenancy.derive_tenant_sql(regclass,text,name,name)', ''),
    ('tenancy.derive_tenant_stmts(regclass,text,name,name)', ''),
    ('tenancy.derive_tenant_trigger()', 'PUBLIC'),
    ('tenancy.derived_root(regclass)', 'PUBLIC'),
    ('tenancy.derived_write(regclass,anyelement)', 'PUBLIC'),
    ('tenancy.disable_rls(regclass)', 'PUBLIC'),
    ('tenancy.disable_rls_sql(regclass)', 'PUBLIC'),
    ('tenancy.enable_rls(regclass,name,regrole[],text)', 'PUBLIC'),
    ('tenancy.enforce_not_null(regclass,interval,integer)', ''),
    ('tenancy.enforce_not_null_plan(regclass)', ''),
    ('tenancy.enforce_not_null_sql(regclass)', ''),
    ('tenancy.finish_contract(regclass)', ''),
    ('tenancy.foreign_keys(regclass)', 'PUBLIC'),
    ('tenancy.implicit_tenant()', 'PUBLIC'),
    ('tenancy.in_transaction_block()', 'PUBLIC'),
    ('tenancy.is_implicit_tenant()', 'PUBLIC'),
    ('tenancy.key_type()', 'PUBLIC'),
    ('tenancy.log_step(regclass,text,text,text)', ''),
    ('tenancy.lookup_tenant(text)', ''),
    ('tenancy.mark_shared(regclass)', ''),
    ('tenancy.normalize_key(text)', 'PUBLIC'),
    ('tenancy.object_name(text,text)', 'PUBLIC'),
    ('tenancy.partition_indexes(regclass,regclass,text,text,name)', 'PUBLIC'),
    ('tenancy.partitioned_index_steps(regclass,regclass,name,text,text,boolean,text,text,text[])', 'PUBLIC'),
    ('tenancy.policy_sql(regclass,name,regrole[],text)', 'PUBLIC'),
    ('tenancy.preallocate_wal(bigint)', ''),
    ('tenancy.preview_reset()', 'PUBLIC'),
    ('tenancy.preview_set(boolean)', 'PUBLIC'),
    ('tenancy.preview_wrap(text)', 'PUBLIC'),
    ('tenancy.queue_backfill(regclass,text,text,name,name,integer,integer,integer,interval,interval,interval,interval,interval,integer,boolean,boolean)', ''),
    ('tenancy.read_shadow_stats()', 'pg_read_all_stats'),
    ('tenancy.refresh_status(regclass)', ''),
    ('tenancy.registered_table(regclass)', 'PUBLIC'),
    ('tenancy.registry_changed()', ''),
    ('tenancy.remove_member(text,text)', ''),
    ('tenancy.reset_context_stats()', ''),
    ('tenancy.reset_shadow_stats(regclass)', ''),
    ('tenancy.rls_advisories(regclass,name)', 'PUBLIC'),
    ('tenancy.rls_check(regclass,name,text)', 'PUBLIC'),
    ('tenancy.rls_cover_partitions()', 'PUBLIC'),
    ('tenancy.rls_cover_stmts(regclass,regclass,name,text,text)', 'PUBLIC'),
    ('tenancy.rls_disable_stmts(regclass)', 'PUBLIC'),
    ('tenancy.rls_enable_stmts(regclass,name,regrole[],text)', 'PUBLIC'),
    ('tenancy.rls_forget_dropped()', 'PUBLIC'),
    ('tenancy.rls_legacy_policies()', 'PUBLIC'),
    ('tenancy.rls_legacy_stmts(text,name,text,text)', 'PUBLIC'),
    ('tenancy.rls_members(regclass)', 'PUBLIC'),
    ('tenancy.rls_mode_stmts(regclass,text)', 'PUBLIC'),
    ('tenancy.rls_quals(regclass,name,text)', 'PUBLIC'),
    ('tenancy.rls_record(text,regclass,regclass,name,text)', 'PUBLIC'),
    ('tenancy.rls_record_internal(text,regclass,regclass,name,text)', ''),
    ('tenancy.rls_role_list(regrole[])', 'PUBLIC'),
    ('tenancy.rls_root_row(regclass)', 'PUBLIC'),
    ('tenancy.rls_run(text[])', 'PUBLIC'),
    ('tenancy.rls_script(text[])', 'PUBLIC'),
    ('tenancy.rls_tree(regclass)', 'PUBLIC'),
    ('tenancy.rollback_table(regclass)', ''),
    ('tenancy.rollback_table_sql(regclass)', ''),
    ('tenancy.scope_constraints_plan(regclass)', ''),
    ('tenancy.scope_constraints_sql(regclass)', ''),
    ('tenancy.set_implicit_tenant(text)', ''),
    ('tenancy.set_mode(regclass,text)', 'PUBLIC'),
    ('tenancy.set_mode_sql(regclass,text)', 'PUBLIC'),
    ('tenancy.set_tenant(text,boolean)', 'PUBLIC'),
    ('tenancy.set_tenant_as(text,text,boolean)', 'PUBLIC'),
    ('tenancy.set_tenant_token(text,boolean)', 'PUBLIC'),
    ('tenancy.shadow_read(regclass,bigint)', 'PUBLIC'),
    ('tenancy.shadow_read(regclass,text)', 'PUBLIC'),
    ('tenancy.shadow_read(regclass,uuid)', 'PUBLIC'),
    ('tenancy.shadow_require_preload()', 'PUBLIC'),
    ('tenancy.shadow_stats_dropped()', 'pg_read_all_stats'),
    ('tenancy.shadow_write(regclass,bigint)', 'PUBLIC'),
    ('tenancy.shadow_write(regclass,text)', 'PUBLIC'),
    ('tenancy.shadow_write(regclass,uuid)', 'PUBLIC'),
    ('tenancy.suspend_tenant(text)', ''),
    ('tenancy.table_exec(regclass,regrole,text)', 'PUBLIC'),
    ('tenancy.table_exec(regclass,regrole,text,"any")', 'PUBLIC'),
    ('tenancy.table_query(regclass,regrole,text)', 'PUBLIC'),
    ('tenancy.table_query(regclass,regrole,text,"any")', 'PUBLIC'),
    ('tenancy.tables_not_shared()', 'PUBLIC'),
    ('tenancy.tables_register(regclass,name,text)', ''),
    ('tenancy.tables_set_stage(regclass,text,text)', ''),
    ('tenancy.tenant_accessor()', ''),
    ('tenancy.tenant_column(regclass)', 'PUBLIC'),
    ('tenancy.tenant_default_sql()', 'PUBLIC'),
    ('tenancy.tenant_key(text)', ''),
    ('tenancy.tenants_check_names()', ''),
    ('tenancy.type_sql(regtype)', 'PUBLIC'),
    ('tenancy.unbind_role(regrole)', ''),
    ('tenancy.unacknowledge(text,text)', ''),
    ('tenancy.unmark_shared(regclass)', ''),
    ('tenancy.underive_tenant(regclass)', ''),
    ('tenancy.unscoped_unique_indexes(regclass,smallint)', ''),
    ('tenancy.verify(regclass,bigint)', ''),
    ('tenancy.verify_bypassrls_role(regclass)', ''),
    ('tenancy.verify_conflicting_parents(regclass,bigint)', ''),
    ('tenancy.verify_cross_tenant_reference(regclass,name,oid,bigint,text[])', ''),
    ('tenancy.verify_derived_tenant_mismatch(regclass,name,bigint)', ''),
    ('tenancy.verify_foreign_key_scope(regclass,name)', ''),
    ('tenancy.verify_materialized_view(regclass)', ''),
    ('tenancy.verify_null_tenant(regclass,name,bigint)', ''),
    ('tenancy.verify_policy_mode(regclass,name,text)', ''),
    ('tenancy.verify_row_security(regclass,name,text)', ''),
    ('tenancy.verify_security_definer_function(regclass)', ''),
    ('tenancy.verify_shadow_divergence(regclass)', ''),
    ('tenancy.verify_shared_table()', ''),
    ('tenancy.verify_tenant_column(regclass,name,boolean,smallint,oid)', ''),
    ('tenancy.verify_tenant_index(regclass,name,smallint,"char")', ''),
    ('tenancy.verify_tenant_without_owner()', ''),
    ('tenancy.verify_unique_scope(regclass,name,smallint)', ''),
    ('tenancy.verify_unknown_tenant(regclass,name,oid,bigint)', ''),
    ('tenancy.verify_unregistered_reference(regclass)', ''),
    ('tenancy.verify_user_without_tenant(bigint)', ''),
    ('tenancy.verify_view_security_invoker(regclass)', ''),
    ('tenancy.wal_flush_behind(anyelement)', 'PUBLIC');

CREATE TEMP TABLE expected_relations (relation text, grants text);
INSERT INTO expected_relations VALUES
    ('tenancy.acknowledgements', ''),
    ('tenancy.backfill_jobs', ''),
    ('tenancy.backfill_jobs_id_seq', ''),
    ('tenancy.backfill_progress', ''),
    ('tenancy.contract_log', ''),
    ('tenancy.contract_log_id_seq', ''),
    ('tenancy.identity_sources', ''),
    ('tenancy.memberships', ''),
    ('tenancy.migration_status', ''),
    ('tenancy.migration_status_partitions', ''),
    ('tenancy.role_bindings', ''),
    ('tenancy.rls_tables', 'PUBLIC=SELECT'),
    ('tenancy.derived_tenants', 'PUBLIC=SELECT'),
    ('tenancy.shadow_stats', 'pg_read_all_stats=SELECT'),
    ('tenancy.shared_tables', 'PUBLIC=SELECT'),
    ('tenancy.tables', ''),
    ('tenancy.tenants', '');

CREATE TEMP VIEW routine_acl AS
SELECT p.oid::regprocedure::text AS routine,
       coalesce((SELECT string_agg(g, ', ' ORDER BY g)
                   FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END AS g
                           FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                          WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner) x), '') AS grantees
  FROM pg_proc p
 WHERE p.pronamespace = 'tenancy'::regnamespace;

CREATE TEMP VIEW relation_acl AS
SELECT c.oid::regclass::text AS relation,
       coalesce((SELECT string_agg(g || '=' || privs, ', ' ORDER BY g)
                   FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END AS g,
                                string_agg(a.privilege_type, ',' ORDER BY a.privilege_type) AS privs
                           FROM aclexplode(coalesce(c.relacl,
                                    acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) a
                          WHERE a.grantee <> c.relowner
                          GROUP BY 1) x), '') AS grants
  FROM pg_class c
 WHERE c.relnamespace = 'tenancy'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f');

SELECT set_eq('SELECT routine, grantees FROM routine_acl',
              'SELECT routine, grantees FROM expected_routines',
              'EXECUTE on every routine of schema tenancy is as listed');
SELECT set_eq('SELECT relation, grants FROM relation_acl',
              'SELECT relation, grants FROM expected_relations',
              'the privileges on every table, view and sequence of schema tenancy are as listed');
SELECT is((SELECT count(*)::int FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE c.relnamespace = 'tenancy'::regnamespace AND a.attacl IS NOT NULL), 0,
          'no column-level grants');
SELECT is((SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                             || '=' || a.privilege_type, ', ' ORDER BY 1)
             FROM pg_namespace n, aclexplode(n.nspacl) a
            WHERE n.nspname = 'tenancy' AND a.grantee <> n.nspowner), 'PUBLIC=USAGE',
          'schema tenancy: USAGE for PUBLIC, nothing else');
SELECT is((SELECT count(*)::int FROM pg_proc p
            WHERE p.pronamespace = 'tenancy'::regnamespace AND p.prosecdef
              AND p.oid <> 'tenancy.set_tenant_as(text, text, boolean)'::regprocedure), 0,
          'set_tenant_as() is the only SECURITY DEFINER routine');

-- The helpers of finding 9: an application role cannot hold a table's
-- backfill lock, grow pg_wal or read the cluster-wide counters.
CREATE ROLE sg_app;
CREATE TABLE sg_t (id int, tenant_id uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON sg_t TO sg_app;
SELECT ok(NOT has_function_privilege('sg_app', 'tenancy.backfill_try_lock(regclass)', 'EXECUTE'),
          'an application role cannot take a backfill lock');
SELECT ok(NOT has_function_privilege('sg_app', 'tenancy.backfill_unlock(regclass)', 'EXECUTE'),
          'nor release one');
SELECT ok(NOT has_function_privilege('sg_app', 'tenancy.preallocate_wal(bigint)', 'EXECUTE'),
          'nor create WAL segments');
SELECT ok(NOT has_function_privilege('sg_app', 'tenancy.context_stats()', 'EXECUTE'),
          'nor read the cluster-wide tenant context counters');
SET ROLE sg_app;
SELECT throws_ok($$SELECT tenancy.backfill_try_lock('sg_t')$$, '42501', NULL,
                 'backfill_try_lock() from an application role: permission denied');
SELECT throws_ok($$SELECT tenancy.preallocate_wal(16 * 1024 * 1024)$$, '42501', NULL,
                 'preallocate_wal() from an application role: permission denied');
RESET ROLE;
-- A migration role with the grants README lists under Backfilling has them.
CREATE ROLE sg_migrator;
GRANT EXECUTE ON FUNCTION tenancy.backfill_try_lock(regclass), tenancy.backfill_unlock(regclass),
    tenancy.preallocate_wal(bigint) TO sg_migrator;
GRANT UPDATE ON sg_t TO sg_migrator;
SET ROLE sg_migrator;
SELECT ok(tenancy.backfill_try_lock('sg_t') AND tenancy.backfill_unlock('sg_t') IS NOT NULL,
          'the migration role takes and releases the lock');
RESET ROLE;
-- Monitoring roles (pg_read_all_stats) read the counters.
GRANT pg_read_all_stats TO sg_app;
SELECT ok(has_function_privilege('sg_app', 'tenancy.context_stats()', 'EXECUTE'),
          'pg_read_all_stats reads the tenant context counters');

SELECT * FROM finish();
ROLLBACK;
