-- src/tenant_column.sql: add_tenant_column(): the tenant column without a rewrite.

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
    -- A table whose tenant is derived needs no implicit tenant to default to.
    dflt text := CASE WHEN tenancy.implicit_tenant() IS NULL
                           AND EXISTS (SELECT 1 FROM tenancy.derived_tenants d WHERE d.relation = tbl)
                      THEN tenancy.tenant_accessor() ELSE tenancy.tenant_default_sql() END;
    coltype regtype;
    curdflt text;
    registered name;
    stmts text[] := '{}'::text[];
BEGIN
    IF tbl IS NULL OR column_name IS NULL OR fill_existing IS NULL THEN
        RAISE EXCEPTION 'tbl, column_name and fill_existing must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl);
    IF fill_existing AND tenancy.implicit_tenant() IS NULL THEN
        -- a derived table without an implicit tenant: nothing to fill with
        RAISE EXCEPTION 'no implicit tenant is set'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'fill_existing gives existing rows the implicit tenant.',
                  HINT = 'Backfill the column from the derivation''s source instead (tenancy.backfill(tbl, source => ...)).';
    END IF;
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
        stmts := stmts || format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS %I %s%s', tbl, column_name, keytype,
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

-- squawk: ignore prefer-robust-stmts: no transaction on purpose (each lock as brief as can be); computed from the catalog, a rerun emits only what is missing, and ADD COLUMN has IF NOT EXISTS
CREATE FUNCTION tenancy.add_tenant_column_sql(tbl regclass, column_name name DEFAULT 'tenant_id',
                                              fill_existing boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmts text[] := tenancy.add_tenant_column_ddl(tbl, column_name, fill_existing);
    -- From the catalog, as add_tenant_column_ddl() decides (not from the
    -- statement's text, which quoted names can make say anything).
    adds boolean := NOT EXISTS (SELECT 1 FROM pg_attribute a
                                 WHERE a.attrelid = tbl AND a.attname = add_tenant_column_sql.column_name
                                   AND NOT a.attisdropped);
BEGIN
    IF cardinality(stmts) = 0 THEN
        RETURN '';
    END IF;
    -- A line break in a quoted name would end the comment: each line of the
    -- undo gets its own '-- '.
    RETURN tenancy.preview_wrap(array_to_string(stmts, ';' || chr(10)) || ';') || chr(10)
        || '-- undo: '
        || regexp_replace(format('ALTER TABLE %s %s %I%s;', tbl,
                                 CASE WHEN adds THEN 'DROP COLUMN' ELSE 'ALTER COLUMN' END,
                                 column_name,
                                 CASE WHEN adds THEN '' ELSE ' DROP DEFAULT' END),
                          '\r\n|[\r\n]', chr(10) || '-- ', 'g');
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
            PERFORM pg_sleep_for(tenancy.backoff_delay(attempt, '10ms', '2s'));
        END;
    END LOOP;
    k := tenancy.implicit_tenant();
    PERFORM tenancy.tables_register(tbl, column_name, CASE WHEN fill_existing THEN 'tenant ' || k END);
    IF cardinality(stmts) = 0 THEN
        RAISE NOTICE 'column "%" of relation "%" already exists with the tenant default, nothing to do', column_name, tbl;
        RETURN NULL;
    END IF;
    RETURN array_to_string(stmts, ';' || chr(10)) || ';';
END
$$;
COMMENT ON FUNCTION tenancy.add_tenant_column(regclass, name, boolean, interval, integer) IS 'add the tenant column with no rewrite and a brief lock; returns the DDL run, NULL when there was nothing to do';

-- The entry points are granted by the extension owner to the roles that
-- run the migration (with privileges on tenancy.tables and
-- tenancy.backfill_jobs).  The helpers they call run as the caller and do
-- nothing the caller could not do, so they stay executable.
REVOKE EXECUTE ON FUNCTION
    tenancy.add_tenant_column_sql(regclass, name, boolean),
    tenancy.add_tenant_column(regclass, name, boolean, interval, integer)
FROM PUBLIC;
