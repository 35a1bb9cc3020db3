-- pgTAP: plpgsql_check over every PL/pgSQL routine of the extension, with
-- security, extra and performance warnings on.
--
-- No error may remain.  Every other finding must be justified in the
-- source: the line plpgsql_check names, or one of the three lines above it
-- (for a finding about the whole routine: any line of its body), carries a
-- comment "-- plpgsql_check: <why>".  The findings are pinned below, so a
-- new one fails this test until it is fixed or justified and listed.
BEGIN;
CREATE EXTENSION tenancy;
CREATE EXTENSION plpgsql_check;
SELECT plan(3);

CREATE TEMP TABLE findings AS
SELECT p.oid::regprocedure::text AS routine,
       p.proname::text AS name,
       r.level, r.lineno, r.message,
       pg_catalog.string_to_array(p.prosrc, E'\n') AS src
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'tenancy'
 CROSS JOIN LATERAL plpgsql_check_function_tb(p.oid,
                                              security_warnings => true,
                                              extra_warnings => true,
                                              performance_warnings => true) r
 WHERE p.prorettype NOT IN ('pg_catalog.trigger'::regtype, 'pg_catalog.event_trigger'::regtype);

SELECT is_empty(
    $$SELECT routine || ' line ' || coalesce(lineno::text, '-') || ': ' || message
        FROM findings WHERE level = 'error'$$,
    'plpgsql_check finds no error in any routine');

SELECT is_empty(
    $$SELECT routine || ' line ' || coalesce(lineno::text, '-') || ': ' || level || ': ' || message
        FROM findings f
       WHERE level <> 'error'
         AND NOT EXISTS (
             SELECT FROM pg_catalog.generate_subscripts(f.src, 1) AS i
              WHERE (f.lineno IS NULL OR i BETWEEN f.lineno - 3 AND f.lineno)
                AND f.src[i] LIKE '%-- plpgsql\_check: %')$$,
    'every plpgsql_check warning is justified beside its statement');

-- The justified findings: routine name, level, message, how many.
SELECT bag_eq(
    $$SELECT name, level, message FROM findings WHERE level <> 'error'$$,
    $$VALUES ('add_member', 'performance', 'routine is marked as VOLATILE, should be STABLE'),
           ('backfill_null_source', 'performance', 'routine is marked as VOLATILE, should be IMMUTABLE'),
           ('citus_shard_sums', 'performance', 'routine is marked as VOLATILE, should be STABLE'),
           ('backfill_null_source', 'warning extra', 'unused parameter "$1"'),
           ('backfill_run_batch', 'warning extra', 'parameter "err_detail" is never read'),
           ('bind_role', 'security', 'text type variable is not sanitized'),
           ('bind_role', 'performance', 'routine is marked as VOLATILE, should be STABLE'),
           ('deprecation_run', 'security', 'text type variable is not sanitized'),
           ('citus_context_problems', 'performance', 'routine is marked as VOLATILE, should be STABLE'),
           ('citus_remap', 'performance', 'routine is marked as VOLATILE, should be STABLE'),
           ('citus_run', 'security', 'text type variable is not sanitized'),
           ('derive_tenant_stmts', 'security', 'text type variable is not sanitized'),
           ('move_ddl', 'security', 'text type variable is not sanitized'),
           ('move_remote_query', 'performance', 'routine is marked as VOLATILE, should be STABLE'),
           ('move_verify', 'warning extra', 'OUT variable "equal" is maybe unmodified'),
           ('move_verify', 'warning extra', 'OUT variable "relation" is maybe unmodified'),
           ('move_verify', 'warning extra', 'OUT variable "source_rows" is maybe unmodified'),
           ('move_verify', 'warning extra', 'OUT variable "target_rows" is maybe unmodified'),
           ('rls_run', 'performance', 'routine is marked as VOLATILE, should be IMMUTABLE'),
           ('rollout_stmts', 'security', 'text type variable is not sanitized'),
           ('rollout_stmts', 'performance', 'routine is marked as VOLATILE, should be STABLE'),
           ('rollback_table', 'security', 'text type variable is not sanitized'),
           ('rollback_table', 'performance', 'routine is marked as VOLATILE, should be STABLE'),
           ('tenant_required', 'performance', 'routine is marked as STABLE, should be IMMUTABLE'),
           ('unbind_role', 'performance', 'routine is marked as VOLATILE, should be STABLE')$$,
    'the plpgsql_check findings are exactly the justified ones');

SELECT * FROM finish();
ROLLBACK;
