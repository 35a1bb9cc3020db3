-- src/common.sql: helpers several capabilities share: catalog readers, preview SET/RESET lines, the lock-retry backoff.

-- The wait before retry number attempt (1, 2, ...) of a lock that timed
-- out: base doubled per attempt up to cap, times a jitter in [0.5, 1.5)
-- so that waiters spread out.  The one backoff of add_tenant_column(),
-- enforce_not_null() and backfill().
CREATE FUNCTION tenancy.backoff_delay(attempt integer, base interval, cap interval) RETURNS interval
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF attempt IS NULL OR base IS NULL OR cap IS NULL THEN
        RAISE EXCEPTION 'arguments must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF attempt < 1 OR base <= interval '0' OR cap < base THEN
        RAISE EXCEPTION 'attempt must be at least 1, base positive and cap at least base'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN least(base * 2 ^ least(attempt - 1, 30), cap) * (0.5 + random());
END
$$;
COMMENT ON FUNCTION tenancy.backoff_delay(integer, interval, interval)
    IS 'the jittered exponential wait before retry number attempt of a lock: least(base * 2^(attempt-1), cap) * [0.5, 1.5)';

-- The accessor a policy compares the tenant column with, for the key type.
CREATE FUNCTION tenancy.tenant_accessor() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE format_type(tenancy.key_type(), NULL)
           WHEN 'uuid' THEN 'tenancy.current_tenant()'
           WHEN 'bigint' THEN 'tenancy.current_tenant_bigint()'
           ELSE 'tenancy.current_tenant_text()' END;
$$;
COMMENT ON FUNCTION tenancy.tenant_accessor() IS 'the current-tenant function matching tenancy.tenant_type';

-- Columns of an index or constraint as a quoted, comma-separated list.
CREATE FUNCTION tenancy.column_list(rel regclass, attnums smallint[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.i)
    FROM unnest(attnums) WITH ORDINALITY AS k(attnum, i)
    JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum;
$$;

-- The foreign keys a table declares and those its partitions (at any
-- depth) declare themselves, each with the relation that holds it
-- (partition: NULL for rel's own keys).  The copies PostgreSQL makes of a
-- parent's key on each partition (conparentid <> 0) are left out, so each
-- key appears once.  Columns come as names: a partition's attribute numbers
-- may differ from its parent's.  Used by verify(), the backfill's via =>
-- and scope_constraints_plan().
CREATE FUNCTION tenancy.foreign_keys(rel regclass)
RETURNS TABLE (conoid oid, conname name, conrelid regclass, partition regclass, confrelid regclass,
               cols name[], refcols name[])
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid, c.conname, c.conrelid::regclass,
           CASE WHEN c.conrelid <> rel THEN c.conrelid::regclass END, c.confrelid::regclass,
           ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(attnum, i)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.i),
           ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(attnum, i)
                 JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.i)
    FROM (SELECT rel::oid AS relid, 0 AS level
          UNION ALL
          SELECT t.relid, t.level FROM pg_partition_tree(rel) t WHERE t.level > 0) tree
    JOIN pg_constraint c ON c.conrelid = tree.relid
    WHERE c.contype = 'f' AND c.conparentid = 0
    ORDER BY tree.level, c.conrelid::regclass::text, c.conname;
$$;
COMMENT ON FUNCTION tenancy.foreign_keys(regclass) IS 'foreign keys declared on a table and on its partitions, each with the partition that holds it';

-- Unique indexes of a table (constraints' included) whose key columns do
-- not include the tenant column: what verify() reports as unique across
-- tenants and scope_constraints_plan() rescopes.  surrogate_key: a primary
-- key on columns that all get their value from the server (default,
-- identity, generated), unique across tenants by construction.
CREATE FUNCTION tenancy.unscoped_unique_indexes(rel regclass, tenant_attnum smallint)
RETURNS TABLE (indexrelid oid, keys smallint[], conoid oid, surrogate_key boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.indexrelid, k.keys, con.oid,
           i.indisprimary AND NOT EXISTS (
               SELECT FROM unnest(k.keys) u(attnum)
               LEFT JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = u.attnum
               WHERE a.attnum IS NULL OR (NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''))
    FROM pg_index i
    CROSS JOIN LATERAL (SELECT (string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts] AS keys) k
    LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = rel AND con.contype IN ('p', 'u')
    WHERE i.indrelid = rel AND i.indisunique AND NOT (tenant_attnum = ANY (k.keys));
$$;

-- The name of an object the contract phase creates: base || suffix when it
-- fits in 63 bytes, else base cut on a character boundary, then '_', eight
-- hex digits of md5(base || suffix) and suffix, so that long names that
-- share a prefix stay distinct and PostgreSQL never truncates one (the step
-- and its undo spell the same name).
CREATE FUNCTION tenancy.object_name(base text, suffix text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tag text := '_' || left(md5(base || suffix), 8) || suffix;
    cut text := left(base, 63 - octet_length(tag));
BEGIN
    IF octet_length(base || suffix) <= 63 THEN
        RETURN base || suffix;
    END IF;
    WHILE octet_length(cut) > 63 - octet_length(tag) LOOP
        cut := left(cut, -1);
    END LOOP;
    RETURN cut || tag;
END
$$;
COMMENT ON FUNCTION tenancy.object_name(text, text) IS 'a name of at most 63 bytes for an object the contract phase creates: base || suffix, or a cut base with a hash';

-- A preview run with \gexec takes the locks its statements need: it carries
-- its own timeouts (a DBA's session has none), so that a blocked lock fails
-- fast instead of queueing the application behind it; a statement_timeout of
-- 0 where it builds an index concurrently or validates (a timeout would
-- cancel them), and puts both back at its end.
CREATE FUNCTION tenancy.preview_set(slow boolean) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY[format('SET lock_timeout = %L', '100ms'),
                 CASE WHEN slow THEN 'SET statement_timeout = 0'
                      ELSE format('SET statement_timeout = %L', '1min') END];
$$;
CREATE FUNCTION tenancy.preview_reset() RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY['RESET lock_timeout', 'RESET statement_timeout'];
$$;
-- a preview script (statements ending with ';') between them
CREATE FUNCTION tenancy.preview_wrap(script text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT array_to_string(tenancy.preview_set(script ~ '(CONCURRENTLY|VALIDATE CONSTRAINT) '), ';' || chr(10))
           || ';' || chr(10) || script || chr(10)
           || array_to_string(tenancy.preview_reset(), ';' || chr(10)) || ';';
$$;

REVOKE EXECUTE ON FUNCTION
    tenancy.tenant_accessor(),
    tenancy.column_list(regclass, smallint[]),
    tenancy.unscoped_unique_indexes(regclass, smallint)
FROM PUBLIC;

-- A type's name, schema-qualified, for generated SQL that runs under a
-- search_path of the user's.
CREATE FUNCTION tenancy.type_sql(t regtype) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.format('%I.%I', n.nspname, ty.typname)
      FROM pg_catalog.pg_type ty JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) ty.typnamespace
     WHERE ty.oid OPERATOR(pg_catalog.=) t
$$;

-- A comment that stays one in a generated script: each line of text after
-- '-- ' (a name with a line break cannot end the comment and start a
-- statement).
CREATE FUNCTION tenancy.sql_comment(text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '-- ' || regexp_replace($1, '\r\n|[\r\n]', chr(10) || '-- ', 'g');
$$;
