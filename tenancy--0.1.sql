-- tenancy--0.1.sql: install script of the tenancy extension.
-- Everything is schema-qualified; nothing here depends on search_path.

\echo Use "CREATE EXTENSION tenancy" to load this file. \quit

GRANT USAGE ON SCHEMA tenancy TO PUBLIC;

------------------------------------------------------------------------------
-- Tenant keys
------------------------------------------------------------------------------

-- Loads the module, so tenancy.tenant_type is defined from here on.
CREATE FUNCTION tenancy.key_type() RETURNS pg_catalog.regtype
    AS 'MODULE_PATHNAME', 'tenancy_key_type'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.key_type() IS 'type of tenant keys (tenancy.tenant_type)';

CREATE FUNCTION tenancy.normalize_key(key text) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_normalize_key'
    LANGUAGE C STRICT STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.normalize_key(text) IS 'canonical text of a tenant key; 22P02 when malformed';

------------------------------------------------------------------------------
-- Tenant registry
------------------------------------------------------------------------------

-- The key column takes the key type in force at CREATE EXTENSION time.
DO $do$
DECLARE
    keytype text := pg_catalog.format_type(tenancy.key_type(), NULL);
BEGIN
    IF keytype = 'bigint' THEN
        CREATE SEQUENCE tenancy.tenant_key_seq;
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.tenant_key_seq', '');
    END IF;
    EXECUTE pg_catalog.format($sql$
        CREATE TABLE tenancy.tenants (
            id          %s PRIMARY KEY,
            slug        text NOT NULL UNIQUE
                        CONSTRAINT tenants_slug_format
                        CHECK (slug OPERATOR(pg_catalog.~) '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
            name        text NOT NULL,
            status      text NOT NULL DEFAULT 'active'
                        CONSTRAINT tenants_status_check
                        CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['active', 'suspended'])),
            is_implicit boolean NOT NULL DEFAULT false,
            created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
        )$sql$, keytype);
END
$do$;

CREATE UNIQUE INDEX tenants_one_implicit ON tenancy.tenants (is_implicit) WHERE is_implicit;
COMMENT ON TABLE tenancy.tenants IS 'tenant registry: key, slug, name, status; at most one implicit tenant';
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenants', '');

CREATE FUNCTION tenancy.registry_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'tenancy_registry_changed'
    LANGUAGE C;
CREATE TRIGGER tenants_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.registry_changed();

CREATE FUNCTION tenancy.lookup_tenant(tenant text, OUT id text, OUT slug text, OUT status text)
    AS 'MODULE_PATHNAME', 'tenancy_lookup_tenant'
    LANGUAGE C STRICT STABLE;
COMMENT ON FUNCTION tenancy.lookup_tenant(text) IS 'key, slug and status of a tenant named by key or slug; NULL when unknown';

-- The key of a registered tenant named by key or slug, or 42704.
CREATE FUNCTION tenancy.tenant_key(tenant text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text := (tenancy.lookup_tenant(tenant)).id;
BEGIN
    IF k IS NULL THEN
        RAISE EXCEPTION 'tenant "%" does not exist', tenant
            USING ERRCODE = 'undefined_object',
                  HINT = 'Register it with tenancy.create_tenant().';
    END IF;
    RETURN k;
END
$$;
COMMENT ON FUNCTION tenancy.tenant_key(text) IS 'key of a registered tenant named by key or slug';

CREATE FUNCTION tenancy.create_tenant(slug text, name text, id text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keytype text := format_type(tenancy.key_type(), NULL);
    k text;
BEGIN
    IF slug IS NULL OR name IS NULL THEN
        RAISE EXCEPTION 'slug and name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF slug !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' THEN
        RAISE EXCEPTION 'invalid tenant slug "%"', slug
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A slug is 1 to 63 lower-case letters, digits and inner hyphens.',
                  HINT = 'For example: acme-corp.';
    END IF;
    IF id IS NOT NULL THEN
        k := tenancy.normalize_key(id);
    ELSIF keytype = 'uuid' THEN
        k := gen_random_uuid()::text;
    ELSIF keytype = 'bigint' THEN
        k := nextval('tenancy.tenant_key_seq')::text;
    ELSE
        k := slug;
    END IF;
    EXECUTE format('INSERT INTO tenancy.tenants (id, slug, name) VALUES (CAST($1 AS %s), $2, $3)', keytype)
        USING k, slug, name;
    RETURN k;
END
$$;
COMMENT ON FUNCTION tenancy.create_tenant(text, text, text) IS 'register a tenant; returns its key';

CREATE FUNCTION tenancy.suspend_tenant(tenant text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE tenancy.tenants SET status = 'suspended' WHERE id::text = tenancy.tenant_key(tenant);
$$;
COMMENT ON FUNCTION tenancy.suspend_tenant(text) IS 'refuse set_tenant() for this tenant';

CREATE FUNCTION tenancy.activate_tenant(tenant text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE tenancy.tenants SET status = 'active' WHERE id::text = tenancy.tenant_key(tenant);
$$;
COMMENT ON FUNCTION tenancy.activate_tenant(text) IS 'make a suspended tenant active again';

CREATE FUNCTION tenancy.set_implicit_tenant(tenant text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text := tenancy.tenant_key(tenant);
BEGIN
    UPDATE tenancy.tenants SET is_implicit = false WHERE is_implicit AND id::text <> k;
    UPDATE tenancy.tenants SET is_implicit = true WHERE id::text = k AND NOT is_implicit;
    RETURN k;
END
$$;
COMMENT ON FUNCTION tenancy.set_implicit_tenant(text) IS 'mark the tenant that owns the single-tenant data';

CREATE FUNCTION tenancy.implicit_tenant() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT id::text FROM tenancy.tenants WHERE is_implicit;
$$;
COMMENT ON FUNCTION tenancy.implicit_tenant() IS 'key of the implicit tenant, or NULL';

------------------------------------------------------------------------------
-- Registered tenant tables: the tables being migrated, their tenant column,
-- how their tenant is derived and where they stand in the migration.
------------------------------------------------------------------------------

CREATE TABLE tenancy.tables (
    relation      regclass PRIMARY KEY,
    column_name   name NOT NULL DEFAULT 'tenant_id',
    source        text,
    stage         text NOT NULL DEFAULT 'expand'
                  CONSTRAINT tables_stage_check
                  CHECK (stage OPERATOR(pg_catalog.=) ANY (ARRAY['expand', 'backfill', 'migrating', 'shadow', 'enforce', 'contract'])),
    registered_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.tables IS 'tables under migration: tenant column, tenant source, stage';
SELECT pg_catalog.pg_extension_config_dump('tenancy.tables', '');
REVOKE ALL ON TABLE tenancy.tables FROM PUBLIC;

------------------------------------------------------------------------------
-- Tenant context
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.current_tenant() RETURNS uuid
    AS 'MODULE_PATHNAME', 'tenancy_current_tenant'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.current_tenant() IS 'current tenant key (uuid keys); NULL when unset';

CREATE FUNCTION tenancy.current_tenant_bigint() RETURNS bigint
    AS 'MODULE_PATHNAME', 'tenancy_current_tenant_bigint'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.current_tenant_bigint() IS 'current tenant key (bigint keys); NULL when unset';

CREATE FUNCTION tenancy.current_tenant_text() RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_current_tenant_text'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.current_tenant_text() IS 'current tenant key as canonical text (any key type); NULL when unset';

CREATE FUNCTION tenancy.set_tenant(tenant text, is_local boolean DEFAULT true) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_set_tenant'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION tenancy.set_tenant(text, boolean) IS 'set the current tenant by key or slug, for the transaction (default) or the session; returns the key';

CREATE FUNCTION tenancy.clear_tenant() RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_clear_tenant'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION tenancy.clear_tenant() IS 'unset the current tenant for the transaction and the session';

CREATE FUNCTION tenancy.context_stats(
    OUT set_tenant_calls bigint, OUT refused_unknown bigint,
    OUT refused_suspended bigint, OUT refused_session bigint,
    OUT stats_reset timestamptz)
    AS 'MODULE_PATHNAME', 'tenancy_context_stats'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.context_stats() IS 'cluster-wide tenant switches and refusals (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.reset_context_stats() RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_reset_context_stats'
    LANGUAGE C VOLATILE;

------------------------------------------------------------------------------
-- Legacy code path: bind a role to a tenant (by default the implicit one)
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.bind_role_sql(role regrole, tenant text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text := CASE WHEN tenant IS NULL THEN tenancy.implicit_tenant() ELSE tenancy.tenant_key(tenant) END;
    stmt text := '';
BEGIN
    IF k IS NULL THEN
        RAISE EXCEPTION 'no tenant given and no implicit tenant is set'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call tenancy.set_implicit_tenant() first, or name the tenant.';
    END IF;
    -- Role settings are applied before database settings: bind the key type
    -- at the same level, ahead of the key, so the key is parsed with it.
    IF current_setting('tenancy.tenant_type') <> 'uuid' THEN
        stmt := format('ALTER ROLE %I IN DATABASE %I SET tenancy.tenant_type = %L;' || chr(10),
                       role::text, current_database(), current_setting('tenancy.tenant_type'));
    END IF;
    RETURN stmt || format('ALTER ROLE %I IN DATABASE %I SET tenancy.tenant_id = %L;',
                          role::text, current_database(), k);
END
$$;
COMMENT ON FUNCTION tenancy.bind_role_sql(regrole, text) IS 'the ALTER ROLE statements bind_role() would run';

CREATE FUNCTION tenancy.bind_role(role regrole, tenant text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmt text := tenancy.bind_role_sql(role, tenant);
BEGIN
    EXECUTE stmt;
    RETURN stmt;
END
$$;
COMMENT ON FUNCTION tenancy.bind_role(regrole, text) IS 'make a tenant (default: the implicit one) the default tenant of a role in this database';

CREATE FUNCTION tenancy.unbind_role(role regrole) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmt text := format('ALTER ROLE %I IN DATABASE %I RESET tenancy.tenant_id;', role::text, current_database());
BEGIN
    EXECUTE stmt;
    RETURN stmt;
END
$$;
COMMENT ON FUNCTION tenancy.unbind_role(regrole) IS 'undo bind_role()';

------------------------------------------------------------------------------
-- Privileges: application roles use the context functions; the registry
-- and its helpers are for the extension owner and those it grants.
------------------------------------------------------------------------------

REVOKE ALL ON TABLE tenancy.tenants FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION
    tenancy.registry_changed(),
    tenancy.lookup_tenant(text),
    tenancy.tenant_key(text),
    tenancy.create_tenant(text, text, text),
    tenancy.suspend_tenant(text),
    tenancy.activate_tenant(text),
    tenancy.set_implicit_tenant(text),
    tenancy.bind_role_sql(regrole, text),
    tenancy.bind_role(regrole, text),
    tenancy.unbind_role(regrole),
    tenancy.reset_context_stats()
FROM PUBLIC;

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

CREATE FUNCTION tenancy.batch_timeout(ms integer) RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_batch_timeout'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.batch_timeout(integer) IS 'arm the statement timer for one batch (ms > 0) or disarm it';

-- Raised in place of a NULL tenant from a backfill source.
CREATE FUNCTION tenancy.backfill_null_source(anyelement) RETURNS anyelement
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'tenant source gave NULL'
        USING ERRCODE = 'not_null_violation',
              HINT = 'Backfill the parent table first, or pass source => an expression with a fallback, e.g. COALESCE(..., tenancy.implicit_tenant()::uuid).';
END
$$;

-- The DEFAULT of a tenant column: the current tenant when one is set, else
-- the implicit tenant, so legacy writers keep writing valid rows.
CREATE FUNCTION tenancy.tenant_default_sql() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keytype text := format_type(tenancy.key_type(), NULL);
    k text := tenancy.implicit_tenant();
BEGIN
    IF k IS NULL THEN
        RAISE EXCEPTION 'no implicit tenant is set'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Rows written without a current tenant need a tenant to default to.',
                  HINT = 'Call tenancy.set_implicit_tenant() first.';
    END IF;
    RETURN format('COALESCE(tenancy.%s(), %L::%s)',
                  CASE keytype WHEN 'uuid' THEN 'current_tenant'
                               WHEN 'bigint' THEN 'current_tenant_bigint'
                               ELSE 'current_tenant_text' END,
                  k, keytype);
END
$$;
COMMENT ON FUNCTION tenancy.tenant_default_sql() IS 'DEFAULT expression of tenant columns: current tenant, else the implicit one';

-- A table the backfill features accept: errors for views, partitions, ...
CREATE FUNCTION tenancy.check_tenant_table(tbl regclass, allow_partition boolean DEFAULT false) RETURNS "char"
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind "char";
    is_part boolean;
    parent regclass;
BEGIN
    SELECT c.relkind, c.relispartition INTO kind, is_part FROM pg_class c WHERE c.oid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', tbl::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF kind IN ('v', 'm') THEN
        RAISE EXCEPTION '"%" is a %', tbl, CASE kind WHEN 'v' THEN 'view' ELSE 'materialized view' END
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Add the tenant column to the tables under it.';
    ELSIF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', tbl
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF is_part AND NOT allow_partition THEN
        SELECT i.inhparent::regclass INTO parent FROM pg_inherits i WHERE i.inhrelid = tbl;
        RAISE EXCEPTION '"%" is a partition of "%"', tbl, parent
            USING ERRCODE = 'wrong_object_type',
                  HINT = format('Use the partitioned table %s: its partitions follow.', parent);
    END IF;
    RETURN kind;
END
$$;

-- The statements add_tenant_column() runs, in order (empty: nothing to do).
CREATE FUNCTION tenancy.add_tenant_column_ddl(tbl regclass, column_name name, fill_existing boolean)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    keytype regtype := tenancy.key_type();
    dflt text := tenancy.tenant_default_sql();
    coltype regtype;
    curdflt text;
    registered name;
    stmts text[] := '{}';
BEGIN
    IF tbl IS NULL OR column_name IS NULL OR fill_existing IS NULL THEN
        RAISE EXCEPTION 'tbl, column_name and fill_existing must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl);
    SELECT t.column_name INTO registered FROM tenancy.tables t WHERE t.relation = tbl;
    IF registered IS NOT NULL AND registered <> column_name THEN
        RAISE EXCEPTION 'table "%" is registered with tenant column "%"', tbl, registered
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Pass column_name => ' || quote_literal(registered) || ', or update tenancy.tables.';
    END IF;
    SELECT a.atttypid::regtype, pg_get_expr(d.adbin, d.adrelid)
      INTO coltype, curdflt
      FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = tbl AND a.attname = column_name AND NOT a.attisdropped;
    IF NOT FOUND THEN
        stmts := stmts || format('ALTER TABLE %s ADD COLUMN %I %s%s', tbl, column_name, keytype,
                                 CASE WHEN fill_existing
                                      THEN format(' DEFAULT %L::%s', tenancy.implicit_tenant(), keytype)
                                      ELSE '' END);
    ELSIF coltype <> keytype THEN
        RAISE EXCEPTION 'column "%" of relation "%" is of type %, but tenant keys are of type %',
                        column_name, tbl, format_type(coltype, NULL), format_type(keytype, NULL)
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Pick another column_name, or change tenancy.tenant_type.';
    ELSIF fill_existing THEN
        RAISE NOTICE 'column "%" of relation "%" already exists: fill_existing is ignored', column_name, tbl;
    END IF;
    IF curdflt IS DISTINCT FROM dflt THEN
        stmts := stmts || format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', tbl, column_name, dflt);
    END IF;
    RETURN stmts;
END
$$;

CREATE FUNCTION tenancy.add_tenant_column_sql(tbl regclass, column_name name DEFAULT 'tenant_id',
                                              fill_existing boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmts text[] := tenancy.add_tenant_column_ddl(tbl, column_name, fill_existing);
BEGIN
    IF cardinality(stmts) = 0 THEN
        RETURN '';
    END IF;
    RETURN array_to_string(stmts, ';' || chr(10)) || ';' || chr(10)
        || format('-- undo: ALTER TABLE %s %s %I%s;', tbl,
                  CASE WHEN stmts[1] LIKE '% ADD COLUMN %' THEN 'DROP COLUMN' ELSE 'ALTER COLUMN' END,
                  column_name,
                  CASE WHEN stmts[1] LIKE '% ADD COLUMN %' THEN '' ELSE ' DROP DEFAULT' END);
END
$$;
COMMENT ON FUNCTION tenancy.add_tenant_column_sql(regclass, name, boolean) IS 'the DDL add_tenant_column() would run, and how to undo it';

CREATE FUNCTION tenancy.add_tenant_column(tbl regclass, column_name name DEFAULT 'tenant_id',
                                          fill_existing boolean DEFAULT false,
                                          lock_timeout interval DEFAULT '100ms',
                                          max_attempts integer DEFAULT 50)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    stmts text[];
    wait_ms integer := 10;
    k text;
BEGIN
    IF lock_timeout IS NULL OR lock_timeout <= interval '0' OR max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'lock_timeout must be positive and max_attempts at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR attempt IN 1 .. max_attempts LOOP
        BEGIN
            -- The ACCESS EXCLUSIVE lock is only ever waited for briefly: a
            -- long wait would queue every reader of the table behind us.
            PERFORM set_config('lock_timeout', ceil(extract(epoch FROM lock_timeout) * 1000)::text || 'ms', true);
            stmts := tenancy.add_tenant_column_ddl(tbl, column_name, fill_existing);
            IF cardinality(stmts) > 0 THEN
                -- Lock first, then re-read the catalog under the lock.
                EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl);
                stmts := tenancy.add_tenant_column_ddl(tbl, column_name, fill_existing);
                FOR i IN 1 .. cardinality(stmts) LOOP
                    EXECUTE stmts[i];
                END LOOP;
            END IF;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = max_attempts THEN
                RAISE EXCEPTION 'could not lock table "%" after % attempts', tbl, max_attempts
                    USING ERRCODE = 'lock_not_available',
                          DETAIL = format('Each attempt waited at most %s ms for the ACCESS EXCLUSIVE lock.',
                                         round(extract(epoch FROM lock_timeout) * 1000)),
                          HINT = 'Long transactions on the table hold it; retry later or raise lock_timeout.';
            END IF;
            PERFORM pg_sleep((wait_ms * (0.5 + random())) / 1000.0);
            wait_ms := least(wait_ms * 2, 2000);
        END;
    END LOOP;
    k := tenancy.implicit_tenant();
    INSERT INTO tenancy.tables (relation, column_name, source)
    VALUES (tbl, column_name, CASE WHEN fill_existing THEN 'tenant ' || k END)
    ON CONFLICT (relation) DO NOTHING;
    IF cardinality(stmts) = 0 THEN
        RAISE NOTICE 'column "%" of relation "%" already exists with the tenant default, nothing to do', column_name, tbl;
        RETURN NULL;
    END IF;
    RETURN array_to_string(stmts, ';' || chr(10)) || ';';
END
$$;
COMMENT ON FUNCTION tenancy.add_tenant_column(regclass, name, boolean, interval, integer) IS 'add the tenant column with no rewrite and a brief lock; returns the DDL run, NULL when there was nothing to do';

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
    created_by    name NOT NULL DEFAULT CURRENT_USER,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at    timestamptz,
    updated_at    timestamptz,
    finished_at   timestamptz
);
CREATE UNIQUE INDEX backfill_jobs_one_open ON tenancy.backfill_jobs (relation, column_name)
    WHERE state OPERATOR(pg_catalog.<>) 'done';
COMMENT ON TABLE tenancy.backfill_jobs IS 'backfill jobs: source, state, cursor, counters, rate, batch size, throttle reason, ETA';
SELECT pg_catalog.pg_extension_config_dump('tenancy.backfill_jobs', '');
REVOKE ALL ON TABLE tenancy.backfill_jobs FROM PUBLIC;

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
    con record;
    pcol name;
    pcoltype regtype;
    job_id bigint;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tbl must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl, true);
    IF col IS NULL THEN
        col := coalesce((SELECT t.column_name FROM tenancy.tables t WHERE t.relation = tbl), 'tenant_id');
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

    -- An open job (queued, running, paused, failed) is resumed.
    SELECT * INTO job FROM tenancy.backfill_jobs j
     WHERE j.relation = tbl AND j.column_name = col AND j.state <> 'done'
       FOR UPDATE;
    IF FOUND THEN
        IF nsources > 0 AND (job.source_kind, job.source) IS DISTINCT FROM
               (CASE WHEN tenant IS NOT NULL THEN 'tenant' WHEN source IS NOT NULL THEN 'expression' ELSE 'foreign_key' END,
                CASE WHEN tenant IS NOT NULL THEN tenancy.tenant_key(tenant) ELSE coalesce(source, via::text) END) THEN
            RAISE EXCEPTION 'an unfinished backfill of "%" has another source', tbl
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = format('Job %s (%s) fills %I from %s %s.', job.id, job.state, col, job.source_kind, job.source),
                      HINT = 'Call tenancy.backfill() without a source to resume it, or delete it from tenancy.backfill_jobs.';
        END IF;
        UPDATE tenancy.backfill_jobs j SET options = j.options || coalesce(backfill_job.options, '{}')
         WHERE j.id = job.id;
        RETURN job.id;
    END IF;

    IF via IS NOT NULL THEN
        SELECT c.oid, c.confrelid::regclass AS parent, c.conkey, c.confkey INTO con
          FROM pg_constraint c
         WHERE c.conrelid = tbl AND c.conname = via AND c.contype = 'f';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'foreign key "%" of relation "%" does not exist', via, tbl
                USING ERRCODE = 'undefined_object',
                      HINT = 'Name a foreign key constraint of the table (\d shows them).';
        END IF;
        pcol := coalesce((SELECT t.column_name FROM tenancy.tables t WHERE t.relation = con.parent), 'tenant_id');
        SELECT a.atttypid::regtype INTO pcoltype FROM pg_attribute a
         WHERE a.attrelid = con.parent AND a.attname = pcol AND NOT a.attisdropped;
        IF pcoltype IS DISTINCT FROM keytype THEN
            RAISE EXCEPTION 'parent table "%" has no tenant column "%"', con.parent, pcol
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Add and backfill the tenant column of the parent first.';
        END IF;
        kind := 'foreign_key';
        src := via;
        SELECT format('(SELECT p.%I FROM %s p WHERE %s)', pcol, con.parent,
                      string_agg(format('p.%I = t.%I', pa.attname, ca.attname), ' AND ' ORDER BY k.i))
          INTO val
          FROM unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(ck, pk, i)
          JOIN pg_attribute ca ON ca.attrelid = tbl AND ca.attnum = k.ck
          JOIN pg_attribute pa ON pa.attrelid = con.parent AND pa.attnum = k.pk;
        val := format('COALESCE(%s, tenancy.backfill_null_source(NULL::%s))', val, keytype);
    ELSIF source IS NOT NULL THEN
        kind := 'expression';
        src := source;
        -- Type-check without evaluating: the type of a scalar subquery, with
        -- names resolved as the caller (and later the batches) see them.
        PERFORM set_config('search_path', caller_search_path, true);
        EXECUTE format('SELECT pg_typeof((SELECT (%s) FROM %s t LIMIT 0))::regtype', source, tbl) INTO exprtype;
        PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
        IF exprtype <> keytype THEN
            RAISE EXCEPTION 'backfill source is of type %, but column "%" is of type %',
                            format_type(exprtype, NULL), col, format_type(keytype, NULL)
                USING ERRCODE = 'datatype_mismatch',
                      HINT = format('Cast it: (%s)::%s.', source, format_type(keytype, NULL));
        END IF;
        val := format('COALESCE((%s), tenancy.backfill_null_source(NULL::%s))', source, keytype);
    ELSE
        kind := 'tenant';
        IF tenant IS NULL AND tenancy.implicit_tenant() IS NULL THEN
            RAISE EXCEPTION 'no tenant source given and no implicit tenant is set'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Pass tenant =>, source => or via =>, or call tenancy.set_implicit_tenant().';
        END IF;
        src := tenancy.tenant_key(coalesce(tenant, tenancy.implicit_tenant()));
        val := format('%L::%s', src, keytype);
    END IF;

    -- Filling a column of a unique index changes a key: row locks become
    -- FOR UPDATE, which blocks foreign-key checks of inserts into children.
    IF EXISTS (SELECT FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
                WHERE x.indrelid = tbl AND x.indisunique AND a.attname = col) THEN
        RAISE WARNING 'column "%" of "%" is part of a unique index', col, tbl
            USING DETAIL = 'Filling it locks each row FOR UPDATE instead of FOR NO KEY UPDATE, which blocks inserts into tables referencing it until each batch commits.',
                  HINT = 'Create unique indexes that include the tenant column after the backfill.';
    END IF;
    INSERT INTO tenancy.backfill_jobs (relation, column_name, source_kind, source, value_sql, search_path, options)
    VALUES (tbl, col, kind, src, val, caller_search_path, coalesce(options, '{}'))
    RETURNING id INTO job_id;
    INSERT INTO tenancy.tables (relation, column_name, source)
    VALUES (tbl, col, replace(kind, '_', ' ') || ' ' || src)
    ON CONFLICT (relation) DO UPDATE SET source = EXCLUDED.source WHERE tables.source IS NULL;
    RETURN job_id;
END
$$;

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
                                       compact_indexes boolean DEFAULT NULL)
RETURNS bigint
-- No SET clause: the job keeps the caller's search_path for its source.
LANGUAGE sql AS $$
    SELECT tenancy.backfill_job(tbl, column_name, tenant, source, via,
        tenancy.backfill_options(batch_size, min_batch_size, max_batch_size, target_batch_time, lock_timeout,
                                 statement_timeout, pause, NULL, max_replication_lag, NULL, max_retries,
                                 compact_indexes),
        pg_catalog.current_setting('search_path'));
$$;
COMMENT ON FUNCTION tenancy.queue_backfill(regclass, text, text, name, name, integer, integer, integer, interval, interval, interval, interval, interval, integer, boolean)
    IS 'record a backfill job (state queued) for the background worker or a later CALL tenancy.backfill(tbl); returns its id';

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
    compact_indexes boolean DEFAULT NULL)
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
    kcols       text;
    rowk        text;
    lo_e        text;
    hi_e        text;
    ktext       text;
    keytypes    text[];
    sql_hi_first text;
    sql_hi      text;
    sql_up_first text;
    sql_up      text;
    setv        text;
    sql_tid     text;
    sql_sweep   text;
    sql_find    text;
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
    run_rows    bigint := 0;
    run_scanned bigint := 0;
    v_rate      numeric;
    v_eta       interval;
    next_notice timestamptz;
    failures    integer := 0;
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
    sweep_rows  bigint := 0;
    quiet_sweeps integer := 0;
BEGIN
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
    IF NOT tenancy.backfill_try_lock(tbl) THEN
        RAISE EXCEPTION 'a backfill of "%" is already running', tbl
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it to finish, or stop it (pg_cancel_backend) and CALL again to resume; tenancy.backfill_progress shows it.';
    END IF;
    job_id := tenancy.backfill_job(tbl, column_name, tenant, source, via,
                  tenancy.backfill_options(batch_size, min_batch_size, max_batch_size, target_batch_time,
                      lock_timeout, statement_timeout, pause, NULL, max_replication_lag, progress_interval,
                      max_retries, compact_indexes),
                  pg_catalog.current_setting('search_path'));
    SELECT * INTO job FROM tenancy.backfill_jobs j WHERE j.id = job_id;
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
        -- First run: choose the method and freeze the upper bound.
        SELECT array_agg(a.attname ORDER BY k.i) INTO job.key_columns
          FROM pg_catalog.pg_index x
          CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
         WHERE x.indrelid = tbl AND x.indisprimary;
        job.method := CASE WHEN job.key_columns IS NULL THEN 'ctid' ELSE 'primary key' END;
        IF job.method = 'ctid' AND is_parted THEN
            RAISE EXCEPTION 'partitioned table "%" has no primary key', tbl
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Backfill each partition on its own, or add a primary key.';
        END IF;
        SELECT sum(greatest(c.reltuples, 0))::bigint INTO job.rows_total
          FROM pg_catalog.pg_partition_tree(tbl) pt JOIN pg_catalog.pg_class c ON c.oid = pt.relid
         WHERE pt.isleaf;
        IF coalesce(job.rows_total, 0) = 0 OR pg_catalog.pg_total_relation_size(tbl) < 64 * 1024 * 1024 THEN
            EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s%s', CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl)
               INTO job.rows_total;
        END IF;
        -- Nothing NULL (a second run): done at once, after one scan.
        EXECUTE pg_catalog.format('SELECT NOT EXISTS (SELECT FROM %s%s t WHERE t.%I IS NULL)',
                                  CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, job.column_name)
           INTO last_batch;
        IF last_batch THEN
            job.phase := 'done';
        ELSIF job.method = 'primary key' THEN
            EXECUTE pg_catalog.format('SELECT ARRAY[%s] FROM %s%s t ORDER BY %s DESC LIMIT 1',
                (SELECT string_agg(pg_catalog.format('t.%I::text', k), ', ') FROM unnest(job.key_columns) k),
                CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl,
                (SELECT string_agg(pg_catalog.format('t.%I', k), ' DESC, ') FROM unnest(job.key_columns) k))
               INTO job.upper_bound;
            job.phase := 'batches';
        ELSE
            job.upper_bound := ARRAY[(pg_catalog.pg_relation_size(tbl) / pg_catalog.current_setting('block_size')::bigint)::text];
            job.cursor := ARRAY['0'];
            job.phase := 'batches';
        END IF;
        UPDATE tenancy.backfill_jobs j
           SET method = job.method, key_columns = job.key_columns, upper_bound = job.upper_bound,
               cursor = job.cursor, phase = job.phase, rows_total = job.rows_total
         WHERE j.id = job_id;
    END IF;
    UPDATE tenancy.backfill_jobs j
       SET state = 'running', pid = pg_catalog.pg_backend_pid(), started_at = coalesce(j.started_at, pg_catalog.now()),
           throttle = NULL, last_error = NULL, batch_size = n, updated_at = pg_catalog.now()
     WHERE j.id = job_id;
    UPDATE tenancy.tables t SET stage = 'backfill' WHERE t.relation = tbl AND t.stage = 'expand';
    COMMIT;

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
    setv := pg_catalog.format('%I = %s', job.column_name, job.value_sql);
    IF NOT coalesce((o->>'compact_indexes')::boolean, false) THEN
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
        SELECT array_agg(pg_catalog.format_type(a.atttypid, a.atttypmod) ORDER BY k.i) INTO keytypes
          FROM unnest(job.key_columns) WITH ORDINALITY AS k(name, i)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = tbl AND a.attname = k.name;
        SELECT string_agg(pg_catalog.format('t.%I', k), ', ' ORDER BY i),
               string_agg(pg_catalog.format('$1[%s]::%s', i, keytypes[i]), ', ' ORDER BY i),
               string_agg(pg_catalog.format('$2[%s]::%s', i, keytypes[i]), ', ' ORDER BY i),
               string_agg(pg_catalog.format('t.%I::text', k), ', ' ORDER BY i)
          INTO kcols, lo_e, hi_e, ktext
          FROM unnest(job.key_columns) WITH ORDINALITY AS u(k, i);
        rowk := '(' || kcols || ')';
        lo_e := '(' || lo_e || ')';
        hi_e := '(' || hi_e || ')';
        sql_hi := pg_catalog.format('SELECT ARRAY[%s] FROM %s%s t WHERE %s > %s AND %s <= %s ORDER BY %s OFFSET $3 LIMIT 1',
                                    ktext, CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, rowk, lo_e, rowk, hi_e, kcols);
        sql_hi_first := pg_catalog.format('SELECT ARRAY[%s] FROM %s%s t WHERE %s <= %s ORDER BY %s OFFSET $3 LIMIT 1',
                                          ktext, CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, rowk, hi_e, kcols);
        sql_up := pg_catalog.format('UPDATE %s%s AS t SET %s WHERE %s > %s AND %s <= %s AND t.%I IS NULL',
                                    CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, setv,
                                    rowk, lo_e, rowk, hi_e, job.column_name);
        sql_up_first := pg_catalog.format('UPDATE %s%s AS t SET %s WHERE %s <= %s AND t.%I IS NULL',
                                          CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, setv,
                                          rowk, hi_e, job.column_name);
        sql_find := pg_catalog.format('SELECT pg_catalog.format(%L, %s) FROM %s%s t WHERE t.%I IS NULL LIMIT 1',
                                      '(' || (SELECT string_agg(pg_catalog.quote_ident(k), ', ') FROM unnest(job.key_columns) k) || ')=('
                                          || pg_catalog.repeat('%s, ', cardinality(job.key_columns) - 1) || '%s)',
                                      kcols, CASE WHEN is_parted THEN '' ELSE 'ONLY ' END, qtbl, job.column_name);
    ELSE
        sql_find := pg_catalog.format('SELECT pg_catalog.format(''ctid %%s'', t.ctid) FROM ONLY %s t WHERE t.%I IS NULL LIMIT 1',
                                      qtbl, job.column_name);
    END IF;
    -- Block ranges (tables without a primary key, and the sweep).
    sql_tid := pg_catalog.format('UPDATE ONLY %s AS t SET %s WHERE t.ctid >= $1 AND t.ctid < $2 AND t.%I IS NULL',
                                 qtbl, setv, job.column_name);
    -- The sweep of a partitioned table: NULLs found by a scan, updated by TID.
    sql_sweep := pg_catalog.format(
        'WITH c AS MATERIALIZED (SELECT s.tableoid AS r, s.ctid AS c FROM %s s WHERE s.%I IS NULL LIMIT $1), '
        'u AS (UPDATE %s AS t SET %s WHERE (t.tableoid, t.ctid) IN (SELECT c.r, c.c FROM c) AND t.%I IS NULL RETURNING 1) '
        'SELECT (SELECT pg_catalog.count(*) FROM c), (SELECT pg_catalog.count(*) FROM u)',
        qtbl, job.column_name, qtbl, setv, job.column_name);
    SELECT CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages ELSE 100 END
      INTO rows_per_block FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    UPDATE tenancy.backfill_jobs j SET batch_sql = CASE WHEN job.method = 'primary key' THEN sql_up ELSE sql_tid END
     WHERE j.id = job_id;
    COMMIT;
    -- pg_stat_activity shows the table and the progress in application_name.
    appname := 'tenancy.backfill ' || qtbl;
    lo := job.cursor;
    ub := job.upper_bound;

    LOOP
        EXIT WHEN job.phase = 'done';
        -- Stop at max_runtime: the job is paused and the next CALL resumes it.
        IF max_run_s IS NOT NULL AND pg_catalog.clock_timestamp() - t_start >= pg_catalog.make_interval(secs => max_run_s::double precision) THEN
            UPDATE tenancy.backfill_jobs j SET state = 'paused', pid = NULL, throttle = 'max_runtime reached',
                   updated_at = pg_catalog.now() WHERE j.id = job_id;
            COMMIT;
            PERFORM tenancy.backfill_unlock(tbl);
            PERFORM pg_catalog.set_config('application_name', orig_appname, false);
            RAISE NOTICE 'backfill of % paused at max_runtime after % rows; CALL tenancy.backfill(%) again to resume',
                tbl, job.rows_done, pg_catalog.quote_literal(tbl::text);
            RETURN;
        END IF;
        -- Hold while a standby replays too far behind.
        IF max_lag IS NOT NULL THEN
            lag := (SELECT max(r.replay_lag) FROM pg_catalog.pg_stat_replication r);
            IF lag > max_lag THEN
                UPDATE tenancy.backfill_jobs j SET throttle = pg_catalog.format('replication lag %s > %s', lag, max_lag),
                       updated_at = pg_catalog.now() WHERE j.id = job_id;
                COMMIT;
                PERFORM pg_catalog.pg_sleep(0.5);
                CONTINUE;
            END IF;
        END IF;

        outcome := 'ok';
        t0 := pg_catalog.clock_timestamp();
        BEGIN
            PERFORM pg_catalog.set_config('lock_timeout', lt_ms::text, true),
                    pg_catalog.set_config('application_name', pg_catalog.left(pg_catalog.format('%s %s', appname,
                        CASE WHEN job.phase = 'sweep' THEN 'sweep'
                             ELSE round(100.0 * least(job.rows_scanned, job.rows_total) / greatest(job.rows_total, 1)) || '%' END), 63), false),
                    pg_catalog.set_config('search_path', job.search_path, true),
                    tenancy.batch_timeout(CASE WHEN job.phase = 'sweep' AND is_parted THEN 0 ELSE st_ms END);
            IF job.phase = 'batches' AND job.method = 'primary key' THEN
                IF lo IS NULL THEN
                    EXECUTE sql_hi_first INTO hi USING lo, ub, n - 1;
                ELSE
                    EXECUTE sql_hi INTO hi USING lo, ub, n - 1;
                END IF;
                last_batch := hi IS NULL;
                hi := coalesce(hi, ub);
                IF lo IS NULL THEN
                    EXECUTE sql_up_first USING lo, hi;
                ELSE
                    EXECUTE sql_up USING lo, hi;
                END IF;
                GET DIAGNOSTICS updated = ROW_COUNT;
            ELSIF is_parted THEN
                EXECUTE sql_sweep INTO found_rows, updated USING n;
                last_batch := found_rows = 0;
            ELSE
                hi := ARRAY[least(lo[1]::bigint + pg_catalog.ceil(n / rows_per_block)::bigint, ub[1]::bigint)::text];
                last_batch := hi[1]::bigint >= ub[1]::bigint;
                EXECUTE sql_tid USING pg_catalog.format('(%s,0)', lo[1])::tid, pg_catalog.format('(%s,0)', hi[1])::tid;
                GET DIAGNOSTICS updated = ROW_COUNT;
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
        ms := extract(epoch FROM pg_catalog.clock_timestamp() - t0) * 1000;

        IF outcome = 'ok' THEN
            failures := 0;
            IF job.phase = 'batches' THEN
                run_scanned := run_scanned + n;
                job.rows_scanned := job.rows_scanned + n;
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
            -- Adapt the batch size to the target duration: smoothed per-row
            -- cost, growth at most 1.2x a step, halving after a batch over
            -- twice the target.
            per_row := CASE WHEN per_row IS NULL THEN ms / n ELSE 0.7 * per_row + 0.3 * ms / n END;
            IF ms > 2 * target_ms THEN
                n := greatest(n / 2, nmin);
            ELSE
                n := least(pg_catalog.ceil(n * 1.2)::bigint,
                                      greatest(pg_catalog.floor(target_ms / greatest(per_row, 0.00001))::bigint, n / 2));
                n := least(greatest(n, nmin),
                                      CASE WHEN job.phase = 'sweep' THEN 10 * nmax ELSE nmax END);
            END IF;
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
                    SELECT CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages ELSE 100 END
                      INTO rows_per_block FROM pg_catalog.pg_class c WHERE c.oid = tbl;
                END IF;
            END IF;
            UPDATE tenancy.backfill_jobs j
               SET cursor = lo, upper_bound = ub, phase = job.phase, rows_scanned = job.rows_scanned,
                   rows_done = job.rows_done, batches = job.batches, batch_size = n,
                   last_batch_ms = round(ms, 1), max_batch_ms = greatest(j.max_batch_ms, round(ms, 1)),
                   rate = round(v_rate), eta = date_trunc('second', v_eta),
                   throttle = CASE WHEN pause_s > 0 AND job.phase <> 'done'
                                   THEN pg_catalog.format('pause %s ms between batches', round(pause_s * 1000)) END,
                   updated_at = pg_catalog.now(),
                   state = CASE WHEN job.phase = 'done' THEN 'done' ELSE 'running' END,
                   finished_at = CASE WHEN job.phase = 'done' THEN pg_catalog.now() END,
                   pid = CASE WHEN job.phase = 'done' THEN NULL ELSE j.pid END
             WHERE j.id = job_id;
            COMMIT;
            RAISE DEBUG 'tenancy.backfill % batch %: % rows updated in % ms', tbl, job.batches, updated, round(ms, 1);
            IF pg_catalog.clock_timestamp() >= next_notice AND job.phase <> 'done' THEN
                RAISE NOTICE 'backfill of %: % of ~% rows (% %%), % rows updated, % rows/s, ETA %',
                    tbl, job.rows_scanned, job.rows_total,
                    round(100.0 * least(job.rows_scanned, job.rows_total) / greatest(job.rows_total, 1), 1),
                    job.rows_done, round(v_rate), coalesce(date_trunc('second', v_eta)::text, 'unknown (sweep)');
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
            IF outcome = 'timeout' OR failures % 3 = 0 THEN
                n := greatest(n / 2, 1);
            END IF;
            IF failures > retry_limit THEN
                err_msg := pg_catalog.format('backfill of %s gave up after %s retries: %s', tbl, retry_limit, err_msg);
                outcome := 'fail';
            ELSE
                UPDATE tenancy.backfill_jobs j
                   SET retries = job.retries, batch_size = n, updated_at = pg_catalog.now(),
                       throttle = pg_catalog.format('%s, retry %s', CASE outcome WHEN 'timeout' THEN 'statement timeout'
                                                                                ELSE err_msg END, failures)
                 WHERE j.id = job_id;
                COMMIT;
                PERFORM pg_catalog.pg_sleep(least(0.01 * 2 ^ least(failures, 10), 5) * (0.5 + pg_catalog.random()));
            END IF;
        ELSIF outcome = 'error' AND n > 1 THEN
            -- An error from the data: narrow the batch down to the failing row.
            n := greatest(n / 2, 1);
            outcome := 'narrow';
        END IF;

        IF outcome IN ('cancel', 'fail', 'error') THEN
            IF outcome = 'error' THEN
                IF job.phase = 'batches' AND job.method = 'primary key' THEN
                    SELECT '(' || string_agg(pg_catalog.quote_ident(k), ', ') || ')=(' || pg_catalog.array_to_string(hi, ', ') || ')'
                      INTO failing FROM unnest(job.key_columns) k;
                ELSE
                    BEGIN
                        EXECUTE sql_find INTO failing;
                    EXCEPTION WHEN OTHERS THEN
                        failing := NULL;
                    END;
                END IF;
                err_msg := pg_catalog.format('backfill of %s failed at row %s: %s', tbl, coalesce(failing, '?'), err_msg);
            END IF;
            UPDATE tenancy.backfill_jobs j
               SET state = 'failed', pid = NULL, last_error = err_msg, throttle = NULL, batch_size = n,
                   updated_at = pg_catalog.now()
             WHERE j.id = job_id;
            -- Restored before the COMMIT: the RAISE below aborts the next transaction.
            PERFORM pg_catalog.set_config('application_name', orig_appname, false);
            COMMIT;
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
        UPDATE tenancy.backfill_jobs j SET state = 'done', phase = 'done', pid = NULL, updated_at = pg_catalog.now(),
               finished_at = pg_catalog.now()
         WHERE j.id = job_id;
        COMMIT;
    END IF;
    PERFORM tenancy.backfill_unlock(tbl);
    PERFORM pg_catalog.set_config('application_name', orig_appname, false);
    IF job.batches = 0 THEN
        RAISE NOTICE 'backfill of %: no NULL in column %, nothing to do', tbl, pg_catalog.quote_ident(job.column_name);
    ELSE
        RAISE NOTICE 'backfill of % done: % rows updated', tbl, job.rows_done;
    END IF;
END
$$;
COMMENT ON PROCEDURE tenancy.backfill(regclass, text, text, name, name, integer, integer, integer, interval, interval, interval, interval, interval, interval, interval, integer, boolean)
    IS 'fill NULL tenant values in committed batches from a tenant, an expression or a foreign key; resumable';

-- The entry points are granted by the extension owner to the roles that
-- run the migration (with privileges on tenancy.tables and
-- tenancy.backfill_jobs).  The helpers they call run as the caller and do
-- nothing the caller could not do, so they stay executable.
REVOKE EXECUTE ON FUNCTION
    tenancy.add_tenant_column_sql(regclass, name, boolean),
    tenancy.add_tenant_column(regclass, name, boolean, interval, integer),
    tenancy.queue_backfill(regclass, text, text, name, name, integer, integer, integer, interval, interval, interval, interval, interval, integer, boolean)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE
    tenancy.backfill(regclass, text, text, name, name, integer, integer, integer, interval, interval, interval, interval, interval, interval, interval, integer, boolean)
FROM PUBLIC;
