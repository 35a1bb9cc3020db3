-- src/erase.sql: erase a departing tenant's rows in small committed batches, child tables first; tenant checksums.

------------------------------------------------------------------------------
-- Erasing a tenant.  CALL tenancy.erase_tenant(tenant) deletes the tenant's
-- rows from every registered table, children before parents (the foreign
-- keys between registered tables), in small batches each committed on its
-- own, sized by the backfill's batch engine (tenancy.backfill_next_size():
-- a target duration per batch, backing off on lock timeouts), throttled by
-- a pause between batches, with its progress in tenancy.tenant_erasures /
-- tenancy.erase_progress.  Interrupted, it resumes where it stopped (a
-- batch deletes whatever of the tenant's rows are left).  It ends with a
-- count check: no row of the tenant may remain.  Refused while the tenant
-- is active (suspend it first: nothing new arrives through set_tenant()),
-- for the implicit tenant, and while a publication's row filter on one of
-- the tables names the tenant (a move in progress: the deletes would
-- replicate and empty the target).
------------------------------------------------------------------------------

-- The erasures: when and by whom, recorded with the tenant registry.
CREATE TABLE tenancy.tenant_erasures (
    tenant        text PRIMARY KEY,
    slug          text NOT NULL,
    state         text NOT NULL
                  CONSTRAINT tenant_erasures_state_check
                  CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'done'])),
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_by    name NOT NULL DEFAULT session_user,
    resumed_at    timestamptz,
    finished_at   timestamptz,
    finished_by   name,
    pid           integer,
    rows_deleted  bigint NOT NULL DEFAULT 0,
    batches       bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE tenancy.tenant_erasures IS 'tenants erased with erase_tenant(): state, who started and finished it, when, rows deleted';
REVOKE ALL ON TABLE tenancy.tenant_erasures FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_erasures', '');

CREATE TABLE tenancy.tenant_erasure_tables (
    tenant        text NOT NULL REFERENCES tenancy.tenant_erasures (tenant) ON DELETE CASCADE,
    relation      regclass NOT NULL,
    ord           integer NOT NULL,
    rows_deleted  bigint NOT NULL DEFAULT 0,
    batches       bigint NOT NULL DEFAULT 0,
    batch_size    integer,
    last_batch_ms numeric,
    done_at       timestamptz,
    PRIMARY KEY (tenant, relation)
);
COMMENT ON TABLE tenancy.tenant_erasure_tables IS 'per table of an erasure: its place in the order, rows deleted, when it was done';
REVOKE ALL ON TABLE tenancy.tenant_erasure_tables FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_erasure_tables', '');

CREATE VIEW tenancy.erase_progress AS
SELECT e.tenant, e.slug, e.state, t.ord, t.relation, t.rows_deleted, t.batches, t.batch_size,
       t.last_batch_ms, t.done_at, e.started_at, e.started_by, e.finished_at, e.finished_by,
       e.state OPERATOR(pg_catalog.=) 'running'
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid OPERATOR(pg_catalog.=) e.pid)
           AS interrupted
  FROM tenancy.tenant_erasures e
  JOIN tenancy.tenant_erasure_tables t ON t.tenant OPERATOR(pg_catalog.=) e.tenant;
COMMENT ON VIEW tenancy.erase_progress IS 'erasures per table, in erase order; interrupted: left running by a backend that is gone';
REVOKE ALL ON TABLE tenancy.erase_progress FROM PUBLIC;

-- Registered tables (not partitions, not shared), children before parents:
-- a table's level is the longest chain of registered tables referencing it.
CREATE FUNCTION tenancy.erase_order()
RETURNS TABLE (ord integer, relation regclass, column_name name)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE t AS (
        SELECT r.relation, r.column_name FROM tenancy.tables r
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.shared_tables s WHERE s.relation = r.relation)
    ), edge AS (          -- child references parent, both registered
        SELECT DISTINCT c.conrelid AS child, c.confrelid AS parent
          FROM pg_constraint c
         WHERE c.contype = 'f' AND c.conrelid <> c.confrelid AND c.conparentid = 0
           AND c.conrelid IN (SELECT t.relation FROM t) AND c.confrelid IN (SELECT t.relation FROM t)
    ), lvl (rel, level) AS (
        SELECT t.relation::oid, 0 FROM t
        UNION ALL
        SELECT e.parent, l.level + 1 FROM lvl l JOIN edge e ON e.child = l.rel
         WHERE l.level < (SELECT count(*) FROM t)      -- a cycle stops here
    )
    SELECT (row_number() OVER (ORDER BY max(l.level), t.relation::text))::integer, t.relation, t.column_name
      FROM t JOIN lvl l ON l.rel = t.relation
     GROUP BY t.relation, t.column_name
     ORDER BY 1;
$$;
COMMENT ON FUNCTION tenancy.erase_order() IS 'registered tables in the order erase_tenant() deletes from them: children before parents';

-- Publications whose row filter on a registered table (or a partition of
-- one) names the tenant's key: a move of that tenant (issue 19) in
-- progress.  Read from the catalog alone, so it holds without the move's
-- own bookkeeping.
CREATE FUNCTION tenancy.erase_blockers(tenant text)
RETURNS TABLE (publication name, relation regclass, row_filter text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.pubname, pr.prrelid::regclass, pg_get_expr(pr.prqual, pr.prrelid)
      FROM pg_publication_rel pr
      JOIN pg_publication p ON p.oid = pr.prpubid
     WHERE pr.prqual IS NOT NULL
       AND strpos(pg_get_expr(pr.prqual, pr.prrelid), tenancy.tenant_key(tenant)) > 0
       AND (pr.prrelid IN (SELECT t.relation FROM tenancy.tables t)
            OR pr.prrelid IN (SELECT a.relid FROM tenancy.tables t,
                                     LATERAL pg_partition_tree(t.relation) a WHERE a.level > 0))
     ORDER BY 1, 2::text;
$$;
COMMENT ON FUNCTION tenancy.erase_blockers(text) IS 'publications whose row filter names the tenant: erase_tenant() refuses while any exists';

-- One batch's statement for a table that holds rows (a leaf: partitioned
-- tables are erased partition by partition): deletes at most $2 of the
-- tenant's rows ($1), found first (by the tenant column's index, where the
-- contract phase built one), then deleted by a TID scan.
CREATE FUNCTION tenancy.erase_batch_sql(rel regclass, column_name name) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('DELETE FROM ONLY %1$s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
                  'SELECT t.ctid FROM ONLY %1$s t WHERE t.%2$I OPERATOR(pg_catalog.=) CAST($1 AS %3$s) LIMIT $2))',
                  rel, column_name, tenancy.type_sql(tenancy.key_type()));
$$;

-- The tables that hold a registered table's rows: itself, or the leaf
-- partitions of a partitioned one.
CREATE FUNCTION tenancy.erase_leaves(rel regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.relid FROM (
        SELECT p.relid::regclass AS relid, p.level FROM pg_partition_tree(rel) p WHERE p.isleaf
        UNION ALL
        SELECT rel, 0 WHERE NOT EXISTS (SELECT 1 FROM pg_partition_tree(rel))) x
     ORDER BY x.level, x.relid::text;
$$;

-- The tenant's rows left in a table.
CREATE FUNCTION tenancy.erase_remaining(rel regclass, column_name name, k text) RETURNS bigint
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (tenancy.table_query(rel, NULL,
                format('SELECT count(*) FROM %s t WHERE t.%I OPERATOR(pg_catalog.=) CAST($1 AS %s)',
                       rel, column_name, tenancy.type_sql(tenancy.key_type())), k))[1]::bigint;
$$;

-- Checks of erase_tenant(): the tenant's key, or an error.
CREATE FUNCTION tenancy.erase_check(tenant text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text;
    t record;
    b record;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    k := tenancy.tenant_key(tenant);
    SELECT r.status, r.is_implicit, r.slug INTO t FROM tenancy.tenants r WHERE r.id::text = k;
    IF t.is_implicit THEN
        RAISE EXCEPTION 'tenant "%" is the implicit tenant', t.slug
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The implicit tenant owns the single-tenant data and the legacy path''s writes.',
                  HINT = 'Make another tenant the implicit one first (tenancy.set_implicit_tenant()).';
    END IF;
    IF t.status <> 'suspended' THEN
        RAISE EXCEPTION 'tenant "%" is %', t.slug, t.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Erasing an active tenant would race with its new writes.',
                  HINT = format('Suspend it first: SELECT tenancy.suspend_tenant(%L);', t.slug);
    END IF;
    SELECT * INTO b FROM tenancy.erase_blockers(k) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'publication "%" replicates tenant "%"', b.publication, t.slug
            USING ERRCODE = 'object_in_use',
                  DETAIL = format('Its row filter on %s is %s: the deletes would replicate and empty the tenant''s copy.',
                                  b.relation, b.row_filter),
                  HINT = 'Finish or roll back the move (drop the subscription and the publication) first.';
    END IF;
    RETURN k;
END
$$;

CREATE FUNCTION tenancy.erase_tenant_sql(tenant text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text := tenancy.erase_check(tenant);
    t record;
    out text := format('-- erase tenant %s: each table in turn, in batches of at most $2 rows, each committed', k);
BEGIN
    FOR t IN SELECT o.ord, o.relation, o.column_name, l.leaf
               FROM tenancy.erase_order() o, LATERAL tenancy.erase_leaves(o.relation) WITH ORDINALITY l(leaf, n)
              ORDER BY o.ord, l.n LOOP
        out := out || chr(10) || tenancy.sql_comment(format('%s. %s (%s rows now)', t.ord, t.leaf::regclass,
                                                            tenancy.erase_remaining(t.leaf, t.column_name, k)))
            || chr(10) || tenancy.erase_batch_sql(t.leaf, t.column_name) || ';';
    END LOOP;
    RETURN out || chr(10) || '-- undo: none (restore the tenant from a backup or an export: scripts/tenancy-export)';
END
$$;
COMMENT ON FUNCTION tenancy.erase_tenant_sql(text) IS 'what erase_tenant() would do: the tables in order with the tenant''s row counts and the batch statement';

-- squawk: ignore prefer-robust-stmts: a batch deletes whatever of the tenant's rows are left: a rerun resumes
CREATE PROCEDURE tenancy.erase_tenant(tenant text, batch_size integer DEFAULT 1000,
                                      min_batch_size integer DEFAULT 10, max_batch_size integer DEFAULT 10000,
                                      batch_time interval DEFAULT '200ms', pause interval DEFAULT '0',
                                      lock_timeout interval DEFAULT '100ms', max_retries integer DEFAULT 50,
                                      max_batches integer DEFAULT NULL)
-- No SET clause (a procedure with one cannot COMMIT): the search_path is
-- pinned at the start and again after each COMMIT, which ends it.
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    k text;
    slug text;
    t record;
    n integer;
    per_row numeric;
    nx record;
    leaf regclass;
    deleted bigint;
    t0 timestamptz;
    ms numeric;
    failures integer;
    done_batches integer := 0;
    remaining bigint;
    other integer;
    stmt text;
    fence record;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'tenancy.erase_tenant() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  DETAIL = 'It commits after each batch.',
                  HINT = 'CALL it on its own, outside BEGIN ... COMMIT.';
    END IF;
    IF batch_size IS NULL OR min_batch_size IS NULL OR max_batch_size IS NULL
       OR NOT (1 <= min_batch_size AND min_batch_size <= batch_size AND batch_size <= max_batch_size)
       OR batch_time IS NULL OR batch_time <= interval '0' OR pause IS NULL OR pause < interval '0'
       OR lock_timeout IS NULL OR lock_timeout <= interval '0' OR max_retries IS NULL OR max_retries < 0
       OR max_batches < 1 THEN
        RAISE EXCEPTION 'invalid erase options'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Need 1 <= min_batch_size <= batch_size <= max_batch_size, positive batch_time and lock_timeout, pause >= 0, max_retries >= 0, max_batches NULL or >= 1.';
    END IF;
    k := tenancy.erase_check(tenant);
    slug := (SELECT r.slug FROM tenancy.tenants r WHERE r.id::text = k);
    -- One erasure of a tenant at a time: a running one whose backend lives.
    SELECT e.pid INTO other FROM tenancy.tenant_erasures e
     WHERE e.tenant = k AND e.state = 'running' AND e.pid <> pg_backend_pid()
       AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = e.pid)
       FOR UPDATE;
    IF FOUND THEN
        RAISE EXCEPTION 'tenant "%" is being erased by process %', slug, other
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (tenancy.erase_progress), or stop it with pg_cancel_backend() and CALL again to resume.';
    END IF;
    INSERT INTO tenancy.tenant_erasures AS e (tenant, slug, state, pid)
    VALUES (k, slug, 'running', pg_backend_pid())
    ON CONFLICT ON CONSTRAINT tenant_erasures_pkey DO UPDATE
       SET state = 'running', pid = pg_backend_pid(), resumed_at = now(), finished_at = NULL, finished_by = NULL;
    INSERT INTO tenancy.tenant_erasure_tables (tenant, relation, ord)
    SELECT k, o.relation, o.ord FROM tenancy.erase_order() o
    ON CONFLICT ON CONSTRAINT tenant_erasure_tables_pkey DO UPDATE SET ord = excluded.ord;
    -- A tenant moved away keeps the move's fence at the source
    -- (tenancy.move_fence_sql()): its INSERT and UPDATE triggers stay, its
    -- DELETE trigger would refuse the erasure's own deletes and goes (what
    -- it refused is what the erasure does).  Triggers on a partitioned table
    -- go with their clones; under lock_timeout, retried.
    FOR fence IN SELECT g.tgrelid::regclass AS rel, g.tgname
                   FROM pg_trigger g
                  WHERE g.tgname = tenancy.move_object_name(k)::text || '_fence_d'
                    AND g.tgparentid = 0 LOOP
        FOR attempt IN 0 .. max_retries LOOP
            BEGIN
                PERFORM pg_catalog.set_config('lock_timeout', ceil(extract(epoch FROM lock_timeout) * 1000)::text || 'ms', true);
                EXECUTE format('DROP TRIGGER %I ON %s', fence.tgname, fence.rel);
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                IF attempt = max_retries THEN RAISE; END IF;
                PERFORM pg_catalog.pg_sleep_for(tenancy.backoff_delay(attempt + 1, interval '50ms', interval '2s'));
            END;
        END LOOP;
    END LOOP;
    PERFORM pg_catalog.set_config('lock_timeout', '0', true);
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    FOR t IN SELECT o.ord, o.relation, o.column_name, et.batch_size
               FROM tenancy.erase_order() o
               JOIN tenancy.tenant_erasure_tables et ON et.tenant = k AND et.relation = o.relation
              ORDER BY o.ord LOOP
        n := coalesce(t.batch_size, batch_size);
        SELECT n AS next_batch, NULL::numeric AS next_per_row, NULL::interval AS sleep INTO nx;
        per_row := NULL;
        failures := 0;
        FOR leaf IN SELECT l FROM tenancy.erase_leaves(t.relation) l LOOP
        stmt := tenancy.erase_batch_sql(leaf, t.column_name);
        LOOP
            IF max_batches IS NOT NULL AND done_batches >= max_batches THEN
                UPDATE tenancy.tenant_erasures e SET pid = NULL WHERE e.tenant = k;
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                RAISE NOTICE 'erase of tenant "%" stopped after % batches at table %', slug, done_batches, leaf
                    USING HINT = 'CALL tenancy.erase_tenant() again to resume.';
                RETURN;
            END IF;
            t0 := clock_timestamp();
            deleted := NULL;
            BEGIN
                PERFORM set_config('lock_timeout', ceil(extract(epoch FROM lock_timeout) * 1000)::text || 'ms', true);
                deleted := tenancy.table_exec(leaf, NULL, stmt, k, n);
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                failures := failures + 1;
                IF failures > max_retries THEN
                    RAISE EXCEPTION 'could not lock "%" in % attempts', leaf, failures
                        USING ERRCODE = 'lock_not_available',
                              DETAIL = 'The batches before are committed.',
                              HINT = 'CALL tenancy.erase_tenant() again when the table is less busy: it resumes.';
                END IF;
            END;
            ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
            IF deleted IS NULL THEN
                SELECT * INTO nx FROM tenancy.backfill_next_size('retry', n, min_batch_size, max_batch_size,
                                                                  ms, extract(epoch FROM batch_time) * 1000, per_row,
                                                                  failures, false);
                n := nx.next_batch;
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                PERFORM pg_sleep_for(nx.sleep);
                CONTINUE;
            END IF;
            failures := 0;
            done_batches := done_batches + 1;
            IF deleted > 0 THEN
                SELECT * INTO nx FROM tenancy.backfill_next_size('ok', n, min_batch_size, max_batch_size,
                                                                  ms, extract(epoch FROM batch_time) * 1000, per_row,
                                                                  0, false);
                per_row := nx.next_per_row;
            END IF;
            UPDATE tenancy.tenant_erasure_tables et
               SET rows_deleted = et.rows_deleted + deleted, batches = et.batches + 1,
                   batch_size = CASE WHEN deleted > 0 THEN nx.next_batch ELSE et.batch_size END,
                   last_batch_ms = round(ms, 1)
             WHERE et.tenant = k AND et.relation = t.relation;
            UPDATE tenancy.tenant_erasures e
               SET rows_deleted = e.rows_deleted + deleted, batches = e.batches + 1
             WHERE e.tenant = k;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            EXIT WHEN deleted < n;
            IF deleted > 0 THEN
                n := nx.next_batch;
            END IF;
            IF pause > interval '0' THEN
                PERFORM pg_sleep_for(pause);
            END IF;
        END LOOP;
        END LOOP;
        UPDATE tenancy.tenant_erasure_tables et SET done_at = now()
         WHERE et.tenant = k AND et.relation = t.relation AND et.done_at IS NULL;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END LOOP;

    -- The count check: nothing of the tenant may remain in any table.
    FOR t IN SELECT * FROM tenancy.erase_order() LOOP
        remaining := tenancy.erase_remaining(t.relation, t.column_name, k);
        IF remaining > 0 THEN
            UPDATE tenancy.tenant_erasures e SET pid = NULL WHERE e.tenant = k;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            RAISE EXCEPTION '% rows of tenant "%" remain in %', remaining, slug, t.relation
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'They were written while the erasure ran (a bound role or a session-level tenant, which suspension does not stop).',
                      HINT = 'Stop those writers and CALL tenancy.erase_tenant() again.';
        END IF;
    END LOOP;
    UPDATE tenancy.tenant_erasures e
       SET state = 'done', pid = NULL, finished_at = now(), finished_by = session_user
     WHERE e.tenant = k;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
END
$$;
COMMENT ON PROCEDURE tenancy.erase_tenant(text, integer, integer, integer, interval, interval, interval, integer, integer)
    IS 'delete a suspended tenant''s rows from every registered table, children first, in committed batches; resumable; ends with a count check';

-- Per registered table: the tenant's rows and a checksum of them, to
-- compare two copies (an export loaded elsewhere, a moved tenant): the
-- move's checksum (tenancy.move_checksums(): the sum of a 64-bit hash of
-- each row, order-free), as the table owner.  Comparable between servers
-- of the same PostgreSQL major version, encoding and byte order.
CREATE FUNCTION tenancy.tenant_checksums(tenant text)
RETURNS TABLE (relation regclass, row_count bigint, checksum text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text := tenancy.tenant_key(tenant);
    rels text[];
    cols name[];
BEGIN
    SELECT array_agg(o.relation::text ORDER BY o.relation::text), array_agg(o.column_name ORDER BY o.relation::text)
      INTO rels, cols FROM tenancy.erase_order() o;
    RETURN QUERY SELECT c.relation::regclass, c.row_count, c.checksum::text
                 FROM tenancy.move_checksums(k, rels, cols) c;
END
$$;
COMMENT ON FUNCTION tenancy.tenant_checksums(text) IS 'per registered table: the tenant''s row count and an order-free checksum of its rows (move_checksums()), to compare two copies';

REVOKE EXECUTE ON FUNCTION
    tenancy.erase_order(),
    tenancy.erase_blockers(text),
    tenancy.erase_batch_sql(regclass, name),
    tenancy.erase_leaves(regclass),
    tenancy.erase_remaining(regclass, name, text),
    tenancy.erase_check(text),
    tenancy.erase_tenant_sql(text),
    tenancy.tenant_checksums(text)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE
    tenancy.erase_tenant(text, integer, integer, integer, interval, interval, interval, integer, integer)
FROM PUBLIC;
