-- src/backfill.sql: the batched, resumable backfill and its jobs (C: backfill.c, backfill_job.c, backfill_wal.c).
------------------------------------------------------------------------------
-- Backfill: additive tenant columns and batched, resumable backfills
------------------------------------------------------------------------------

-- C helpers of the engine (src/backfill.c).
CREATE FUNCTION tenancy.in_transaction_block() RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_in_transaction_block'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.in_transaction_block() IS 'true inside BEGIN ... COMMIT, where a procedure cannot commit';

CREATE FUNCTION tenancy.backfill_try_lock(tbl regclass) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_backfill_try_lock'
    LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION tenancy.backfill_try_lock(regclass) IS 'take the session-level backfill lock of a table without waiting (released when the backfill ends or fails)';

CREATE FUNCTION tenancy.backfill_unlock(tbl regclass) RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_backfill_unlock'
    LANGUAGE C STRICT VOLATILE;

-- Creates the WAL segment files the next batch will fill (at most 16 past
-- the insert position), so that no application commit zero-fills one while
-- holding WALWriteLock.  See src/backfill_wal.c.
CREATE FUNCTION tenancy.preallocate_wal(bytes bigint) RETURNS integer
    AS 'MODULE_PATHNAME', 'tenancy_preallocate_wal'
    LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION tenancy.preallocate_wal(bigint) IS 'create the WAL segments the next bytes of WAL will need (at most 16 ahead); returns how many were created';

-- Wraps each value a batch writes: every wal_writer_flush_after bytes of
-- this backend's WAL it wakes the WAL writer (as an asynchronous commit
-- does), so that the batch's WAL is flushed behind it and application
-- commits do not have to.  See src/backfill_wal.c.
CREATE FUNCTION tenancy.wal_flush_behind(value anyelement) RETURNS anyelement
    AS 'MODULE_PATHNAME', 'tenancy_wal_flush_behind'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.wal_flush_behind(anyelement) IS 'return value; every wal_writer_flush_after bytes of this backend''s WAL, wake the WAL writer to flush it';

CREATE FUNCTION tenancy.batch_timeout(ms integer) RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_batch_timeout'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.batch_timeout(integer) IS 'arm the statement timer for one batch (ms > 0) or disarm it';

-- The lock helpers act on other sessions (a held lock makes their backfill
-- fail with 55006) and preallocate_wal() grows pg_wal: only for the roles
-- that run backfills (README, "Backfilling", Privileges).  The other helpers
-- above only act on the caller's own session and stay executable by PUBLIC.
REVOKE EXECUTE ON FUNCTION
    tenancy.backfill_try_lock(regclass),
    tenancy.backfill_unlock(regclass),
    tenancy.preallocate_wal(bigint)
FROM PUBLIC;

-- Raised in place of a NULL tenant from a backfill source.
CREATE FUNCTION tenancy.backfill_null_source(anyelement) RETURNS anyelement
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- plpgsql_check: the argument only gives the result its type; VOLATILE so
    -- that the planner never evaluates (and raises) it while planning a batch.
    RAISE EXCEPTION 'tenant source gave NULL'
        USING ERRCODE = 'not_null_violation',
              HINT = 'Backfill the parent table first, or pass source => an expression with a fallback, e.g. COALESCE(..., tenancy.implicit_tenant()::uuid).';
END
$$;

------------------------------------------------------------------------------
-- Backfill jobs: one row per job; the cursor and counters are written in
-- each batch's own transaction, so an interrupted job resumes after its
-- last committed batch.
------------------------------------------------------------------------------

CREATE TABLE tenancy.backfill_jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relation      regclass NOT NULL,
    column_name   name NOT NULL,
    source_kind   text NOT NULL
                  CONSTRAINT backfill_jobs_source_kind_check
                  CHECK (source_kind OPERATOR(pg_catalog.=) ANY (ARRAY['tenant', 'expression', 'foreign_key'])),
    source        text NOT NULL,
    value_sql     text NOT NULL,
    batch_sql     text,
    search_path   text NOT NULL,
    options       jsonb NOT NULL DEFAULT '{}',
    state         text NOT NULL DEFAULT 'queued'
                  CONSTRAINT backfill_jobs_state_check
                  CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'running', 'paused', 'done', 'failed'])),
    method        text
                  CONSTRAINT backfill_jobs_method_check
                  CHECK (method OPERATOR(pg_catalog.=) ANY (ARRAY['primary key', 'ctid'])),
    key_columns   name[],
    upper_bound   text[],
    cursor        text[],
    phase         text
                  CONSTRAINT backfill_jobs_phase_check
                  CHECK (phase OPERATOR(pg_catalog.=) ANY (ARRAY['batches', 'sweep', 'done'])),
    rows_total    bigint,
    rows_scanned  bigint NOT NULL DEFAULT 0,
    rows_done     bigint NOT NULL DEFAULT 0,
    batches       bigint NOT NULL DEFAULT 0,
    retries       bigint NOT NULL DEFAULT 0,
    batch_size    integer,
    last_batch_ms numeric,
    max_batch_ms  numeric,
    rate          numeric,
    eta           interval,
    throttle      text,
    last_error    text,
    pid           integer,
    created_by    regrole NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at    timestamptz,
    updated_at    timestamptz,
    finished_at   timestamptz
);
CREATE UNIQUE INDEX backfill_jobs_one_open ON tenancy.backfill_jobs (relation, column_name)
    WHERE state OPERATOR(pg_catalog.<>) 'done';
COMMENT ON TABLE tenancy.backfill_jobs IS 'backfill jobs: source, state, cursor, counters, rate, batch size, throttle reason, ETA';
SELECT pg_catalog.pg_extension_config_dump('tenancy.backfill_jobs', '');
-- The identity's sequence too: restored without it, the next job would get id 1.
SELECT pg_catalog.pg_extension_config_dump('tenancy.backfill_jobs_id_seq', '');
REVOKE ALL ON TABLE tenancy.backfill_jobs FROM PUBLIC;

-- The only writers of the job table (src/backfill_job.c): a job runs as its
-- created_by, so no role may write a row of it directly.  They run as the
-- caller (SECURITY DEFINER could not tell who called) and write as the
-- table's owner: the insert records the caller as the creator, for a table
-- it may backfill; the update changes progress and display columns only,
-- for a caller with the privileges of the creator or of the table owner.
CREATE FUNCTION tenancy.backfill_job_insert(tbl regclass, column_name name, source_kind text, source text,
                                            value_sql text, search_path text, options jsonb)
RETURNS bigint
    AS 'MODULE_PATHNAME', 'tenancy_backfill_job_insert'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.backfill_job_insert(regclass, name, text, text, text, text, jsonb)
    IS 'record a queued backfill job created by the caller (who may backfill the table); returns its id';
CREATE FUNCTION tenancy.backfill_job_update(job_id bigint, changes jsonb) RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_backfill_job_update'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.backfill_job_update(bigint, jsonb)
    IS 'set progress columns of a backfill job (options are merged); the caller needs the privileges of its creator or of the table owner';
REVOKE EXECUTE ON FUNCTION tenancy.backfill_job_insert(regclass, name, text, text, text, text, jsonb),
                           tenancy.backfill_job_update(bigint, jsonb) FROM PUBLIC;

-- The value a backfill writes, from the job's source: built again at each
-- run from the validated parts (never taken from the job's row), with
-- every name qualified but the user's own source expression.
CREATE FUNCTION tenancy.backfill_value_sql(tbl regclass, source_kind text, source text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keytype text := tenancy.type_sql(tenancy.key_type());
    con record;
    pcol name;
    pcoltype regtype;
    val text;
BEGIN
    IF source_kind = 'tenant' THEN
        RETURN format('%L::%s', tenancy.normalize_key(source), keytype);
    ELSIF source_kind = 'expression' THEN
        RETURN format('COALESCE((%s), tenancy.backfill_null_source(NULL::%s))', source, keytype);
    ELSIF source_kind IS DISTINCT FROM 'foreign_key' THEN
        RAISE EXCEPTION 'unknown backfill source kind %', source_kind USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- a key of the table or one declared on one of its partitions (the rows
    -- of every partition are filled through its columns, which the table has)
    SELECT c.oid, c.confrelid::regclass AS parent, c.conrelid, c.conkey, c.confkey, c.conpfeqop INTO con
      FROM tenancy.foreign_keys(tbl) k
      JOIN pg_constraint c ON c.oid = k.conoid
     WHERE k.conname = source
     ORDER BY k.partition IS NOT NULL, k.partition::text
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'foreign key "%" of relation "%" does not exist', source, tbl
            USING ERRCODE = 'undefined_object',
                  HINT = 'Name a foreign key constraint of the table (\d shows them).';
    END IF;
    pcol := tenancy.tenant_column(con.parent);
    SELECT a.atttypid::regtype INTO pcoltype FROM pg_attribute a
     WHERE a.attrelid = con.parent AND a.attname = pcol AND NOT a.attisdropped;
    IF pcoltype IS DISTINCT FROM tenancy.key_type() THEN
        RAISE EXCEPTION 'parent table "%" has no tenant column "%"', con.parent, pcol
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Add and backfill the tenant column of the parent first.';
    END IF;
    -- The foreign key's own equality operators, qualified.
    SELECT format('(SELECT p.%I FROM %I.%I p WHERE %s)', pcol, pn.nspname, pc.relname,
                  string_agg(format('p.%I OPERATOR(%I.%s) t.%I', pa.attname, opn.nspname, op.oprname, ca.attname),
                             ' AND ' ORDER BY k.i))
      INTO val
      FROM unnest(con.conkey, con.confkey, con.conpfeqop) WITH ORDINALITY AS k(ck, pk, eqop, i)
      JOIN pg_attribute ca ON ca.attrelid = con.conrelid AND ca.attnum = k.ck
      JOIN pg_attribute pa ON pa.attrelid = con.parent AND pa.attnum = k.pk
      JOIN pg_operator op ON op.oid = k.eqop
      JOIN pg_namespace opn ON opn.oid = op.oprnamespace
      JOIN pg_class pc ON pc.oid = con.parent
      JOIN pg_namespace pn ON pn.oid = pc.relnamespace
     GROUP BY pn.nspname, pc.relname;
    RETURN format('COALESCE(%s, tenancy.backfill_null_source(NULL::%s))', val, keytype);
END
$$;

CREATE VIEW tenancy.backfill_progress AS
SELECT j.id, j.relation, j.column_name, j.state,
       j.state = 'running' AND l.pid IS NULL AS interrupted,
       l.pid AS running_pid,
       j.phase, j.cursor, j.rows_done, j.rows_scanned, j.rows_total,
       CASE WHEN j.state = 'done' THEN 100.0
            WHEN j.rows_total > 0 THEN round(100.0 * least(j.rows_scanned, j.rows_total) / j.rows_total, 1)
       END AS percent,
       j.rate AS rows_per_s, j.batch_size, j.last_batch_ms, j.max_batch_ms, j.retries,
       j.throttle, j.eta, j.last_error, j.updated_at
  FROM tenancy.backfill_jobs j
  LEFT JOIN pg_catalog.pg_locks l
         ON l.locktype = 'advisory' AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                                       WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
        AND l.classid = 1952804450 AND l.objid = j.relation::oid AND l.objsubid = 2 AND l.granted
        AND j.state <> 'done';
COMMENT ON VIEW tenancy.backfill_progress IS 'backfill jobs with percent done, whether a backend runs them, and jobs left running by a dead backend';
REVOKE ALL ON TABLE tenancy.backfill_progress FROM PUBLIC;

-- Find the open job of a table, or create one (state queued), checking the
-- table, the column and the source.  Used by backfill() and queue_backfill().
CREATE FUNCTION tenancy.backfill_job(tbl regclass, column_name name, tenant text, source text,
                                     via name, options jsonb, caller_search_path text)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    keytype regtype := tenancy.key_type();
    col name := column_name;
    coltype regtype;
    job tenancy.backfill_jobs;
    kind text;
    src text;
    val text;
    nsources integer := (tenant IS NOT NULL)::int + (source IS NOT NULL)::int + (via IS NOT NULL)::int;
    exprtype regtype;
    job_id bigint;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tbl must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl, true);
    IF col IS NULL THEN
        col := tenancy.tenant_column(tbl);
    END IF;
    SELECT a.atttypid::regtype INTO coltype FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', col, tbl
            USING ERRCODE = 'undefined_column',
                  HINT = 'Add it with tenancy.add_tenant_column(), or pass column_name.';
    END IF;
    IF coltype <> keytype THEN
        RAISE EXCEPTION 'column "%" of relation "%" is of type %, but tenant keys are of type %',
                        col, tbl, format_type(coltype, NULL), format_type(keytype, NULL)
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    IF NOT has_column_privilege(tbl, col, 'UPDATE') OR NOT has_table_privilege(tbl, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied to backfill table "%"', tbl
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('The backfill needs SELECT on the table and UPDATE on column %I.', col);
    END IF;
    IF nsources > 1 THEN
        RAISE EXCEPTION 'give at most one of tenant, source and via'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (options->>'user_triggers')::boolean IS FALSE THEN
        PERFORM tenancy.backfill_check_no_triggers(tbl, col);
    END IF;

    -- An open job (queued, running, paused, failed) is resumed.
    SELECT * INTO job FROM tenancy.backfill_jobs j
     WHERE j.relation = tbl AND j.column_name = col AND j.state <> 'done';
    IF FOUND THEN
        -- The job runs as its creator: only a role with the creator's
        -- privileges may resume it, and only the creator a superuser's job.
        IF job.created_by <> current_user::regrole THEN
            IF NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = job.created_by) THEN
                RAISE EXCEPTION 'the role that created backfill job % no longer exists', job.id
                    USING ERRCODE = 'undefined_object',
                          HINT = 'The extension owner can delete the job from tenancy.backfill_jobs; then start a new one.';
            ELSIF (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = job.created_by) THEN
                RAISE EXCEPTION 'backfill job % was created by superuser "%"', job.id, job.created_by
                    USING ERRCODE = 'insufficient_privilege',
                          DETAIL = 'A job runs as the role that created it; only that role runs the job of a superuser.',
                          HINT = format('Run it as role %s.', job.created_by);
            ELSIF NOT pg_has_role(job.created_by, 'USAGE') THEN
                RAISE EXCEPTION 'permission denied to run backfill job % as role "%"', job.id, job.created_by
                    USING ERRCODE = 'insufficient_privilege',
                          DETAIL = format('A job runs as the role that created it, and role "%s" does not have the privileges of role "%s".',
                                          current_user, job.created_by),
                          HINT = format('Run it as role %s, or as a member of it.', job.created_by);
            END IF;
        END IF;
        IF nsources > 0 AND (job.source_kind, job.source) IS DISTINCT FROM
               (CASE WHEN tenant IS NOT NULL THEN 'tenant' WHEN source IS NOT NULL THEN 'expression' ELSE 'foreign_key' END,
                CASE WHEN tenant IS NOT NULL THEN tenancy.tenant_key(tenant) ELSE coalesce(source, via::text) END) THEN
            RAISE EXCEPTION 'an unfinished backfill of "%" has another source', tbl
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = format('Job %s (%s) fills %I from %s %s.', job.id, job.state, col, job.source_kind, job.source),
                      HINT = 'Call tenancy.backfill() without a source to resume it, or delete it from tenancy.backfill_jobs.';
        END IF;
        PERFORM tenancy.backfill_job_update(job.id, jsonb_build_object('options', coalesce(backfill_job.options, '{}')));
        RETURN job.id;
    END IF;

    IF via IS NOT NULL THEN
        kind := 'foreign_key';
        src := via::text;
        val := tenancy.backfill_value_sql(tbl, kind, src);
    ELSIF source IS NOT NULL THEN
        kind := 'expression';
        src := source;
        -- Type-check without evaluating: the type of a scalar subquery, with
        -- names resolved as the caller (and later the batches) see them,
        -- planned as the caller or the table owner, whichever is less
        -- privileged (src/as_owner.c).
        exprtype := (tenancy.table_query(tbl, NULL,
            format('SELECT pg_catalog.set_config(%L, %L, true); '
                   'SELECT pg_catalog.pg_typeof((SELECT (%s) FROM %I.%I t LIMIT 0))::pg_catalog.oid',
                   'search_path', caller_search_path, source,
                   (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl),
                   (SELECT c.relname FROM pg_class c WHERE c.oid = tbl))))[1]::oid::regtype;
        IF exprtype <> keytype THEN
            RAISE EXCEPTION 'backfill source is of type %, but column "%" is of type %',
                            format_type(exprtype, NULL), col, format_type(keytype, NULL)
                USING ERRCODE = 'datatype_mismatch',
                      HINT = format('Cast it: (%s)::%s.', source, format_type(keytype, NULL));
        END IF;
        val := tenancy.backfill_value_sql(tbl, kind, src);
    ELSE
        kind := 'tenant';
        IF tenant IS NULL AND tenancy.implicit_tenant() IS NULL THEN
            RAISE EXCEPTION 'no tenant source given and no implicit tenant is set'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Pass tenant =>, source => or via =>, or call tenancy.set_implicit_tenant().';
        END IF;
        src := tenancy.tenant_key(coalesce(tenant, tenancy.implicit_tenant()));
        val := tenancy.backfill_value_sql(tbl, kind, src);
    END IF;

    -- Filling a column of a unique index changes a key: row locks become
    -- FOR UPDATE, which blocks foreign-key checks of inserts into children.
    IF EXISTS (SELECT FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
                WHERE x.indrelid = tbl AND x.indisunique AND a.attname = col) THEN
        RAISE WARNING 'column "%" of "%" is part of a unique index', col, tbl
            USING DETAIL = 'Filling it locks each row FOR UPDATE instead of FOR NO KEY UPDATE, which blocks inserts into tables referencing it until each batch commits.',
                  HINT = 'Create unique indexes that include the tenant column after the backfill.';
    END IF;
    job_id := tenancy.backfill_job_insert(tbl, col, kind, src, val, caller_search_path, coalesce(options, '{}'));
    PERFORM tenancy.tables_register(tbl, col, replace(kind, '_', ' ') || ' ' || src);
    RETURN job_id;
END
$$;

-- The user triggers the batches' UPDATE of column col fires, as
-- "name (BEFORE UPDATE FOR EACH ROW)", comma-separated (NULL when none):
-- those enabled for session_replication_role origin, or with replica, those
-- that fire even so (ENABLE ALWAYS, ENABLE REPLICA).  The table and, when
-- partitioned, its partitions (a trigger cloned onto them counts once).
CREATE FUNCTION tenancy.backfill_user_triggers(tbl regclass, col name, replica boolean DEFAULT false)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(DISTINCT format('%s (%s %s FOR EACH %s)', quote_ident(g.tgname),
                          CASE WHEN g.tgtype & 2 <> 0 THEN 'BEFORE' WHEN g.tgtype & 64 <> 0 THEN 'INSTEAD OF' ELSE 'AFTER' END,
                          concat_ws(' OR ', CASE WHEN g.tgtype & 4 <> 0 THEN 'INSERT' END,
                                            CASE WHEN g.tgtype & 16 <> 0 THEN 'UPDATE' END,
                                            CASE WHEN g.tgtype & 8 <> 0 THEN 'DELETE' END),
                          CASE WHEN g.tgtype & 1 <> 0 THEN 'ROW' ELSE 'STATEMENT' END), ', ')
      FROM (SELECT tbl::oid AS relid UNION SELECT p.relid FROM pg_partition_tree(tbl) p) pt
      JOIN pg_trigger g ON g.tgrelid = pt.relid
     WHERE NOT g.tgisinternal AND g.tgtype & 16 <> 0
       AND g.tgenabled = ANY (CASE WHEN replica THEN ARRAY['A', 'R'] ELSE ARRAY['O', 'A'] END::"char"[])
       -- UPDATE OF other columns: the batches name only col and the
       -- columns of no UPDATE OF trigger
       AND (g.tgattr = '' OR EXISTS (SELECT FROM pg_attribute a
                                      WHERE a.attrelid = g.tgrelid AND a.attname = col AND a.attnum = ANY (g.tgattr)))
$$;
COMMENT ON FUNCTION tenancy.backfill_user_triggers(regclass, name, boolean)
    IS 'user triggers a backfill batch fires, with replica: those that fire under session_replication_role replica too';

-- user_triggers => false: refuse unless the caller may set
-- session_replication_role, and when a foreign key includes the tenant
-- column (replica mode skips the referential checks too).
CREATE FUNCTION tenancy.backfill_check_no_triggers(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fk record;
BEGIN
    IF NOT has_parameter_privilege('session_replication_role', 'SET') THEN
        RAISE EXCEPTION 'permission denied to backfill "%" with user_triggers => false', tbl
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('The batches leave user triggers unfired with session_replication_role = replica, which role "%s" may not set.', current_user),
                  HINT = 'GRANT SET ON PARAMETER session_replication_role TO the role that runs the backfill, or run it with user_triggers => true.';
    END IF;
    SELECT c.conname, c.conrelid::regclass AS rel INTO fk
      FROM pg_constraint c
      JOIN (SELECT tbl::oid AS relid UNION SELECT p.relid FROM pg_partition_tree(tbl) p) pt
        ON pt.relid IN (c.conrelid, c.confrelid)
      JOIN pg_attribute a ON a.attrelid = pt.relid AND a.attname = col
     WHERE c.contype = 'f'
       AND a.attnum = ANY (CASE WHEN c.conrelid = pt.relid THEN c.conkey ELSE c.confkey END)
     ORDER BY c.conrelid::regclass::text, c.conname
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot backfill "%" with user_triggers => false: foreign key % of % includes column %',
                        tbl, quote_ident(fk.conname), fk.rel, quote_ident(col)
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'session_replication_role = replica skips the referential checks of foreign keys too, and these check the tenant values the backfill writes.',
                  HINT = 'Run the backfill with user_triggers => true, or before making the foreign key tenant-scoped.';
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.backfill_check_no_triggers(regclass, name)
    IS 'refuse user_triggers => false without SET on session_replication_role or when a foreign key includes the tenant column';

-- Options of backfill() and queue_backfill() as a json object (nulls dropped).
CREATE FUNCTION tenancy.backfill_options(batch_size integer, min_batch_size integer, max_batch_size integer,
                                         target_batch_time interval, lock_timeout interval,
                                         statement_timeout interval, pause interval, max_runtime interval,
                                         max_replication_lag interval, progress_interval interval,
                                         max_retries integer, compact_indexes boolean)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o jsonb := jsonb_strip_nulls(jsonb_build_object(
        'batch_size', batch_size, 'min_batch_size', min_batch_size, 'max_batch_size', max_batch_size,
        'target_ms', ceil(extract(epoch FROM target_batch_time) * 1000)::bigint,
        'lock_timeout_ms', ceil(extract(epoch FROM lock_timeout) * 1000)::bigint,
        'statement_timeout_ms', ceil(extract(epoch FROM statement_timeout) * 1000)::bigint,
        'pause_ms', ceil(extract(epoch FROM pause) * 1000)::bigint,
        'max_runtime_s', ceil(extract(epoch FROM max_runtime))::bigint,
        'max_lag_ms', ceil(extract(epoch FROM max_replication_lag) * 1000)::bigint,
        'progress_s', round(extract(epoch FROM progress_interval), 3),
        'max_retries', max_retries, 'compact_indexes', compact_indexes));
    k text;
BEGIN
    FOR k IN SELECT jsonb_object_keys(o) LOOP
        CONTINUE WHEN k = 'compact_indexes';
        IF (o ->> k)::numeric < 0 OR (k IN ('batch_size', 'min_batch_size', 'max_batch_size', 'target_ms')
                                      AND (o ->> k)::numeric <= 0) THEN
            RAISE EXCEPTION 'backfill option % must be positive', k USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    RETURN o;
END
$$;

CREATE FUNCTION tenancy.queue_backfill(tbl regclass, tenant text DEFAULT NULL, source text DEFAULT NULL,
                                       via name DEFAULT NULL, column_name name DEFAULT NULL,
                                       batch_size integer DEFAULT NULL, min_batch_size integer DEFAULT NULL,
                                       max_batch_size integer DEFAULT NULL, target_batch_time interval DEFAULT NULL,
                                       lock_timeout interval DEFAULT NULL, statement_timeout interval DEFAULT NULL,
                                       pause interval DEFAULT NULL,
                                       max_replication_lag interval DEFAULT NULL, max_retries integer DEFAULT NULL,
                                       compact_indexes boolean DEFAULT NULL, user_triggers boolean DEFAULT NULL)
RETURNS bigint
-- No SET clause: the job keeps the caller's search_path for its source.
LANGUAGE sql AS $$
    SELECT tenancy.backfill_job(tbl, column_name, tenant, source, via,
        tenancy.backfill_options(batch_size, min_batch_size, max_batch_size, target_batch_time, lock_timeout,
                                 statement_timeout, pause, NULL, max_replication_lag, NULL, max_retries,
                                 compact_indexes)
            OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('user_triggers', user_triggers)),
        pg_catalog.current_setting('search_path'));
$$;
COMMENT ON FUNCTION tenancy.queue_backfill(regclass, text, text, name, name, integer, integer, integer, interval, interval, interval, interval, interval, integer, boolean, boolean)
    IS 'record a backfill job (state queued) for the background worker or a later CALL tenancy.backfill(tbl); returns its id';

-- The statements of a job's batches, from the job row and the catalog
-- (the table's indexes, triggers and column privileges as they are now).
-- Pure: it only builds text; backfill() runs them through table_query() /
-- table_exec() as the job's creator.  sp_set applies the job's
-- search_path to the source; setv is the SET list.
CREATE TYPE tenancy.backfill_statements AS (
    setv text, sp_set text, sql_hi_first text, sql_hi text, sql_up_first text,
    sql_up text, sql_tid text, sql_sweep text, sql_find text);
CREATE FUNCTION tenancy.backfill_batch_sql(job tenancy.backfill_jobs) RETURNS tenancy.backfill_statements
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    setv         text;
    sp_set       text;
    sql_hi_first text;
    sql_hi       text;
    sql_up_first text;
    sql_up       text;
    sql_tid      text;
    sql_sweep    text;
    sql_find     text;
    tbl       regclass := job.relation;
    qtbl      text;               -- the table, always schema-qualified
    is_parted boolean;
    kcols     text;
    rowk      text;
    lo_e      text;
    hi_e      text;
    ktext     text;
    keytypes  text[];
    gt        text;
    le        text;
BEGIN
    SELECT pg_catalog.format('%I.%I', ns.nspname, c.relname), c.relkind = 'p'
      INTO qtbl, is_parted
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
     WHERE c.oid = tbl;
    -- The SET list.  Unless compact_indexes is on, it also names the columns
    -- of the table's non-unique indexes, as "col = t.col": no value and no
    -- lock strength changes (both are decided on the values), but btree then
    -- knows these indexes were not "unchanged by the update" and skips its
    -- bottom-up deletion passes.  Those passes remove the index entries of
    -- rows earlier batches moved (dead once committed) and so keep the
    -- indexes compact, at a high price on indexes in random order; a single
    -- UPDATE never pays it, since its own old versions are not dead yet.
    -- Columns of unique indexes, generated columns, columns named by UPDATE
    -- OF triggers and columns the caller may not update are never named.
    -- The value goes through tenancy.wal_flush_behind(), which keeps the
    -- batch's WAL flushed behind it (src/backfill_wal.c).
    -- The batches that write the value run the job's search_path, for the
    -- user's expression (every other name in them is qualified).
    sp_set := pg_catalog.format('SELECT pg_catalog.set_config(%L, %L, true); ', 'search_path', job.search_path);
    setv := pg_catalog.format('%I = tenancy.wal_flush_behind(%s)', job.column_name, job.value_sql);
    IF NOT coalesce((job.options->>'compact_indexes')::boolean, false) THEN
        setv := setv || coalesce((
            SELECT string_agg(pg_catalog.format(', %I = t.%I', a.attname, a.attname), '' ORDER BY a.attnum)
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
               AND a.attname <> job.column_name
               AND EXISTS (SELECT FROM pg_catalog.pg_index x
                            WHERE x.indrelid = tbl AND NOT x.indisunique AND a.attnum = ANY (x.indkey))
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_index x
                                WHERE x.indrelid = tbl AND x.indisunique AND a.attnum = ANY (x.indkey))
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger g
                                WHERE g.tgrelid = tbl AND NOT g.tgisinternal AND a.attnum = ANY (g.tgattr))
               AND pg_catalog.has_column_privilege(tbl, a.attnum, 'UPDATE')), '');
    END IF;

    -- The statements of a batch.  The row is aliased t; keys travel as text
    -- arrays cast back to the key types, so composite keys need nothing else.
    IF job.method = 'primary key' THEN
        SELECT array_agg(tenancy.type_sql(a.atttypid) ORDER BY k.i),
               -- Built-in key types: their built-in comparison operators.
               CASE WHEN bool_and(ty.typnamespace = 'pg_catalog'::regnamespace) THEN 'OPERATOR(pg_catalog.>)' ELSE '>' END,
               CASE WHEN bool_and(ty.typnamespace = 'pg_catalog'::regnamespace) THEN 'OPERATOR(pg_catalog.<=)' ELSE '<=' END
          INTO keytypes, gt, le
          FROM unnest(job.key_columns) WITH ORDINALITY AS k(name, i)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = tbl AND a.attname = k.name
          JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid;
        SELECT string_agg(pg_catalog.format('t.%I', k), ', ' ORDER BY i),
               string_agg(pg_catalog.format('$1[%s]::%s', i, keytypes[i]), ', ' ORDER BY i),
               string_agg(pg_catalog.format('$2[%s]::%s', i, keytypes[i]), ', ' ORDER BY i),
               string_agg(pg_catalog.format('t.%I::pg_catalog.text', k), ', ' ORDER BY i)
          INTO kcols, lo_e, hi_e, ktext
          FROM unnest(job.key_columns) WITH ORDINALITY AS u(k, i);
        rowk := '(' || kcols || ')';
        lo_e := '(' || lo_e || ')';
        hi_e := '(' || hi_e || ')';
        sql_hi := pg_catalog.format('SELECT ARRAY[%s] FROM %s%s t WHERE %s %s %s AND %s %s %s ORDER BY %s OFFSET $3 LIMIT 1',
                                    ktext, CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, rowk, gt, lo_e, rowk, le, hi_e, kcols);
        sql_hi_first := pg_catalog.format('SELECT ARRAY[%s] FROM %s%s t WHERE %s %s %s ORDER BY %s OFFSET $3 LIMIT 1',
                                          ktext, CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, rowk, le, hi_e, kcols);
        sql_up := pg_catalog.format('UPDATE %s%s AS t SET %s WHERE %s %s %s AND %s %s %s AND t.%I IS NULL',
                                    CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, setv,
                                    rowk, gt, lo_e, rowk, le, hi_e, job.column_name);
        sql_up_first := pg_catalog.format('UPDATE %s%s AS t SET %s WHERE %s %s %s AND t.%I IS NULL',
                                          CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, setv,
                                          rowk, le, hi_e, job.column_name);
        sql_find := pg_catalog.format('SELECT pg_catalog.format(%L, %s) FROM %s%s t WHERE t.%I IS NULL LIMIT 1',
                                      '(' || (SELECT string_agg(pg_catalog.quote_ident(k), ', ') FROM unnest(job.key_columns) k) || ')=('
                                          || pg_catalog.repeat('%s, ', cardinality(job.key_columns) - 1) || '%s)',
                                      kcols, CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, job.column_name);
    ELSE
        sql_find := pg_catalog.format('SELECT pg_catalog.format(''ctid %%s'', t.ctid) FROM ONLY %s t WHERE t.%I IS NULL LIMIT 1',
                                      qtbl, job.column_name);
    END IF;
    -- Block ranges (tables without a primary key, and the sweep).
    sql_tid := pg_catalog.format('UPDATE ONLY %s AS t SET %s WHERE t.ctid OPERATOR(pg_catalog.>=) $1 AND t.ctid OPERATOR(pg_catalog.<) $2 AND t.%I IS NULL',
                                 qtbl, setv, job.column_name);
    -- The sweep of a partitioned table: NULLs found by a scan, updated by TID.
    sql_sweep := pg_catalog.format(
        'WITH c AS MATERIALIZED (SELECT s.tableoid AS r, s.ctid AS c FROM %s s WHERE s.%I IS NULL LIMIT $1), '
        'u AS (UPDATE %s AS t SET %s WHERE (t.tableoid, t.ctid) OPERATOR(pg_catalog.=) ANY (SELECT c.r, c.c FROM c) AND t.%I IS NULL RETURNING 1) '
        'SELECT (SELECT pg_catalog.count(*) FROM c), (SELECT pg_catalog.count(*) FROM u)',
        qtbl, job.column_name, qtbl, setv, job.column_name);
    RETURN ROW(setv, sp_set, sql_hi_first, sql_hi, sql_up_first, sql_up, sql_tid, sql_sweep, sql_find)::tenancy.backfill_statements;
END
$$;

-- Rows per heap block, for the block ranges of a batch (100 before the
-- first ANALYZE).
CREATE FUNCTION tenancy.backfill_rows_per_block(tbl regclass) RETURNS numeric
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN (c.reltuples / c.relpages)::numeric ELSE 100 END
      FROM pg_catalog.pg_class c WHERE c.oid = tbl;
$$;

-- The size of the next batch and the wait before it, from the outcome of
-- the last one (ok, retry, timeout, error).  ok: adapt to the target
-- duration: smoothed per-row cost, growth at most 1.2x a step, halving
-- after a batch over twice the target (a sweep may grow to 10x the
-- maximum).  retry (lock timeout, deadlock) and timeout: back off with
-- jitter, halving the batch after every third failure in a row (at once
-- after a statement timeout).  error: halve, to narrow down to the
-- failing row.
CREATE FUNCTION tenancy.backfill_next_size(outcome text, batch integer, min_batch integer, max_batch integer,
                                           batch_ms numeric, target_ms numeric, per_row numeric,
                                           failures integer, sweep boolean,
                                           OUT next_batch integer, OUT next_per_row numeric, OUT sleep interval)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    next_batch := batch;
    next_per_row := per_row;
    IF outcome = 'ok' THEN
        next_per_row := CASE WHEN per_row IS NULL THEN batch_ms / batch ELSE 0.7 * per_row + 0.3 * batch_ms / batch END;
        IF batch_ms > 2 * target_ms THEN
            next_batch := greatest(batch / 2, min_batch);
        ELSE
            next_batch := least(ceil(batch * 1.2)::bigint,
                                greatest(floor(target_ms / greatest(next_per_row, 0.00001))::bigint, batch / 2))::integer;
            next_batch := least(greatest(next_batch, min_batch), CASE WHEN sweep THEN 10 * max_batch ELSE max_batch END);
        END IF;
    ELSIF outcome IN ('retry', 'timeout') THEN
        IF outcome = 'timeout' OR failures % 3 = 0 THEN
            next_batch := greatest(batch / 2, 1);
        END IF;
        sleep := tenancy.backoff_delay(failures, '20ms', '5s');
    ELSIF outcome = 'error' THEN
        next_batch := greatest(batch / 2, 1);
    END IF;
END
$$;

-- The first run of a job: choose the method (the primary key, else block
-- ranges), estimate the rows, freeze the upper bound, or find nothing NULL
-- (phase done at once); recorded with the job, and returned.  tname is the
-- table as the caller names it, for the error.
CREATE FUNCTION tenancy.backfill_first_run(job tenancy.backfill_jobs, tname text) RETURNS tenancy.backfill_jobs
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    tbl        regclass := job.relation;
    qtbl       text;               -- the table, always schema-qualified
    is_parted  boolean;
    last_batch boolean;
BEGIN
    SELECT pg_catalog.format('%I.%I', ns.nspname, c.relname), c.relkind = 'p'
      INTO qtbl, is_parted
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
     WHERE c.oid = tbl;
    SELECT array_agg(a.attname ORDER BY k.i) INTO job.key_columns
      FROM pg_catalog.pg_index x
      CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
      JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
     WHERE x.indrelid = tbl AND x.indisprimary;
    job.method := CASE WHEN job.key_columns IS NULL THEN 'ctid' ELSE 'primary key' END;
    IF job.method = 'ctid' AND is_parted THEN
        RAISE EXCEPTION 'partitioned table "%" has no primary key', tname
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Backfill each partition on its own, or add a primary key.';
    END IF;
    SELECT sum(greatest(c.reltuples, 0))::bigint INTO job.rows_total
      FROM pg_catalog.pg_partition_tree(tbl) pt JOIN pg_catalog.pg_class c ON c.oid = pt.relid
     WHERE pt.isleaf;
    IF coalesce(job.rows_total, 0) = 0 OR pg_catalog.pg_total_relation_size(tbl) < 64 * 1024 * 1024 THEN
        job.rows_total := (tenancy.table_query(tbl, job.created_by,
            pg_catalog.format('SELECT pg_catalog.count(*) FROM %s%s', CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl)))[1]::bigint;
    END IF;
    -- Nothing NULL (a second run): done at once, after one scan.
    last_batch := (tenancy.table_query(tbl, job.created_by,
        pg_catalog.format('SELECT NOT EXISTS (SELECT FROM %s%s t WHERE t.%I IS NULL)',
                          CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, job.column_name)))[1]::boolean;
    IF last_batch THEN
        job.phase := 'done';
    ELSIF job.method = 'primary key' THEN
        job.upper_bound := (tenancy.table_query(tbl, job.created_by,
            pg_catalog.format('SELECT ARRAY[%s] FROM %s%s t ORDER BY %s DESC LIMIT 1',
                (SELECT string_agg(pg_catalog.format('t.%I::pg_catalog.text', k), ', ') FROM unnest(job.key_columns) k),
                CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl,
                (SELECT string_agg(pg_catalog.format('t.%I', k), ' DESC, ') FROM unnest(job.key_columns) k))))[1]::text[];
        job.phase := 'batches';
    ELSE
        job.upper_bound := ARRAY[(pg_catalog.pg_relation_size(tbl) / pg_catalog.current_setting('block_size')::bigint)::text];
        job.cursor := ARRAY['0'];
        job.phase := 'batches';
    END IF;
    PERFORM tenancy.backfill_job_update(job.id, jsonb_build_object(
        'method', job.method, 'key_columns', job.key_columns, 'upper_bound', job.upper_bound,
        'cursor', job.cursor, 'phase', job.phase, 'rows_total', job.rows_total));
    RETURN job;
END
$$;

-- One batch of a job: the statements of b on the rows after lo (up to ub),
-- n keys or rows, as the job's creator (src/as_owner.c), under the batch's
-- lock_timeout and statement timeout.  The outcome is ok, retry (lock
-- timeout, deadlock), timeout (statement timeout), cancel or error (from
-- the data), with the error's SQLSTATE, message and detail.  hi (the
-- failing batch's upper key, for the error) and err_detail keep the
-- caller's values where the batch did not get to set them.  A function,
-- so no COMMIT: backfill() commits after it.
CREATE FUNCTION tenancy.backfill_run_batch(job tenancy.backfill_jobs, b tenancy.backfill_statements,
    lo text[], ub text[], n integer, rows_per_block numeric, is_parted boolean,
    lt_ms integer, st_ms integer, no_triggers boolean, orig_srr text, appname text,
    INOUT hi text[], INOUT err_detail text, OUT last_batch boolean, OUT updated bigint, OUT found_rows bigint,
    OUT err_state text, OUT err_msg text, OUT outcome text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
-- plpgsql_check: err_detail is passed through unread: it keeps the caller's value unless an error sets it
DECLARE
    r text[];
BEGIN
    outcome := 'ok';
    BEGIN
        PERFORM pg_catalog.set_config('lock_timeout', lt_ms::text, true),
                pg_catalog.set_config('application_name', pg_catalog.left(pg_catalog.format('%s %s', appname,
                    CASE WHEN job.phase = 'sweep' THEN 'sweep'
                         ELSE round(100.0 * least(job.rows_scanned, job.rows_total) / greatest(job.rows_total, 1)) || '%' END), 63), false),
                tenancy.batch_timeout(CASE WHEN job.phase = 'sweep' AND is_parted THEN 0 ELSE st_ms END);
        -- user_triggers => false: this batch only (local to its
        -- subtransaction, set back after it); other sessions' writes
        -- fire their triggers as ever.
        IF no_triggers THEN
            PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        END IF;
        -- Each statement on the table runs as the job's creator, or as the
        -- table's owner when the creator has its privileges, under
        -- SECURITY_RESTRICTED_OPERATION (src/as_owner.c).
        IF job.phase = 'batches' AND job.method = 'primary key' THEN
            hi := (tenancy.table_query(job.relation, job.created_by, CASE WHEN lo IS NULL THEN b.sql_hi_first ELSE b.sql_hi END,
                                       lo, ub, n - 1))[1]::text[];
            last_batch := hi IS NULL;
            hi := coalesce(hi, ub);
            updated := tenancy.table_exec(job.relation, job.created_by,
                                          b.sp_set || CASE WHEN lo IS NULL THEN b.sql_up_first ELSE b.sql_up END, lo, hi);
        ELSIF is_parted THEN
            r := tenancy.table_query(job.relation, job.created_by, b.sp_set || b.sql_sweep, n);
            found_rows := r[1]::bigint;
            updated := r[2]::bigint;
            last_batch := found_rows = 0;
        ELSE
            hi := ARRAY[least(lo[1]::bigint + pg_catalog.ceil(n / rows_per_block)::bigint, ub[1]::bigint)::text];
            last_batch := hi[1]::bigint >= ub[1]::bigint;
            updated := tenancy.table_exec(job.relation, job.created_by, b.sp_set || b.sql_tid,
                                          pg_catalog.format('(%s,0)', lo[1])::tid, pg_catalog.format('(%s,0)', hi[1])::tid);
        END IF;
        IF no_triggers THEN
            PERFORM pg_catalog.set_config('session_replication_role', orig_srr, true);
        END IF;
        PERFORM tenancy.batch_timeout(0);
    EXCEPTION
        WHEN lock_not_available OR deadlock_detected THEN
            PERFORM tenancy.batch_timeout(0);
            outcome := 'retry';
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT;
        WHEN query_canceled THEN
            PERFORM tenancy.batch_timeout(0);
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT;
            outcome := CASE WHEN err_msg LIKE '%statement timeout%' THEN 'timeout' ELSE 'cancel' END;
        WHEN OTHERS THEN
            PERFORM tenancy.batch_timeout(0);
            outcome := 'error';
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                                    err_detail = PG_EXCEPTION_DETAIL;
    END;
END
$$;

-- The row a batch narrowed down to one failed on, for the error: its key
-- (hi, the batch's upper key), or the first row still NULL as the job's
-- creator finds it (NULL when that fails too).
CREATE FUNCTION tenancy.backfill_failing_row(job tenancy.backfill_jobs, b tenancy.backfill_statements, hi text[])
RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    failing text;
BEGIN
    IF job.phase = 'batches' AND job.method = 'primary key' THEN
        SELECT '(' || string_agg(pg_catalog.quote_ident(k), ', ') || ')=(' || pg_catalog.array_to_string(hi, ', ') || ')'
          INTO failing FROM unnest(job.key_columns) k;
    ELSE
        BEGIN
            failing := (tenancy.table_query(job.relation, job.created_by, b.sql_find))[1];
        EXCEPTION WHEN OTHERS THEN
            failing := NULL;
        END;
    END IF;
    RETURN failing;
END
$$;

-- The engine.  A procedure that commits after each batch: it cannot carry
-- SET clauses or SECURITY DEFINER, so every name in it is qualified, and it
-- runs as its caller (who needs UPDATE on the table).
--
-- Phases: 'batches' walks the primary key (keyset, upper bound frozen at
-- the start) or, without one, block ranges up to the size at the start;
-- 'sweep' then walks block ranges over the whole table for NULLs left
-- behind (rows moved or written with an explicit NULL during the run),
-- and repeats while a sweep still found some (at most 3 sweeps).
CREATE PROCEDURE tenancy.backfill(
    tbl regclass,
    tenant text DEFAULT NULL,
    source text DEFAULT NULL,
    via name DEFAULT NULL,
    column_name name DEFAULT NULL,
    batch_size integer DEFAULT NULL,
    min_batch_size integer DEFAULT NULL,
    max_batch_size integer DEFAULT NULL,
    target_batch_time interval DEFAULT NULL,
    lock_timeout interval DEFAULT NULL,
    statement_timeout interval DEFAULT NULL,
    pause interval DEFAULT NULL,
    max_runtime interval DEFAULT NULL,
    max_replication_lag interval DEFAULT NULL,
    progress_interval interval DEFAULT NULL,
    max_retries integer DEFAULT NULL,
    compact_indexes boolean DEFAULT NULL,
    user_triggers boolean DEFAULT NULL)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    job_id      bigint;
    job         tenancy.backfill_jobs;
    o           jsonb;
    qtbl        text;               -- the table, always schema-qualified
    is_parted   boolean;
    n           integer;            -- rows in the next batch
    nmin        integer;
    nmax        integer;
    target_ms   numeric;
    lt_ms       integer;
    st_ms       integer;
    pause_s     numeric;
    max_run_s   numeric;
    max_lag     interval;
    progress_s  numeric;
    retry_limit integer;
    b           tenancy.backfill_statements;
    res         record;             -- the outcome of a batch (backfill_run_batch)
    lo          text[];
    hi          text[];
    ub          text[];
    last_batch  boolean;
    updated     bigint;
    found_rows  bigint;
    t_start     timestamptz := pg_catalog.clock_timestamp();
    t0          timestamptz;
    ms          numeric;
    per_row     numeric;
    run_rows    bigint := 0::bigint;
    run_scanned bigint := 0::bigint;
    v_rate      numeric;
    v_eta       interval;
    next_notice timestamptz;
    failures    integer := 0;
    backoff     interval;           -- the wait before the next retry
    outcome     text;
    err_state   text;
    err_msg     text;
    err_detail  text;
    failing     text;
    rows_per_block numeric;
    lag         interval;
    appname     text;
    orig_appname text := pg_catalog.current_setting('application_name');
    sweeps      integer := 0;
    sweep_rows  bigint := 0::bigint;
    quiet_sweeps integer := 0;
    wal_per_row numeric;                -- WAL bytes per row of the last batch
    lsn0        pg_lsn;
    caller_sp   text := pg_catalog.current_setting('search_path');
    tname       text := tbl::text;      -- the table as the caller names it, for messages
    no_triggers boolean;                -- user_triggers => false: batches under session_replication_role replica
    orig_srr    text := pg_catalog.current_setting('session_replication_role');
    firing      text;
    total_revised boolean := false;     -- the scan passed rows_total, which grew with it
BEGIN
    -- No SET clause is possible (it commits): the search_path is pinned
    -- here and again after each COMMIT.  The caller's is recorded with a
    -- new job and applied only to the job's source expression.
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'tenancy.backfill() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  DETAIL = 'It commits after each batch, so that no lock is held for long and an interrupted run resumes after its last batch.',
                  HINT = 'Run CALL tenancy.backfill(...) on its own, outside BEGIN ... COMMIT, or queue it with tenancy.queue_backfill().';
    END IF;
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tbl must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Called where it cannot commit (from a function, or inside an
    -- exception block): fail here, before taking anything.
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF NOT tenancy.backfill_try_lock(tbl) THEN
        RAISE EXCEPTION 'a backfill of "%" is already running', tname
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it to finish, or stop it (pg_cancel_backend) and CALL again to resume; tenancy.backfill_progress shows it.';
    END IF;
    job_id := tenancy.backfill_job(tbl, column_name, tenant, source, via,
                  tenancy.backfill_options(batch_size, min_batch_size, max_batch_size, target_batch_time,
                      lock_timeout, statement_timeout, pause, NULL, max_replication_lag, progress_interval,
                      max_retries, compact_indexes)
                      OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('user_triggers', user_triggers)),
                  caller_sp);
    SELECT * INTO job FROM tenancy.backfill_jobs j WHERE j.id = job_id;
    -- The value is built again from the job's source (never taken from its
    -- row), before anything changes: a foreign key dropped since is an error.
    job.value_sql := tenancy.backfill_value_sql(tbl, job.source_kind, job.source);
    o := job.options;
    n := coalesce((o->>'batch_size')::integer, 1000);
    nmin := coalesce((o->>'min_batch_size')::integer, least(100, n));
    nmax := coalesce((o->>'max_batch_size')::integer, greatest(100000, n));
    target_ms := coalesce((o->>'target_ms')::numeric, 200);
    lt_ms := coalesce((o->>'lock_timeout_ms')::numeric, 250)::integer;
    st_ms := coalesce((o->>'statement_timeout_ms')::numeric, 5000)::integer;
    pause_s := coalesce((o->>'pause_ms')::numeric, 0) / 1000;
    max_run_s := extract(epoch FROM max_runtime);   -- per CALL, not kept with the job
    max_lag := ((o->>'max_lag_ms') || ' ms')::interval;
    -- pg_stat_replication shows the lag columns as NULL to other roles: the
    -- hold would never happen.  Refuse rather than run unthrottled.
    IF max_lag IS NOT NULL AND NOT pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE') THEN
        PERFORM tenancy.backfill_unlock(tbl);
        RAISE EXCEPTION 'max_replication_lag needs the privileges of pg_read_all_stats'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.format('Role "%s" sees the lag columns of pg_stat_replication as NULL, so the backfill could not hold while a standby lags.', current_user),
                  HINT = 'GRANT pg_read_all_stats TO the role that runs the backfill, or CALL it without max_replication_lag.';
    END IF;
    -- A resumed job keeps its user_triggers: checked again as this caller,
    -- and against the foreign keys the table has now.
    no_triggers := NOT coalesce((o->>'user_triggers')::boolean, true);
    IF no_triggers THEN
        BEGIN
            PERFORM tenancy.backfill_check_no_triggers(tbl, job.column_name);
        EXCEPTION WHEN OTHERS THEN
            PERFORM tenancy.backfill_unlock(tbl);
            RAISE;
        END;
    END IF;
    progress_s := coalesce((o->>'progress_s')::numeric, 5);
    retry_limit := coalesce((o->>'max_retries')::integer, 30);
    next_notice := t_start + pg_catalog.make_interval(secs => progress_s::double precision);
    n := least(n, nmax);
    -- The session's statement_timeout would cut the whole run: each batch
    -- gets its own instead, and max_runtime bounds the run.
    PERFORM tenancy.batch_timeout(0);

    SELECT pg_catalog.format('%I.%I', ns.nspname, c.relname), c.relkind = 'p'
      INTO qtbl, is_parted
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
     WHERE c.oid = tbl;
    IF job.method IS NULL THEN
        job := tenancy.backfill_first_run(job, tname);
    END IF;
    PERFORM tenancy.backfill_job_update(job_id, jsonb_build_object(
        'state', 'running', 'pid', pg_catalog.pg_backend_pid(), 'started_at', coalesce(job.started_at, pg_catalog.now()),
        'throttle', NULL, 'last_error', NULL, 'batch_size', n, 'updated_at', pg_catalog.now()));
    PERFORM tenancy.tables_set_stage(tbl, 'backfill', 'expand');
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    b := tenancy.backfill_batch_sql(job);
    rows_per_block := tenancy.backfill_rows_per_block(tbl);
    PERFORM tenancy.backfill_job_update(job_id, jsonb_build_object('value_sql', job.value_sql,
        'batch_sql', CASE WHEN job.method = 'primary key' THEN b.sql_up ELSE b.sql_tid END));
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    -- The user triggers the batches fire (an audit trigger rewriting a
    -- column on every row, say): named before the first batch.
    IF job.phase <> 'done' THEN
        firing := tenancy.backfill_user_triggers(tbl, job.column_name, no_triggers);
        IF firing IS NOT NULL AND NOT no_triggers THEN
            RAISE NOTICE 'backfill of %: each batch fires user triggers %', tname, firing
                USING HINT = 'Pass user_triggers => false to leave them unfired for the backfill''s own batches (needs SET on session_replication_role).';
        ELSIF firing IS NOT NULL THEN
            RAISE NOTICE 'backfill of %: user_triggers => false, but triggers % fire under session_replication_role replica too', tname, firing;
        END IF;
    END IF;
    -- pg_stat_activity shows the table and the progress in application_name.
    appname := 'tenancy.backfill ' || qtbl;
    lo := job.cursor;
    ub := job.upper_bound;

    LOOP
        EXIT WHEN job.phase = 'done';
        -- Stop at max_runtime: the job is paused and the next CALL resumes it.
        IF max_run_s IS NOT NULL AND pg_catalog.clock_timestamp() - t_start >= pg_catalog.make_interval(secs => max_run_s::double precision) THEN
            PERFORM tenancy.backfill_job_update(job_id, jsonb_build_object('state', 'paused', 'pid', NULL,
                'throttle', 'max_runtime reached', 'updated_at', pg_catalog.now()));
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            PERFORM tenancy.backfill_unlock(tbl);
            PERFORM pg_catalog.set_config('application_name', orig_appname, false);
            RAISE NOTICE 'backfill of % paused at max_runtime after % rows; CALL tenancy.backfill(%) again to resume',
                tname, job.rows_done, pg_catalog.quote_literal(tname);
            RETURN;
        END IF;
        -- Hold while a standby replays too far behind.
        IF max_lag IS NOT NULL THEN
            lag := (SELECT max(r.replay_lag) FROM pg_catalog.pg_stat_replication r);
            IF lag > max_lag THEN
                PERFORM tenancy.backfill_job_update(job_id, jsonb_build_object(
                    'throttle', pg_catalog.format('replication lag %s > %s', lag, max_lag), 'updated_at', pg_catalog.now()));
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                PERFORM pg_catalog.pg_sleep(0.5);
                CONTINUE;
            END IF;
        END IF;

        outcome := 'ok';
        -- The WAL segments this batch will fill, created now, outside it.
        IF wal_per_row > 0 THEN
            PERFORM tenancy.preallocate_wal((1.5 * wal_per_row * n)::bigint);
        END IF;
        lsn0 := pg_catalog.pg_current_wal_insert_lsn();
        t0 := pg_catalog.clock_timestamp();
        -- One batch, in a subtransaction: its outcome (ok, retry, timeout,
        -- cancel, error) decides what comes next.
        res := tenancy.backfill_run_batch(job, b, lo, ub, n, rows_per_block, is_parted, lt_ms, st_ms,
                                          no_triggers, orig_srr, appname,
                                          hi, err_detail);
        hi := res.hi;
        last_batch := res.last_batch;
        updated := res.updated;
        found_rows := res.found_rows;
        err_state := res.err_state;
        err_msg := res.err_msg;
        err_detail := res.err_detail;
        outcome := res.outcome;
        ms := extract(epoch FROM pg_catalog.clock_timestamp() - t0) * 1000;

        IF outcome = 'ok' THEN
            failures := 0;
            wal_per_row := pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), lsn0) / greatest(n, 1);
            IF job.phase = 'batches' THEN
                -- A batch before the last covers n keys; the last one at
                -- most n, counted up to the total only.
                run_scanned := run_scanned + n;
                job.rows_scanned := CASE WHEN last_batch
                                         THEN greatest(job.rows_scanned, least(job.rows_scanned + n, job.rows_total))
                                         ELSE job.rows_scanned + n END;
                -- Past the estimate (reltuples, or rows added since the
                -- count): the total grows to the rows scanned.
                IF job.rows_scanned > job.rows_total THEN
                    job.rows_total := job.rows_scanned;
                    total_revised := true;
                END IF;
            ELSE
                sweep_rows := sweep_rows + updated;
                IF is_parted AND found_rows > 0 AND updated = 0 THEN
                    -- Found rows that all moved away meanwhile: look again, a few times.
                    quiet_sweeps := quiet_sweeps + 1;
                    last_batch := quiet_sweeps >= 10;
                END IF;
            END IF;
            IF NOT is_parted OR job.phase = 'batches' THEN
                lo := hi;
            END IF;
            run_rows := run_rows + updated;
            job.rows_done := job.rows_done + updated;
            job.batches := job.batches + 1;
            -- Adapt the batch size to the target duration.
            SELECT s.next_batch, s.next_per_row INTO n, per_row
              FROM tenancy.backfill_next_size(outcome, n, nmin, nmax, ms, target_ms, per_row, failures,
                                              job.phase = 'sweep') s;
            v_rate := run_rows / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - t_start), 0.001);
            v_eta := CASE WHEN job.phase = 'batches' AND run_scanned > 0 THEN
                        pg_catalog.make_interval(secs => (greatest(job.rows_total - job.rows_scanned, 0)
                            * extract(epoch FROM pg_catalog.clock_timestamp() - t_start) / run_scanned)::double precision) END;
            IF last_batch THEN
                -- Next: a sweep over the whole table as it is now; another
                -- one while sweeps still find NULLs; then done.
                IF is_parted THEN
                    job.phase := CASE job.phase WHEN 'batches' THEN 'sweep' ELSE 'done' END;
                ELSIF job.phase = 'sweep' AND (sweep_rows = 0 OR sweeps >= 3) THEN
                    job.phase := 'done';
                ELSE
                    job.phase := 'sweep';
                    sweeps := sweeps + 1;
                    sweep_rows := 0;
                    per_row := NULL;
                    lo := ARRAY['0'];
                    ub := ARRAY[(pg_catalog.pg_relation_size(tbl) / pg_catalog.current_setting('block_size')::bigint)::text];
                    rows_per_block := tenancy.backfill_rows_per_block(tbl);
                END IF;
            END IF;
            job.max_batch_ms := greatest(job.max_batch_ms, round(ms, 1));
            PERFORM tenancy.backfill_job_update(job_id, jsonb_build_object(
                'cursor', lo, 'upper_bound', ub, 'phase', job.phase, 'rows_scanned', job.rows_scanned,
                'rows_total', job.rows_total, 'rows_done', job.rows_done, 'batches', job.batches, 'batch_size', n,
                'last_batch_ms', round(ms, 1), 'max_batch_ms', job.max_batch_ms,
                'rate', round(v_rate), 'eta', date_trunc('second', v_eta),
                'throttle', CASE WHEN pause_s > 0 AND job.phase <> 'done'
                                 THEN pg_catalog.format('pause %s ms between batches', round(pause_s * 1000)) END,
                'updated_at', pg_catalog.now(),
                'state', CASE WHEN job.phase = 'done' THEN 'done' ELSE 'running' END,
                'finished_at', CASE WHEN job.phase = 'done' THEN pg_catalog.now() END,
                'pid', CASE WHEN job.phase = 'done' THEN NULL ELSE pg_catalog.pg_backend_pid() END));
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            RAISE DEBUG 'tenancy.backfill % batch %: % rows updated in % ms', tname, job.batches, updated, round(ms, 1);
            IF pg_catalog.clock_timestamp() >= next_notice AND job.phase <> 'done' THEN
                RAISE NOTICE 'backfill of %: %, % rows updated, % rows/s, ETA %',
                    tname,
                    CASE WHEN total_revised
                         THEN pg_catalog.format('%s rows scanned (past the first estimate)', job.rows_scanned)
                         ELSE pg_catalog.format('%s of ~%s rows (%s %%)', job.rows_scanned, job.rows_total,
                                  round(100.0 * least(job.rows_scanned, job.rows_total) / greatest(job.rows_total, 1), 1)) END,
                    job.rows_done, round(v_rate),
                    coalesce(CASE WHEN NOT total_revised THEN date_trunc('second', v_eta)::text END,
                             CASE WHEN job.phase = 'sweep' THEN 'unknown (sweep)' ELSE 'unknown' END);
                next_notice := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => progress_s::double precision);
            END IF;
            IF pause_s > 0 AND job.phase <> 'done' THEN
                PERFORM pg_catalog.pg_sleep(pause_s);
            END IF;
        ELSIF outcome IN ('retry', 'timeout') THEN
            -- Lock timeout or deadlock: back off with jitter, and halve the
            -- batch after repeats (at once after a statement timeout).
            failures := failures + 1;
            job.retries := job.retries + 1;
            SELECT s.next_batch, s.sleep INTO n, backoff
              FROM tenancy.backfill_next_size(outcome, n, nmin, nmax, ms, target_ms, per_row, failures,
                                              job.phase = 'sweep') s;
            IF failures > retry_limit THEN
                err_msg := pg_catalog.format('backfill of %s gave up after %s retries: %s', tname, retry_limit, err_msg);
                outcome := 'fail';
            ELSE
                PERFORM tenancy.backfill_job_update(job_id, jsonb_build_object(
                    'retries', job.retries, 'batch_size', n, 'updated_at', pg_catalog.now(),
                    'throttle', pg_catalog.format('%s, retry %s', CASE outcome WHEN 'timeout' THEN 'statement timeout'
                                                                              ELSE err_msg END, failures)));
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                PERFORM pg_catalog.pg_sleep_for(backoff);
            END IF;
        ELSIF outcome = 'error' AND n > 1 THEN
            -- An error from the data: narrow the batch down to the failing row.
            n := (tenancy.backfill_next_size(outcome, n, nmin, nmax, ms, target_ms, per_row, failures,
                                             job.phase = 'sweep')).next_batch;
            outcome := 'narrow';
        END IF;

        IF outcome IN ('cancel', 'fail', 'error') THEN
            IF outcome = 'error' THEN
                failing := tenancy.backfill_failing_row(job, b, hi);
                err_msg := pg_catalog.format('backfill of %s failed at row %s: %s', tname, coalesce(failing, '?'), err_msg);
            END IF;
            PERFORM tenancy.backfill_job_update(job_id, jsonb_build_object(
                'state', 'failed', 'pid', NULL, 'last_error', err_msg, 'throttle', NULL, 'batch_size', n,
                'updated_at', pg_catalog.now()));
            -- Restored before the COMMIT: the RAISE below aborts the next transaction.
            PERFORM pg_catalog.set_config('application_name', orig_appname, false);
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            PERFORM tenancy.backfill_unlock(tbl);
            IF err_detail IS NOT NULL AND err_detail <> '' THEN
                RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg, DETAIL = err_detail,
                    HINT = 'Batches before this row are committed. Fix the data or the source, then CALL tenancy.backfill() again to resume.';
            ELSIF outcome = 'error' THEN
                RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
                    HINT = 'Batches before this row are committed. Fix the data or the source, then CALL tenancy.backfill() again to resume.';
            ELSE
                RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
                    HINT = 'CALL tenancy.backfill() again to resume after the last committed batch.';
            END IF;
        END IF;
    END LOOP;

    IF job.batches = 0 THEN
        PERFORM tenancy.backfill_job_update(job_id, jsonb_build_object(
            'state', 'done', 'phase', 'done', 'pid', NULL, 'updated_at', pg_catalog.now(),
            'finished_at', pg_catalog.now()));
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;
    PERFORM tenancy.backfill_unlock(tbl);
    PERFORM pg_catalog.set_config('application_name', orig_appname, false);
    IF job.batches = 0 THEN
        RAISE NOTICE 'backfill of %: no NULL in column %, nothing to do', tname, pg_catalog.quote_ident(job.column_name);
    ELSE
        RAISE NOTICE 'backfill of % done: % rows updated', tname, job.rows_done;
    END IF;
END
$$;
COMMENT ON PROCEDURE tenancy.backfill(regclass, text, text, name, name, integer, integer, integer, interval, interval, interval, interval, interval, interval, interval, integer, boolean, boolean)
    IS 'fill NULL tenant values in committed batches from a tenant, an expression or a foreign key; resumable';
REVOKE EXECUTE ON FUNCTION
    tenancy.queue_backfill(regclass, text, text, name, name, integer, integer, integer, interval, interval, interval, interval, interval, integer, boolean, boolean)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE
    tenancy.backfill(regclass, text, text, name, name, integer, integer, integer, interval, interval, interval, interval, interval, interval, interval, integer, boolean, boolean)
FROM PUBLIC;
