-- src/contract.sql: the contract phase: NOT NULL and tenant-scoped constraints without long locks, contract_log.

------------------------------------------------------------------------------
-- Readiness: the readiness report (tenancy.verify), the contract phase
-- (enforce_not_null, tenant-scoped constraints, contract_log, rollback) and
-- the identity backfill (memberships, personal tenants, set_tenant_as).
-- Everything here is plain SQL; it reads the objects of the RLS feature
-- (policy tenancy_policy, tenancy.shadow_stats, enable_rls/disable_rls/
-- set_mode) and of the backfill feature (backfill, add_tenant_column) by
-- name from the catalog, and degrades when they are absent.
------------------------------------------------------------------------------

-- Every step of the contract phase, with the SQL that undoes it.
CREATE TABLE tenancy.contract_log (
    id         bigserial PRIMARY KEY,
    relation   regclass NOT NULL,
    step       text NOT NULL,
    sql        text NOT NULL,
    undo_sql   text,
    done_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    undone_at  timestamptz
);
CREATE INDEX contract_log_relation ON tenancy.contract_log (relation, id);
COMMENT ON TABLE tenancy.contract_log IS 'contract-phase steps: what ran, when, and the SQL that undoes it';
SELECT pg_catalog.pg_extension_config_dump('tenancy.contract_log', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.contract_log_id_seq', '');
REVOKE ALL ON TABLE tenancy.contract_log FROM PUBLIC;

-- Record one contract step (the generated SQL of scope_constraints_sql()
-- calls this after each statement).
CREATE FUNCTION tenancy.log_step(relation regclass, step text, sql text, undo_sql text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO tenancy.contract_log (relation, step, sql, undo_sql)
    VALUES ($1, $2, $3, $4) RETURNING id;
$$;
COMMENT ON FUNCTION tenancy.log_step(regclass, text, text, text) IS 'record a contract step and its undo SQL in tenancy.contract_log';

-- The guard of a contract step that replaces an object with the one an
-- earlier step built: refuses while that one is missing or not valid, so the
-- old one is never dropped first.  The generated SQL calls it with its
-- arguments as literals, ahead of the DDL it guards in the same statement
-- string (one implicit transaction under \gexec).
CREATE FUNCTION tenancy.contract_guard(rel regclass, kind text, object_name name) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF kind = 'foreign_key' THEN
        IF NOT EXISTS (SELECT 1 FROM pg_constraint c
                        WHERE c.conrelid = rel AND c.conname = object_name AND c.contype = 'f' AND c.convalidated) THEN
            RAISE EXCEPTION 'foreign key % of % is missing or not validated', quote_ident(object_name), rel
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The foreign key it replaces is left in place.',
                      HINT = 'Run the add_scoped_foreign_key and validate_foreign_key steps first.';
        END IF;
    ELSIF kind = 'index' THEN
        IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                        WHERE i.indrelid = rel AND ic.relname = object_name AND i.indisvalid) THEN
            RAISE EXCEPTION 'index % of % is missing or not valid', quote_ident(object_name), rel
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The index it replaces is left in place.',
                      HINT = 'Run the create_scoped_index step first (drop an invalid index an interrupted CREATE INDEX CONCURRENTLY left, then run it again).';
        END IF;
    ELSIF kind = 'not_null' THEN
        -- a primary key added to a partitioned table must not set NOT NULL
        -- itself: that scans every partition under ACCESS EXCLUSIVE
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = rel AND a.attname = object_name AND a.attnum > 0
                          AND NOT a.attisdropped AND a.attnotnull) THEN
            RAISE EXCEPTION 'column % of % is not NOT NULL', quote_ident(object_name), rel
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The primary key is left in place.',
                      HINT = 'Run CALL tenancy.enforce_not_null(...) first.';
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown object kind "%"', kind
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The kinds are foreign_key, index and not_null.';
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.contract_guard(regclass, text, name) IS 'refuse a contract step while the foreign key or index it swaps in is missing or not valid, or a primary key column is nullable';

-- The guard of a contract step that swaps in or attaches an index a step
-- before built under a name the plan chose (CREATE ... IF NOT EXISTS skips
-- an index the table's owner may have made under that name first): the
-- index must be the one the plan builds, read from pg_index as it is (never
-- through the relcache, which evaluates predicates and expressions).  kind:
-- 'unique_index' or 'index'; key_columns: its key columns (or expressions)
-- in order as pg_get_indexdef() shows them, the tenant column first;
-- original: the index it replaces, whose INCLUDE columns, predicate and
-- access method it must have (NULL: none of them, btree).
CREATE FUNCTION tenancy.contract_guard(rel regclass, kind text, object_name name, key_columns text[], original regclass)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i      record;
    o      record;
    hint   text := 'Drop or rename the index of that name (the plan did not build it), then run the plan again.';
BEGIN
    IF kind IS NULL OR kind NOT IN ('unique_index', 'index') THEN
        RAISE EXCEPTION 'unknown object kind "%"', kind
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The kinds of an index shape guard are unique_index and index.';
    END IF;
    SELECT x.indisunique, x.indisvalid AND x.indisready AND x.indislive AS usable, ic.relam,
           ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true) FROM generate_series(1, x.indnkeyatts) k) AS keys,
           ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true) FROM generate_series(x.indnkeyatts + 1, x.indnatts) k) AS incs,
           pg_get_expr(x.indpred, x.indrelid, true) AS pred
      INTO i
      FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid
     WHERE x.indrelid = rel AND ic.relname = object_name;
    IF NOT FOUND OR NOT i.usable THEN
        RAISE EXCEPTION 'index % of % is missing or not valid', quote_ident(object_name), rel
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The index it replaces is left in place.',
                  HINT = 'Run the step that creates it first (drop an invalid index an interrupted CREATE INDEX CONCURRENTLY left, then run it again).';
    END IF;
    IF original IS NULL THEN
        SELECT am.oid AS relam, '{}'::text[] AS incs, NULL::text AS pred INTO o FROM pg_am am WHERE am.amname = 'btree';
    ELSE
        SELECT ic.relam,
               ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true) FROM generate_series(x.indnkeyatts + 1, x.indnatts) k) AS incs,
               pg_get_expr(x.indpred, x.indrelid, true) AS pred
          INTO o
          FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid
         WHERE x.indexrelid = original;
        IF NOT FOUND THEN
            RAISE EXCEPTION '% is not an index', original
                USING ERRCODE = 'wrong_object_type';
        END IF;
    END IF;
    IF i.indisunique IS DISTINCT FROM (kind = 'unique_index') THEN
        RAISE EXCEPTION 'index % of % is %unique', quote_ident(object_name), rel,
                        CASE WHEN i.indisunique THEN '' ELSE 'not ' END
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The contract step uses only the index the plan builds; the one it replaces is left in place.',
                  HINT = hint;
    ELSIF i.keys IS DISTINCT FROM key_columns THEN
        RAISE EXCEPTION 'index % of % has the key columns (%), not (%)', quote_ident(object_name), rel,
                        array_to_string(i.keys, ', '), array_to_string(key_columns, ', ')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The contract step uses only the index the plan builds; the one it replaces is left in place.',
                  HINT = hint;
    ELSIF i.incs IS DISTINCT FROM o.incs THEN
        RAISE EXCEPTION 'index % of % has the INCLUDE columns (%), not (%)', quote_ident(object_name), rel,
                        array_to_string(i.incs, ', '), array_to_string(o.incs, ', ')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The contract step uses only the index the plan builds; the one it replaces is left in place.',
                  HINT = hint;
    ELSIF i.pred IS DISTINCT FROM o.pred THEN
        RAISE EXCEPTION 'index % of % has the predicate %, not %', quote_ident(object_name), rel,
                        coalesce(i.pred, 'none'), coalesce(o.pred, 'none')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The contract step uses only the index the plan builds; the one it replaces is left in place.',
                  HINT = hint;
    ELSIF i.relam IS DISTINCT FROM o.relam THEN
        RAISE EXCEPTION 'index % of % uses the access method %, not %', quote_ident(object_name), rel,
                        (SELECT am.amname FROM pg_am am WHERE am.oid = i.relam),
                        (SELECT am.amname FROM pg_am am WHERE am.oid = o.relam)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The contract step uses only the index the plan builds; the one it replaces is left in place.',
                  HINT = hint;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.contract_guard(regclass, text, name, text[], regclass) IS 'refuse a contract step while the index it swaps in or attaches is missing, not valid, or not the shape the plan builds (uniqueness, key columns, INCLUDE, predicate, access method)';

-- The partitions of a partitioned table, at every level (parents first),
-- for the contract steps that build an index on each partition
-- CONCURRENTLY and attach it to an index made ON ONLY its parent: each with
-- the name of its own new index (the name of its index attached to
-- old_index, else its name and base, then suffix, through object_name()),
-- the index it attaches to (root_index for rel's own partitions) and, when
-- it has one, the constraint of its index attached to old_index (and
-- that index).
CREATE FUNCTION tenancy.partition_indexes(rel regclass, old_index regclass, base text, suffix text, root_index name)
RETURNS TABLE (part regclass, relkind "char", nsp name, index_name name, parent_nsp name, parent_index name,
               old_con name, level integer, old_idx regclass)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tree (part, parent, old_idx, parent_index, level) AS (
        SELECT ih.inhrelid, rel::oid,
               (SELECT x.indexrelid FROM pg_inherits xi JOIN pg_index x ON x.indexrelid = xi.inhrelid
                 WHERE xi.inhparent = old_index AND x.indrelid = ih.inhrelid),
               root_index::name COLLATE "C", 1
          FROM pg_inherits ih WHERE ih.inhparent = rel
        UNION ALL
        SELECT ih.inhrelid, t.part,
               (SELECT x.indexrelid FROM pg_inherits xi JOIN pg_index x ON x.indexrelid = xi.inhrelid
                 WHERE xi.inhparent = t.old_idx AND x.indrelid = ih.inhrelid),
               tenancy.object_name(coalesce((SELECT oc.relname::text FROM pg_class oc WHERE oc.oid = t.old_idx),
                                            (SELECT pc.relname || '_' || base FROM pg_class pc WHERE pc.oid = t.part)), suffix)::name COLLATE "C",
               t.level + 1
          FROM tree t JOIN pg_inherits ih ON ih.inhparent = t.part
    )
    SELECT t.part::regclass, c.relkind, n.nspname,
           tenancy.object_name(coalesce((SELECT oc.relname::text FROM pg_class oc WHERE oc.oid = t.old_idx),
                                        c.relname || '_' || base), suffix)::name,
           pn.nspname, t.parent_index,
           (SELECT con.conname FROM pg_constraint con WHERE con.conindid = t.old_idx AND con.conrelid = t.part),
           t.level, t.old_idx::regclass
      FROM tree t
      JOIN pg_class c ON c.oid = t.part
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_class p ON p.oid = t.parent
      JOIN pg_namespace pn ON pn.oid = p.relnamespace
     ORDER BY t.level, t.part::regclass::text;
$$;
COMMENT ON FUNCTION tenancy.partition_indexes(regclass, regclass, text, text, name) IS 'partitions of a partitioned table with the names of the per-partition indexes the contract phase builds';

-- The steps that build an index on a partitioned table without a long lock:
-- the index ON ONLY the table (catalog only: no partition is scanned), then
-- for each partition CREATE INDEX CONCURRENTLY (or ON ONLY again for a
-- partitioned partition) and ALTER INDEX ... ATTACH PARTITION, after which
-- the parent's index is valid.  tail: the columns, INCLUDE, NULLS NOT
-- DISTINCT and WHERE, as SQL.  Each step is rerun-safe (IF NOT EXISTS; an
-- attached index attaches again as a no-op); the non-concurrent ones start
-- with SET LOCAL lock_timeout = lt.  keys: the key columns as
-- pg_get_indexdef() shows them, for contract_guard(): each partition's
-- index is checked before it is attached, and the attach (which makes
-- PostgreSQL load the indexes' predicates and expressions) runs as the
-- partition's owner, through table_exec().
CREATE FUNCTION tenancy.partitioned_index_steps(rel regclass, old_index regclass, index_name name, base text,
                                                suffix text, is_unique boolean, tail text, lt text, keys text[])
RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_array(jsonb_build_object(
               'rel', rel::text, 'action', 'create_parent_only_index',
               'sql', format('SET LOCAL lock_timeout = %L; CREATE %sINDEX IF NOT EXISTS %I ON ONLY %s %s',
                             lt, CASE WHEN is_unique THEN 'UNIQUE ' ELSE '' END, $3, rel, tail),
               'undo', format('DROP INDEX IF EXISTS %I.%I',
                              (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel),
                              $3)))
        || coalesce(jsonb_agg(x.step ORDER BY p.level, p.part::text, x.n), '[]')
    FROM tenancy.partition_indexes(rel, old_index, base, suffix, $3) p
    CROSS JOIN LATERAL (VALUES
        (1, jsonb_build_object(
                'rel', p.part::text,
                'action', CASE WHEN p.relkind = 'p' THEN 'create_parent_only_index' ELSE 'create_partition_index' END,
                'sql', CASE WHEN p.relkind = 'p'
                            THEN format('SET LOCAL lock_timeout = %L; CREATE %sINDEX IF NOT EXISTS %I ON ONLY %s %s',
                                        lt, CASE WHEN is_unique THEN 'UNIQUE ' ELSE '' END, p.index_name, p.part, tail)
                            ELSE format('CREATE %sINDEX CONCURRENTLY IF NOT EXISTS %I ON %s %s',
                                        CASE WHEN is_unique THEN 'UNIQUE ' ELSE '' END, p.index_name, p.part, tail) END,
                'undo', format('DROP INDEX IF EXISTS %I.%I', p.nsp, p.index_name))),
        (2, jsonb_build_object(
                'rel', p.part::text, 'action', 'attach_partition_index',
                'sql', format('SET LOCAL lock_timeout = %L; %sSELECT tenancy.table_exec(%L, NULL, %L)',
                              lt,
                              CASE WHEN p.relkind = 'r'
                                   THEN format('SELECT tenancy.contract_guard(%L, %L, %L, %L, %L); ',
                                               p.part::text, CASE WHEN is_unique THEN 'unique_index' ELSE 'index' END,
                                               p.index_name, keys::text, p.old_idx::text)
                                   ELSE '' END,
                              p.part::text,
                              format('ALTER INDEX %I.%I ATTACH PARTITION %I.%I',
                                     p.parent_nsp, p.parent_index, p.nsp, p.index_name)),
                'undo', NULL))
    ) x(n, step);
$$;
COMMENT ON FUNCTION tenancy.partitioned_index_steps(regclass, regclass, name, text, text, boolean, text, text, text[]) IS 'contract steps building an index on a partitioned table: ON ONLY the parent, CONCURRENTLY per partition, attached';

------------------------------------------------------------------------------
-- Contract phase: NOT NULL without a long lock
------------------------------------------------------------------------------

-- The steps still to run for tbl, given the catalog: add a NOT VALID check,
-- validate it (no exclusive lock), SET NOT NULL (no scan on PostgreSQL 12+
-- thanks to the validated check), drop the check.
CREATE FUNCTION tenancy.enforce_not_null_plan(tbl regclass)
RETURNS TABLE (step text, sql text, undo_sql text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    col     name;
    is_notnull boolean;
    chk     text;
    con     record;
BEGIN
    col := (tenancy.registered_table(tbl)).column_name;
    SELECT a.attnotnull INTO is_notnull FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of % does not exist', col, tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    chk := tenancy.object_name('tenancy_' || col, '_not_null');
    SELECT c.oid, c.convalidated INTO con FROM pg_constraint c
     WHERE c.conrelid = tbl AND c.conname = chk AND c.contype = 'c';
    IF NOT is_notnull THEN
        IF con.oid IS NULL THEN
            step := 'add_check';
            sql := format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%I IS NOT NULL) NOT VALID', tbl, chk, col);
            undo_sql := format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', tbl, chk);
            RETURN NEXT;
        END IF;
        IF con.oid IS NULL OR NOT con.convalidated THEN
            step := 'validate_check';
            sql := format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl, chk);
            undo_sql := NULL;
            RETURN NEXT;
        END IF;
        step := 'set_not_null';
        sql := format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, col);
        undo_sql := format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', tbl, col);
        RETURN NEXT;
    END IF;
    IF NOT is_notnull OR con.oid IS NOT NULL THEN
        step := 'drop_check';
        sql := format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', tbl, chk);
        undo_sql := NULL;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.enforce_not_null_plan(regclass) IS 'steps enforce_not_null() would run, with their undo SQL';

-- squawk: ignore prefer-robust-stmts: the steps are computed from the catalog; rerun after a failure, the preview holds only the steps still to do (no transaction on purpose: no lock is held across steps)
CREATE FUNCTION tenancy.enforce_not_null_sql(tbl regclass) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.s FROM (
        SELECT 0 AS n, NULL::bigint AS o, u.s || ';' AS s FROM unnest(tenancy.preview_set(true)) WITH ORDINALITY u(s, o)
         WHERE EXISTS (SELECT 1 FROM tenancy.enforce_not_null_plan(tbl))
        UNION ALL
        SELECT 1, p.o, p.sql || ';' FROM tenancy.enforce_not_null_plan(tbl) WITH ORDINALITY p(step, sql, undo_sql, o)
        UNION ALL
        SELECT 2, u.o, u.s || ';' FROM unnest(tenancy.preview_reset()) WITH ORDINALITY u(s, o)
         WHERE EXISTS (SELECT 1 FROM tenancy.enforce_not_null_plan(tbl))) x
    ORDER BY x.n, x.o;
$$;
COMMENT ON FUNCTION tenancy.enforce_not_null_sql(regclass) IS 'preview of enforce_not_null(): the statements, one per row';

-- A procedure, so that each step commits on its own and no lock is held
-- across steps: it cannot run inside a transaction block.  (No SET clause:
-- a procedure with one cannot commit; it sets search_path itself.)
CREATE PROCEDURE tenancy.enforce_not_null(tbl regclass, lock_timeout interval DEFAULT '1s',
                                          max_attempts integer DEFAULT 10)
LANGUAGE plpgsql AS $$
DECLARE
    steps   text[];
    sqls    text[];
    undos   text[];
    col     name;
    nulls   bigint;
    attempt integer;
    timeout text;
    raced   boolean := false;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF tbl IS NULL OR lock_timeout IS NULL OR max_attempts IS NULL THEN
        RAISE EXCEPTION 'arguments must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF lock_timeout <= interval '0' OR max_attempts < 1 THEN
        RAISE EXCEPTION 'lock_timeout and max_attempts must be positive'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    timeout := (ceil(extract(epoch FROM lock_timeout) * 1000))::bigint || 'ms';
    SELECT coalesce(array_agg(p.step), '{}'), coalesce(array_agg(p.sql), '{}'), coalesce(array_agg(p.undo_sql), '{}')
      INTO steps, sqls, undos
      FROM tenancy.enforce_not_null_plan(tbl) p;
    col := (tenancy.registered_table(tbl)).column_name;
    IF 'set_not_null' = ANY (steps) THEN
        -- As the table owner: the planner evaluates the owner's index
        -- expressions and predicates.
        nulls := (tenancy.table_query(tbl, NULL, format('SELECT count(*) FROM %s WHERE %I IS NULL', tbl, col)))[1]::bigint;
        IF nulls > 0 THEN
            RAISE EXCEPTION 'table % has % rows with a NULL %', tbl, nulls, col
                USING ERRCODE = 'not_null_violation',
                      DETAIL = 'Nothing was changed.',
                      HINT = 'Finish the backfill first (tenancy.verify() shows what is left).';
        END IF;
    END IF;
    IF cardinality(steps) = 0 THEN
        RAISE NOTICE 'column % of % is already NOT NULL', col, tbl;
        PERFORM tenancy.finish_contract(tbl);
        RETURN;
    END IF;
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'tenancy.enforce_not_null() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  DETAIL = 'It commits after each step, so that no lock is held for long.',
                  HINT = 'Run CALL tenancy.enforce_not_null(...) on its own, outside BEGIN ... COMMIT.';
    END IF;
    -- Called where it cannot commit (from a function): fail here, before any change.
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR i IN 1 .. cardinality(steps) LOOP
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        attempt := 0;
        LOOP
            attempt := attempt + 1;
            BEGIN
                PERFORM pg_catalog.set_config('lock_timeout', timeout, true);
                PERFORM tenancy.table_exec(tbl, NULL, sqls[i]);
                PERFORM tenancy.log_step(tbl, steps[i], sqls[i], undos[i]);
                EXIT;
            EXCEPTION
                WHEN lock_not_available THEN
                    IF attempt >= max_attempts THEN
                        RAISE EXCEPTION 'could not lock % within % in % attempts', tbl, lock_timeout, attempt
                            USING ERRCODE = 'lock_not_available',
                                  DETAIL = format('Step %s of %s (%s) did not run; the steps before it are done.',
                                                  i, cardinality(steps), steps[i]),
                                  HINT = 'Call tenancy.enforce_not_null() again when the table is less busy: it goes on where it stopped.';
                    END IF;
                    PERFORM pg_catalog.pg_sleep_for(tenancy.backoff_delay(attempt, '100ms', '2s'));
                WHEN check_violation THEN
                    -- A NULL arrived between the count and VALIDATE.
                    raced := true;
                    EXIT;
            END;
        END LOOP;
        IF raced THEN
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', tbl, tenancy.object_name('tenancy_' || col, '_not_null'));
            UPDATE tenancy.contract_log l SET undone_at = now()
             WHERE l.relation = tbl AND l.step = 'add_check' AND l.undone_at IS NULL;
            COMMIT;
            RAISE EXCEPTION 'table % gained rows with a NULL % during validation', tbl, col
                USING ERRCODE = 'not_null_violation',
                      DETAIL = 'The check constraint was dropped again; nothing else was changed.',
                      HINT = 'Make every writer set the tenant (a column default or the application), finish the backfill, and call it again.';
        END IF;
        COMMIT;
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM tenancy.finish_contract(tbl);
END
$$;
COMMENT ON PROCEDURE tenancy.enforce_not_null(regclass, interval, integer) IS 'make the tenant column NOT NULL without a long exclusive lock; refuses while NULL rows remain';

------------------------------------------------------------------------------
-- Contract phase: tenant-scoped unique constraints and foreign keys
------------------------------------------------------------------------------

-- The plan, step by step, for tbl (or every registered table):
--   1. CREATE UNIQUE INDEX CONCURRENTLY (tenant, ...) (without CONCURRENTLY
--      on partitioned tables, where PostgreSQL does not support it) for each unique
--      constraint or index without the tenant column, and a unique
--      (tenant, key) on each parent a foreign key needs;
--   2. add each foreign key again as (tenant, key) NOT VALID;
--   3. VALIDATE it (no lock that blocks writes), through table_exec(): the
--      check's query is planned and run as the table's owner, so index
--      expressions and predicates the owner wrote never run as the DBA;
--   4. drop the old foreign key and give its name to the new one;
--   5. swap each unique constraint (or index) for its scoped index.
-- Steps 4 and 5 first call contract_guard(); names only ever appear quoted
-- (%I, or %L for literals), and names the plan makes go through object_name().
-- squawk: ignore require-lock-timeout: the plan's rows are steps, not a script: scope_constraints_sql() (the \gexec form) sets the timeouts around them
-- squawk: ignore require-statement-timeout: as above
-- squawk: ignore prefer-robust-stmts: computed from the catalog: a rerun plans only the steps still to do
-- squawk: ignore require-concurrent-index-deletion: undo_sql runs in rollback_table()'s one transaction, where CONCURRENTLY is not allowed
-- squawk: ignore constraint-missing-not-valid: undo_sql puts back the original constraint USING INDEX the index it kept (no table scan)
-- squawk: ignore disallowed-unique-constraint: as above, USING INDEX of an existing index
-- squawk: ignore adding-serial-primary-key-field: as above, a primary key USING INDEX of an existing index
CREATE FUNCTION tenancy.scope_constraints_plan(tbl regclass DEFAULT NULL)
RETURNS TABLE (step integer, relation regclass, action text, sql text, undo_sql text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r       record;
    f       record;
    phases  jsonb[] := ARRAY['[]', '[]', '[]', '[]', '[]']::jsonb[];
    planned jsonb := '{}'::jsonb;
    want    text;
    idx     text;
    newname text;
    newcon  text;
    def     text;
    acts    text;
    e       jsonb;
    pi      record;
    inc     text;
    tail    text;
    guards  text;
    pks     text;
    -- every step that waits for a lock gives up after this (the plan is
    -- made again from the catalog and goes on where it stopped)
    lt      text := '100ms';
    setlt   text := format('SET LOCAL lock_timeout = %L; ', '100ms');
    -- (relation, key columns) of the unique indexes the plan creates
    leads   jsonb := '[]'::jsonb;
BEGIN
    IF tbl IS NOT NULL THEN
        PERFORM tenancy.registered_table(tbl);
    END IF;

    -- Two passes: the unique indexes of every table first, so that a foreign
    -- key to a table planned later uses the index planned for it.
    FOR pass IN 1 .. 2 LOOP
    FOR r IN
        SELECT t.relation AS rel, t.column_name AS col, a.attnum, c.relname, c.relkind,
               n.nspname AS nsp
        FROM tenancy.tables t
        JOIN pg_class c ON c.oid = t.relation
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = t.relation AND a.attname = t.column_name
                           AND a.attnum > 0 AND NOT a.attisdropped
        WHERE tbl IS NULL OR t.relation = tbl
        ORDER BY t.relation::text
    LOOP
        -- 1 and 5: unique constraints and indexes without the tenant column
        FOR f IN
            SELECT u.indexrelid, ic.relname AS idxname, i.indnullsnotdistinct, u.surrogate_key,
                   u.conoid, con.conname, con.contype, con.condeferrable, con.condeferred, u.keys,
                   (SELECT string_agg(pg_get_indexdef(i.indexrelid, k, true), ', ' ORDER BY k)
                      FROM generate_series(1, i.indnkeyatts) k) AS keycols,
                   quote_ident(r.col) || ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
                                                 FROM generate_series(1, i.indnkeyatts) k) AS keyarr,
                   (SELECT string_agg(pg_get_indexdef(i.indexrelid, k, true), ', ' ORDER BY k)
                      FROM generate_series(i.indnkeyatts + 1, i.indnatts) k) AS inccols,
                   pg_get_expr(i.indpred, i.indrelid, true) AS pred
            FROM tenancy.unscoped_unique_indexes(r.rel, r.attnum) u
            JOIN pg_index i ON i.indexrelid = u.indexrelid
            JOIN pg_class ic ON ic.oid = u.indexrelid
            LEFT JOIN pg_constraint con ON con.oid = u.conoid
            WHERE pass = 1
            ORDER BY ic.relname
        LOOP
            -- a generated surrogate primary key stays (verify() accepts it)
            CONTINUE WHEN f.surrogate_key;
            -- Named after the index it replaces (unique in its schema, and
            -- there until the swap): two unique indexes on the same columns
            -- never get the same new name, and a plan made again after some
            -- of its steps ran names the new index as the first one did.
            newname := tenancy.object_name(f.idxname, '_tenant');
            acts := CASE WHEN f.condeferrable THEN ' DEFERRABLE' ELSE '' END
                 || CASE WHEN f.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END;
            inc := CASE WHEN f.inccols IS NOT NULL THEN format(' INCLUDE (%s)', f.inccols) ELSE '' END;
            tail := format('(%I, %s)%s%s%s', r.col, f.keycols, inc,
                           CASE WHEN f.indnullsnotdistinct THEN ' NULLS NOT DISTINCT' ELSE '' END,
                           CASE WHEN f.pred IS NOT NULL THEN format(' WHERE %s', f.pred) ELSE '' END);
            IF NOT 0 = ANY (f.keys) THEN
                leads := leads || jsonb_build_object('rel', r.rel::oid,
                    'cols', to_jsonb(r.col::text || ARRAY(SELECT a.attname::text FROM unnest(f.keys) WITH ORDINALITY k(attnum, o)
                                                           JOIN pg_attribute a ON a.attrelid = r.rel AND a.attnum = k.attnum ORDER BY k.o)));
            END IF;
            IF r.relkind = 'p' AND f.contype IN ('p', 'u')
               AND NOT EXISTS (SELECT 1 FROM tenancy.partition_indexes(r.rel, f.indexrelid, newname, '_tenant', newname) x
                                WHERE x.relkind <> 'r') THEN
                -- PostgreSQL has no ADD CONSTRAINT ... USING INDEX on a
                -- partitioned table.  Each partition gets its index
                -- CONCURRENTLY (and a unique constraint on it at once); then
                -- one short transaction drops the parent's constraint, gives
                -- each partition its primary key on its index, and adds the
                -- parent's again, which adopts the partitions' constraints and
                -- indexes (DefineIndex) without building or scanning anything.
                guards := ''; pks := '';
                FOR pi IN SELECT * FROM tenancy.partition_indexes(r.rel, f.indexrelid, newname, '_tenant', newname) LOOP
                    phases[1] := phases[1] || jsonb_build_object(
                        'rel', pi.part::text, 'action', 'create_partition_index',
                        'sql', format('CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS %I ON %s (%I, %s)%s',
                                      pi.index_name, pi.part, r.col, f.keycols, inc),
                        'undo', format('DROP INDEX IF EXISTS %I.%I', pi.nsp, pi.index_name));
                    IF f.contype = 'u' AND NOT EXISTS (SELECT 1 FROM pg_constraint con
                                                        WHERE con.conrelid = pi.part AND con.conname = pi.index_name) THEN
                        phases[1] := phases[1] || jsonb_build_object(
                            'rel', pi.part::text, 'action', 'add_partition_constraint',
                            'sql', format('%sSELECT tenancy.contract_guard(%L, %L, %L, %L, %L); SELECT tenancy.table_exec(%L, NULL, %L)',
                                          setlt, pi.part::text, 'unique_index', pi.index_name, f.keyarr::text, pi.old_idx::text,
                                          pi.part::text,
                                          format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE USING INDEX %I%s',
                                                 pi.part, pi.index_name, pi.index_name, acts)),
                            'undo', format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', pi.part, pi.index_name));
                    END IF;
                    guards := guards || format('SELECT tenancy.contract_guard(%L, %L, %L, %L, %L); ',
                                               pi.part::text, 'unique_index', pi.index_name, f.keyarr::text, pi.old_idx::text);
                    IF f.contype = 'p' THEN
                        pks := pks || format('SELECT tenancy.table_exec(%L, NULL, %L); ', pi.part::text,
                                             format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I%s',
                                                    pi.part, coalesce(pi.old_con, pi.index_name), pi.index_name, acts));
                    END IF;
                END LOOP;
                phases[5] := phases[5] || jsonb_build_object(
                    'rel', r.rel::text, 'action', 'swap_partitioned_constraint',
                    'sql', setlt || guards
                           || CASE WHEN f.contype = 'p'
                                   THEN format('SELECT tenancy.contract_guard(%L, %L, %L); ', r.rel::text, 'not_null', r.col)
                                   ELSE '' END
                           || format('ALTER TABLE %s DROP CONSTRAINT %I; ', r.rel, f.conname) || pks
                           || format('SELECT tenancy.table_exec(%L, NULL, %L)', r.rel::text,
                                     format('ALTER TABLE %s ADD CONSTRAINT %I %s (%I, %s)%s%s', r.rel, f.conname,
                                            CASE f.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, r.col, f.keycols, inc, acts)),
                    'undo', format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
                                   r.rel, f.conname, f.conname, pg_get_constraintdef(f.conoid)));
                -- (not a parent index a foreign key can use in step 2: it
                -- only exists after step 5)
                CONTINUE;
            ELSIF r.relkind = 'p' AND f.contype IN ('p', 'u') THEN
                -- sub-partitioned or with foreign partitions: rebuild the
                -- constraint in one step (the index build blocks writes)
                phases[5] := phases[5] || jsonb_build_object(
                    'rel', r.rel::text, 'action', 'rebuild_constraint',
                    'sql', format('%sSELECT tenancy.table_exec(%L, NULL, %L)', setlt, r.rel::text,
                                  format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s (%I, %s)%s',
                                         r.rel, f.conname, f.conname,
                                         CASE f.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, r.col, f.keycols, acts)),
                    'undo', format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
                                   r.rel, f.conname, f.conname, pg_get_constraintdef(f.conoid)));
                -- (not a parent index a foreign key can use in step 2: it
                -- only exists after step 5)
                CONTINUE;
            END IF;
            IF r.relkind = 'p' THEN
                -- a unique index of a partitioned table: ON ONLY, then each
                -- partition's CONCURRENTLY, attached
                FOR e IN SELECT x FROM jsonb_array_elements(tenancy.partitioned_index_steps(
                             r.rel, f.indexrelid::regclass, newname, newname, '_tenant', true, tail, lt, f.keyarr)) x LOOP
                    phases[1] := phases[1] || e;
                END LOOP;
            ELSE
                phases[1] := phases[1] || jsonb_build_object(
                    'rel', r.rel::text, 'action', 'create_scoped_index',
                    'sql', format('CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS %I ON %s %s', newname, r.rel, tail),
                    'undo', format('DROP INDEX IF EXISTS %I.%I', r.nsp, newname));
            END IF;
            IF f.pred IS NULL AND NOT 0 = ANY (f.keys) THEN
                planned := planned || jsonb_build_object(
                    format('%s:%s', r.rel::oid, (SELECT array_agg(x ORDER BY x) FROM unnest(r.attnum || f.keys) x)), newname);
            END IF;
            IF f.contype IN ('p', 'u') THEN
                phases[5] := phases[5] || jsonb_build_object(
                    'rel', r.rel::text, 'action', 'swap_constraint',
                    'sql', format('%sSELECT tenancy.contract_guard(%L, %L, %L, %L, %L); SELECT tenancy.table_exec(%L, NULL, %L)',
                                  setlt, r.rel::text, 'unique_index', newname, f.keyarr::text, f.indexrelid::regclass::text,
                                  r.rel::text,
                                  format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s USING INDEX %I%s',
                                         r.rel, f.conname, f.conname,
                                         CASE f.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, newname, acts)),
                    'undo', format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
                                   r.rel, f.conname, f.conname, pg_get_constraintdef(f.conoid)));
            ELSE
                phases[5] := phases[5] || jsonb_build_object(
                    'rel', r.rel::text, 'action', 'swap_index',
                    'sql', format('%sSELECT tenancy.contract_guard(%L, %L, %L, %L, %L); DROP INDEX %I.%I; ALTER INDEX %I.%I RENAME TO %I',
                                  setlt, r.rel::text, 'unique_index', newname, f.keyarr::text, f.indexrelid::regclass::text,
                                  r.nsp, f.idxname, r.nsp, newname, f.idxname),
                    'undo', format('ALTER INDEX %I.%I RENAME TO %I; %s',
                                   r.nsp, f.idxname, newname, pg_get_indexdef(f.indexrelid)));
            END IF;
        END LOOP;

        -- 1 to 4: foreign keys to registered tables, as (tenant, key); a key
        -- declared on a partition is rescoped on its partition (child)
        FOR f IN
            SELECT c.oid, c.conname, k.conrelid AS child, cc.relkind AS childkind, cc.relname AS childname,
                   cn.nspname AS childnsp, k.cols AS colnames,
                   c.confrelid::regclass AS parent, pt.column_name AS pcol, pa.attnum AS pattnum,
                   pc.relname AS prelname, pc.relkind AS prelkind, pn.nspname AS pnsp,
                   c.confkey, c.confupdtype, c.confdeltype, c.confmatchtype, c.condeferrable, c.condeferred,
                   tenancy.column_list(c.conrelid::regclass, c.conkey) AS cols,
                   tenancy.column_list(c.confrelid::regclass, c.confkey) AS refcols,
                   tenancy.column_list(c.conrelid::regclass, c.confdelsetcols) AS delsetcols,
                   (SELECT string_agg(a.attname, '_' ORDER BY k.i)
                      FROM unnest(c.confkey) WITH ORDINALITY k(attnum, i)
                      JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum) AS refnames,
                   quote_ident(pt.column_name) || ARRAY(SELECT quote_ident(a.attname)
                      FROM unnest(c.confkey) WITH ORDINALITY k(attnum, i)
                      JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.i) AS refarr
            FROM tenancy.foreign_keys(r.rel) k
            JOIN pg_constraint c ON c.oid = k.conoid
            JOIN pg_class cc ON cc.oid = k.conrelid
            JOIN pg_namespace cn ON cn.oid = cc.relnamespace
            JOIN tenancy.tables pt ON pt.relation = c.confrelid
            JOIN pg_class pc ON pc.oid = c.confrelid
            JOIN pg_namespace pn ON pn.oid = pc.relnamespace
            JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attname = pt.column_name
                                AND pa.attnum > 0 AND NOT pa.attisdropped
            WHERE pass = 2
              AND NOT EXISTS (SELECT 1 FROM unnest(k.cols, k.refcols) u(ck, pk)
                              WHERE u.ck = r.col AND u.pk = pt.column_name)
        LOOP
            -- the parent needs a unique (tenant, key)
            want := format('%s:%s', f.parent::oid, (SELECT array_agg(x ORDER BY x) FROM unnest(f.pattnum || f.confkey) x));
            IF NOT planned ? want THEN
                SELECT ic.relname::text INTO idx
                  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid = f.parent AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                   AND (SELECT array_agg(x ORDER BY x) FROM unnest((string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts]) x)
                       = (SELECT array_agg(x ORDER BY x) FROM unnest(f.pattnum || f.confkey) x)
                 LIMIT 1;
                IF idx IS NULL THEN
                    idx := tenancy.object_name(f.prelname || '_' || f.pcol || '_' || f.refnames, '_key');
                    IF f.prelkind = 'p' THEN
                        FOR e IN SELECT x FROM jsonb_array_elements(tenancy.partitioned_index_steps(
                                     f.parent, NULL, idx, f.pcol || '_' || f.refnames, '_key', true,
                                     format('(%I, %s)', f.pcol, f.refcols), lt, f.refarr)) x LOOP
                            phases[1] := phases[1] || e;
                        END LOOP;
                    ELSE
                        phases[1] := phases[1] || jsonb_build_object(
                            'rel', f.parent::text, 'action', 'create_parent_index',
                            'sql', format('CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS %I ON %s (%I, %s)',
                                          idx, f.parent, f.pcol, f.refcols),
                            'undo', format('DROP INDEX IF EXISTS %I.%I', f.pnsp, idx));
                    END IF;
                END IF;
                planned := planned || jsonb_build_object(want, idx);
            END IF;

            -- The child keeps an index for the key where it had one (a
            -- parent's DELETE checks the child through it): (tenant, key),
            -- unless an index or a planned unique index already leads with
            -- those columns.
            IF EXISTS (SELECT 1 FROM pg_index x
                        WHERE x.indrelid = f.child AND x.indpred IS NULL AND x.indnkeyatts >= cardinality(f.colnames)
                          AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                                 FROM unnest((string_to_array(x.indkey::text, ' ')::smallint[])[1:cardinality(f.colnames)]) u(attnum)
                                 JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.attnum)
                              = (SELECT array_agg(c::text ORDER BY c) FROM unnest(f.colnames) c))
               AND NOT EXISTS (SELECT 1 FROM pg_index x
                                WHERE x.indrelid = f.child AND x.indpred IS NULL AND x.indnkeyatts > cardinality(f.colnames)
                                  AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                                         FROM unnest((string_to_array(x.indkey::text, ' ')::smallint[])[1:cardinality(f.colnames) + 1]) u(attnum)
                                         JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.attnum)
                                      = (SELECT array_agg(c::text ORDER BY c) FROM unnest(r.col || f.colnames) c))
               AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(leads) l
                                WHERE (l->>'rel')::oid IN (f.child, r.rel)
                                  AND (SELECT array_agg(c ORDER BY c) FROM (SELECT c FROM jsonb_array_elements_text(l->'cols') c
                                                                            LIMIT cardinality(f.colnames) + 1) s)
                                      = (SELECT array_agg(c::text ORDER BY c) FROM unnest(r.col || f.colnames) c)) THEN
                idx := tenancy.object_name(f.childname || '_' || r.col || '_' || array_to_string(f.colnames, '_'), '_idx');
                IF f.childkind = 'p' THEN
                    FOR e IN SELECT x FROM jsonb_array_elements(tenancy.partitioned_index_steps(
                                 f.child, NULL, idx, r.col || '_' || array_to_string(f.colnames, '_'), '_idx', false,
                                 format('(%I, %s)', r.col, f.cols), lt,
                                 ARRAY(SELECT quote_ident(x) FROM unnest(r.col::text || f.colnames::text[]) WITH ORDINALITY u(x, o) ORDER BY o))) x LOOP
                        phases[1] := phases[1] || e;
                    END LOOP;
                ELSE
                    phases[1] := phases[1] || jsonb_build_object(
                        'rel', f.child::text, 'action', 'create_foreign_key_index',
                        'sql', format('CREATE INDEX CONCURRENTLY IF NOT EXISTS %I ON %s (%I, %s)', idx, f.child, r.col, f.cols),
                        'undo', format('DROP INDEX IF EXISTS %I.%I', f.childnsp, idx));
                END IF;
                leads := leads || jsonb_build_object('rel', f.child::oid, 'cols', to_jsonb(r.col::text || f.colnames::text[]));
            END IF;

            newcon := tenancy.object_name(f.conname, '_tenant');
            acts := CASE f.confmatchtype WHEN 'f' THEN ' MATCH FULL' ELSE '' END
                 || CASE f.confupdtype WHEN 'r' THEN ' ON UPDATE RESTRICT' WHEN 'c' THEN ' ON UPDATE CASCADE'
                                       WHEN 'n' THEN ' ON UPDATE SET NULL' WHEN 'd' THEN ' ON UPDATE SET DEFAULT' ELSE '' END
                 || CASE f.confdeltype WHEN 'r' THEN ' ON DELETE RESTRICT' WHEN 'c' THEN ' ON DELETE CASCADE'
                                       WHEN 'n' THEN format(' ON DELETE SET NULL (%s)', coalesce(f.delsetcols, f.cols))
                                       WHEN 'd' THEN format(' ON DELETE SET DEFAULT (%s)', coalesce(f.delsetcols, f.cols))
                                       ELSE '' END
                 || CASE WHEN f.condeferrable THEN ' DEFERRABLE' ELSE '' END
                 || CASE WHEN f.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END;
            IF f.childkind = 'p' THEN
                -- A partitioned table takes no NOT VALID key: each partition
                -- gets it NOT VALID, then VALIDATE; the key added on the
                -- parent then adopts the partitions' validated keys without
                -- a scan (tryAttachPartitionForeignKey).
                guards := '';
                FOR pi IN SELECT x.* FROM tenancy.partition_indexes(f.child, NULL, '', '', '') x WHERE x.relkind = 'r' LOOP
                    IF NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conrelid = pi.part AND con.conname = newcon) THEN
                        phases[2] := phases[2] || jsonb_build_object(
                            'rel', pi.part::text, 'action', 'add_partition_foreign_key',
                            'sql', format('%sALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I, %s) REFERENCES %s (%I, %s)%s NOT VALID',
                                          setlt, pi.part, newcon, r.col, f.cols, f.parent, f.pcol, f.refcols, acts),
                            'undo', format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', pi.part, newcon));
                    END IF;
                    phases[3] := phases[3] || jsonb_build_object(
                        'rel', pi.part::text, 'action', 'validate_foreign_key',
                        'sql', format('%sSELECT tenancy.table_exec(%L, NULL, %L)', setlt,
                                      pi.part::text, format('ALTER TABLE %s VALIDATE CONSTRAINT %I', pi.part, newcon)),
                        'undo', NULL);
                    guards := guards || format('SELECT tenancy.contract_guard(%L, %L, %L); ', pi.part::text, 'foreign_key', newcon);
                END LOOP;
                phases[3] := phases[3] || jsonb_build_object(
                    'rel', f.child::text, 'action', 'adopt_foreign_key',
                    'sql', setlt || guards
                           || format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I, %s) REFERENCES %s (%I, %s)%s',
                                     f.child, newcon, r.col, f.cols, f.parent, f.pcol, f.refcols, acts),
                    'undo', format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', f.child, newcon));
                def := regexp_replace(pg_get_constraintdef(f.oid), ' NOT VALID$', '');
                phases[4] := phases[4] || jsonb_build_object(
                    'rel', f.child::text, 'action', 'replace_foreign_key',
                    'sql', format('%sSELECT tenancy.contract_guard(%L, %L, %L); ALTER TABLE %s DROP CONSTRAINT %I; ALTER TABLE %s RENAME CONSTRAINT %I TO %I',
                                  setlt, f.child::text, 'foreign_key', newcon, f.child, f.conname, f.child, newcon, f.conname),
                    'undo', format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I; ALTER TABLE %s ADD CONSTRAINT %I %s',
                                   f.child, f.conname, newcon, f.child, f.conname, def));
                CONTINUE;
            END IF;
            phases[2] := phases[2] || jsonb_build_object(
                'rel', f.child::text, 'action', 'add_scoped_foreign_key',
                'sql', format('%sALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I, %s) REFERENCES %s (%I, %s)%s NOT VALID',
                              setlt, f.child, newcon, r.col, f.cols, f.parent, f.pcol, f.refcols, acts),
                'undo', format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', f.child, newcon));
            phases[3] := phases[3] || jsonb_build_object(
                'rel', f.child::text, 'action', 'validate_foreign_key',
                'sql', format('%sSELECT tenancy.table_exec(%L, NULL, %L)', setlt,
                              f.child::text, format('ALTER TABLE %s VALIDATE CONSTRAINT %I', f.child, newcon)),
                'undo', NULL);
            def := pg_get_constraintdef(f.oid);
            IF def !~ ' NOT VALID$' THEN
                def := def || ' NOT VALID';
            END IF;
            phases[4] := phases[4] || jsonb_build_object(
                'rel', f.child::text, 'action', 'replace_foreign_key',
                'sql', format('%sSELECT tenancy.contract_guard(%L, %L, %L); ALTER TABLE %s DROP CONSTRAINT %I; ALTER TABLE %s RENAME CONSTRAINT %I TO %I',
                              setlt, f.child::text, 'foreign_key', newcon, f.child, f.conname, f.child, newcon, f.conname),
                'undo', format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I; ALTER TABLE %s ADD CONSTRAINT %I %s; SELECT tenancy.table_exec(%L, NULL, %L)',
                               f.child, f.conname, newcon, f.child, f.conname, def,
                               f.child::text, format('ALTER TABLE %s VALIDATE CONSTRAINT %I', f.child, f.conname)));
        END LOOP;
    END LOOP;
    END LOOP;

    step := 0;
    FOR i IN 1 .. 5 LOOP
        FOR e IN SELECT x FROM jsonb_array_elements(phases[i]) x LOOP
            step := step + 1;
            relation := (e->>'rel')::regclass;
            action := e->>'action';
            sql := e->>'sql';
            undo_sql := e->>'undo';
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.scope_constraints_plan(regclass) IS 'the steps that make unique constraints and foreign keys tenant-scoped, with their undo SQL';

-- The plan as statements for psql's \gexec: each step, then its record in
-- tenancy.contract_log.  Run with \set ON_ERROR_STOP on.
-- squawk: ignore prefer-robust-stmts: the steps are computed from the catalog; rerun after a failure, the preview holds only the steps still to do (no transaction on purpose: no lock is held across steps)
CREATE FUNCTION tenancy.scope_constraints_sql(tbl regclass DEFAULT NULL) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.stmt FROM (
    SELECT 0 AS g, NULL::int AS step, u.o::int AS n, u.s AS stmt FROM unnest(tenancy.preview_set(true)) WITH ORDINALITY u(s, o)
    UNION ALL
    SELECT 3, NULL, u.o::int, u.s FROM unnest(tenancy.preview_reset()) WITH ORDINALITY u(s, o)
    UNION ALL
    SELECT 1, p.step, s.n, s.stmt
    FROM tenancy.scope_constraints_plan(tbl) p,
         LATERAL (VALUES (0, CASE WHEN p.sql ~ '^CREATE (UNIQUE )?INDEX CONCURRENTLY '
                                  THEN format('SET lock_timeout = %L', '100ms') END),
                         (1, p.sql),
                         (2, format('SELECT tenancy.log_step(%L, %L, %L, %L)',
                                    p.relation::text, p.action, p.sql, p.undo_sql))) s(n, stmt)
    WHERE s.stmt IS NOT NULL
    UNION ALL
    -- last: the tables whose contract phase is now complete reach stage contract
    SELECT 2, NULL, NULL, format('SELECT tenancy.finish_contract(%L)', tbl::text)
    ) x
    ORDER BY x.g, x.step, x.n;
$$;
COMMENT ON FUNCTION tenancy.scope_constraints_sql(regclass) IS 'statements for \gexec that make unique constraints and foreign keys tenant-scoped, each followed by its log_step(), then finish_contract()';

-- Stage contract: a table in stage enforce reaches it once the contract
-- phase is complete, that is its tenant column is NOT NULL and
-- scope_constraints_plan() has nothing left for it.  Called by
-- enforce_not_null() when it ends and by the last statement of
-- scope_constraints_sql(); rollback_table() puts the stage back.  All
-- registered tables when tbl is NULL; returns how many reached contract.
-- For a named table in stage enforce that stays, a NOTICE says why.
CREATE FUNCTION tenancy.finish_contract(tbl regclass DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r    record;
    why  text;
    done integer := 0;
BEGIN
    FOR r IN SELECT t.relation AS rel, t.column_name AS col, t.stage FROM tenancy.tables t
              WHERE (tbl IS NULL OR t.relation = tbl) AND t.stage <> 'contract'
              ORDER BY t.relation::text LOOP
        why := CASE
            WHEN r.stage <> 'enforce' THEN
                format('contract follows stage enforce (tenancy.set_mode(%L, %L))', r.rel::text, 'enforce')
            WHEN NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = r.rel AND a.attname = r.col AND a.attnotnull) THEN
                format('column %I is not NOT NULL yet (CALL tenancy.enforce_not_null(%L))', r.col, r.rel::text)
            WHEN EXISTS (SELECT FROM tenancy.scope_constraints_plan(r.rel)) THEN
                format('constraints are not tenant-scoped yet (SELECT * FROM tenancy.scope_constraints_sql(%L) \gexec)', r.rel::text)
            END;
        IF why IS NULL THEN
            PERFORM tenancy.tables_set_stage(r.rel, 'contract', 'enforce');
            done := done + 1;
        ELSIF tbl IS NOT NULL AND r.stage = 'enforce' THEN
            RAISE NOTICE 'table % stays in stage %: %', r.rel, r.stage, why;
        END IF;
    END LOOP;
    RETURN done;
END
$$;
COMMENT ON FUNCTION tenancy.finish_contract(regclass) IS 'set stage contract on tables in stage enforce whose tenant column is NOT NULL and whose constraints are all tenant-scoped';
REVOKE EXECUTE ON FUNCTION
    tenancy.log_step(regclass, text, text, text),
    tenancy.finish_contract(regclass),
    tenancy.enforce_not_null_plan(regclass),
    tenancy.enforce_not_null_sql(regclass),
    tenancy.scope_constraints_plan(regclass),
    tenancy.scope_constraints_sql(regclass)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE tenancy.enforce_not_null(regclass, interval, integer) FROM PUBLIC;
-- contract_guard(), object_name(), foreign_keys(), partition_indexes() and
-- partitioned_index_steps() read the catalog and nothing else: they stay
-- executable by PUBLIC, so that whoever runs the plan can make it and run its
-- guards, and whoever may run the backfill can name a key.

