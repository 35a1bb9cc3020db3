-- Install script of the tenancy extension, concatenated from the SQL sources
-- src/*.sql in the order of SQL_SOURCES (Makefile); edit those, not the
-- built script.  src/tenancy.sql: the preamble.
-- Everything is schema-qualified; nothing here depends on search_path.

\echo Use "CREATE EXTENSION tenancy" to load this file. \quit

GRANT USAGE ON SCHEMA tenancy TO PUBLIC;
-- src/as_owner.sql: work on user tables as the less privileged of the requester and the owners (C: as_owner.c).

------------------------------------------------------------------------------
-- Work on user tables runs with no more rights than the table owner's
-- (src/as_owner.c): the owner when the requesting role has the owner's
-- privileges (a superuser, the owner, a member of it), else the requesting
-- role itself; under SECURITY_RESTRICTED_OPERATION, as VACUUM and ANALYZE.
-- They never run anything with more rights than the caller has, so they
-- stay executable by PUBLIC.
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.table_exec(rel regclass, as_role regrole, sql text) RETURNS bigint
    AS 'MODULE_PATHNAME', 'tenancy_table_exec'
    LANGUAGE C VOLATILE;
CREATE FUNCTION tenancy.table_exec(rel regclass, as_role regrole, sql text, VARIADIC args "any") RETURNS bigint
    AS 'MODULE_PATHNAME', 'tenancy_table_exec'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.table_exec(regclass, regrole, text, "any")
    IS 'run a statement on a table as the less privileged of as_role (NULL: the caller) and its owner, under SECURITY_RESTRICTED_OPERATION; returns the rows processed';
CREATE FUNCTION tenancy.table_query(rel regclass, as_role regrole, sql text) RETURNS text[]
    AS 'MODULE_PATHNAME', 'tenancy_table_query'
    LANGUAGE C VOLATILE;
CREATE FUNCTION tenancy.table_query(rel regclass, as_role regrole, sql text, VARIADIC args "any") RETURNS text[]
    AS 'MODULE_PATHNAME', 'tenancy_table_query'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.table_query(regclass, regrole, text, "any")
    IS 'run a query on a table as table_exec() does; its first row as text, NULL when it returns none';
-- src/tenant_key.sql: tenant key types (C: tenant_key.c).

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
-- src/registry.sql: the tenant registry: tenants, slugs, status, the implicit tenant (C: registry.c).

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

-- set_tenant() and lookup_tenant() take a key or a slug, the key first, so
-- no name may mean two tenants.  A slug shaped like a key of the registry's
-- key type would be read as a key (the rule of tenant_key_shaped() in C,
-- spelled for slugs): refused.  With text keys every slug is also a valid
-- key: a slug that is another tenant's key, or a key that is another
-- tenant's slug, is refused.
CREATE FUNCTION tenancy.tenants_check_names() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keytype text := pg_typeof(NEW.id)::text;
BEGIN
    IF (keytype = 'bigint' AND NEW.slug ~ '^[0-9]+$')
       OR (keytype = 'uuid' AND NEW.slug ~ '^[0-9a-f-]{32,}$') THEN
        RAISE EXCEPTION 'tenant slug "%" has the form of a % tenant key', NEW.slug, keytype
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'tenancy.set_tenant() would read it as a key, never as a slug.',
                  HINT = CASE keytype WHEN 'bigint' THEN 'Use a slug with at least one letter or hyphen.'
                                      ELSE 'Use a slug shorter than 32 characters, or with a letter beyond f.' END;
    END IF;
    IF keytype = 'text' THEN
        IF EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.id::text = NEW.slug AND t.id::text <> NEW.id::text) THEN
            RAISE EXCEPTION 'tenant slug "%" is the key of another tenant', NEW.slug
                USING ERRCODE = 'unique_violation',
                      DETAIL = 'Keys are looked up before slugs: the slug would name the other tenant.',
                      HINT = 'Choose another slug.';
        END IF;
        IF EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.slug = NEW.id::text AND t.slug <> NEW.slug) THEN
            RAISE EXCEPTION 'tenant key "%" is the slug of another tenant', NEW.id
                USING ERRCODE = 'unique_violation',
                      DETAIL = 'Keys are looked up before slugs: the key would shadow the other tenant''s slug.',
                      HINT = 'Choose another key.';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER tenants_check_names
    BEFORE INSERT OR UPDATE OF id, slug ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_check_names();
REVOKE ALL ON FUNCTION tenancy.tenants_check_names() FROM PUBLIC;
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
        k := pg_catalog.nextval(pg_catalog.to_regclass('tenancy.tenant_key_seq'))::text;   -- bigint keys only
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

-- Is the current tenant the implicit one?  The migrating-mode policies let
-- only the implicit tenant change rows whose tenant is still NULL; they call
-- this once per statement (an uncorrelated sub-select), as any role the
-- policy applies to.  It reads the registry through the backend's cache, as
-- set_tenant() does (src/registry.c), so it stays executable by PUBLIC.
CREATE FUNCTION tenancy.is_implicit_tenant() RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_is_implicit_tenant'
    LANGUAGE C STABLE;
COMMENT ON FUNCTION tenancy.is_implicit_tenant() IS 'true when the current tenant is the implicit tenant';

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
    tenancy.set_implicit_tenant(text)
FROM PUBLIC;
-- src/tables.sql: the registered tenant tables and their writers (C: tables_writer.c).

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

-- The writers of tenancy.tables (src/tables_writer.c; the policy stages are
-- written by rls_record()).  No role may write it directly: it says which
-- column holds the tenant and what stage a table is in, and verify(),
-- enforce_not_null() and the contract phase act on it.  They run as the
-- caller and write as the table's owner: registering needs SELECT on the
-- table and UPDATE on the column; a stage change the privileges of the
-- table's owner, except expand to backfill (what registering needs).
CREATE FUNCTION tenancy.tables_register(tbl regclass, column_name name, source text DEFAULT NULL)
RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_tables_register'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.tables_register(regclass, name, text)
    IS 'register a table with its tenant column (or record the source of one that has none); true when a row was written';
CREATE FUNCTION tenancy.tables_set_stage(tbl regclass, stage text, from_stage text DEFAULT NULL)
RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_tables_set_stage'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.tables_set_stage(regclass, text, text)
    IS 'set the stage (expand, backfill, contract) of a registered table, only from from_stage if given; true when it changed';
REVOKE EXECUTE ON FUNCTION tenancy.tables_register(regclass, name, text),
                           tenancy.tables_set_stage(regclass, text, text) FROM PUBLIC;

-- Registry lookups, one of each.  A table that exists but is not in
-- tenancy.tables is not in the state these functions need: 55000
-- (object_not_in_prerequisite_state), as src/status.c raises it too;
-- 42704 (undefined_object) stays for names that do not exist at all.
CREATE FUNCTION tenancy.registered_table(tbl regclass) RETURNS tenancy.tables
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t tenancy.tables;
BEGIN
    SELECT * INTO t FROM tenancy.tables r WHERE r.relation = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not registered in tenancy.tables', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register it with tenancy.add_tenant_column().';
    END IF;
    RETURN t;
END
$$;
COMMENT ON FUNCTION tenancy.registered_table(regclass)
    IS 'the tenancy.tables row of a registered table; 55000 when it is not registered';

-- The tenant column of a table: its registered one, else the default name.
CREATE FUNCTION tenancy.tenant_column(tbl regclass) RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT t.column_name FROM tenancy.tables t WHERE t.relation = tbl), 'tenant_id'::name);
$$;
COMMENT ON FUNCTION tenancy.tenant_column(regclass)
    IS 'the registered tenant column of a table, tenant_id when it is not registered';
-- src/context.sql: the current tenant, set_tenant(), and the legacy role binding (C: context.c, context_stats.c).

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
-- Cluster-wide counters: for monitoring roles, as pg_stat_* views are.
REVOKE EXECUTE ON FUNCTION tenancy.context_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.context_stats() TO pg_read_all_stats;

------------------------------------------------------------------------------
-- Legacy code path: bind a role to a tenant (by default the implicit one)
------------------------------------------------------------------------------

-- squawk: ignore require-lock-timeout: ALTER ROLE ... SET locks no table, and bind_role() runs this text itself (SET lines would change its caller's session)
-- squawk: ignore require-statement-timeout: as above
CREATE FUNCTION tenancy.bind_role_sql(role regrole, tenant text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text := CASE WHEN tenant IS NULL THEN tenancy.implicit_tenant() ELSE tenancy.tenant_key(tenant) END;
    rolname name := (SELECT r.rolname FROM pg_roles r WHERE r.oid = role);
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
                       rolname, current_database(), current_setting('tenancy.tenant_type'));
    END IF;
    RETURN stmt || format('ALTER ROLE %I IN DATABASE %I SET tenancy.tenant_id = %L;',
                          rolname, current_database(), k);
END
$$;
COMMENT ON FUNCTION tenancy.bind_role_sql(regrole, text) IS 'the ALTER ROLE statements bind_role() would run';

CREATE FUNCTION tenancy.bind_role(role regrole, tenant text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmt text := tenancy.bind_role_sql(role, tenant);
BEGIN
    -- plpgsql_check: VOLATILE: ALTER ROLE.
    -- plpgsql_check: from bind_role_sql(): names through %I, values through %L.
    EXECUTE stmt;
    RETURN stmt;
END
$$;
COMMENT ON FUNCTION tenancy.bind_role(regrole, text) IS 'make a tenant (default: the implicit one) the default tenant of a role in this database';

CREATE FUNCTION tenancy.unbind_role(role regrole) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmt text := format('ALTER ROLE %I IN DATABASE %I RESET tenancy.tenant_id;',
                        (SELECT r.rolname FROM pg_roles r WHERE r.oid = role), current_database());
BEGIN
    -- plpgsql_check: VOLATILE: ALTER ROLE.
    EXECUTE stmt;
    RETURN stmt;
END
$$;
COMMENT ON FUNCTION tenancy.unbind_role(regrole) IS 'undo bind_role()';
REVOKE EXECUTE ON FUNCTION
    tenancy.bind_role_sql(regrole, text),
    tenancy.bind_role(regrole, text),
    tenancy.unbind_role(regrole),
    tenancy.reset_context_stats()
FROM PUBLIC;
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
-- src/memberships.sql: memberships, personal tenants, set_tenant_as().

-- Who may act in which tenant.  The tenant column takes the key type.
DO $do$
BEGIN
    EXECUTE pg_catalog.format($sql$
        CREATE TABLE tenancy.memberships (
            tenant     %s NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
            user_key   text NOT NULL,
            role       text NOT NULL DEFAULT 'member'
                       CONSTRAINT memberships_role_check
                       CHECK (role OPERATOR(pg_catalog.=) ANY (ARRAY['owner', 'admin', 'member', 'viewer'])),
            created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
            PRIMARY KEY (tenant, user_key)
        )$sql$, pg_catalog.format_type(tenancy.key_type(), NULL));
END
$do$;
CREATE INDEX memberships_user_key ON tenancy.memberships (user_key);
COMMENT ON TABLE tenancy.memberships IS 'tenant memberships: user key and role (owner, admin, member, viewer)';
SELECT pg_catalog.pg_extension_config_dump('tenancy.memberships', '');
REVOKE ALL ON TABLE tenancy.memberships FROM PUBLIC;

-- The users and resource tables create_personal_tenants() was run with, so
-- verify() can find users with resources but no tenant.
CREATE TABLE tenancy.identity_sources (
    users        regclass NOT NULL,
    key_column   name NOT NULL,
    name_column  name NOT NULL,
    resource     regclass NOT NULL,
    owner_column name NOT NULL,
    slug_prefix  text NOT NULL,
    PRIMARY KEY (users, resource, owner_column)
);
COMMENT ON TABLE tenancy.identity_sources IS 'users and resource tables given to create_personal_tenants()';
SELECT pg_catalog.pg_extension_config_dump('tenancy.identity_sources', '');
REVOKE ALL ON TABLE tenancy.identity_sources FROM PUBLIC;

------------------------------------------------------------------------------
-- Identity backfill: memberships, personal tenants, membership-checked switch
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.add_member(tenant text, user_key text, role text DEFAULT 'member')
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
BEGIN
    IF tenant IS NULL OR user_key IS NULL OR role IS NULL THEN
        RAISE EXCEPTION 'tenant, user_key and role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF role NOT IN ('owner', 'admin', 'member', 'viewer') THEN
        RAISE EXCEPTION 'invalid membership role "%"', role
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A role is one of owner, admin, member, viewer.';
    END IF;
    k := tenancy.tenant_key(tenant);
    -- plpgsql_check: VOLATILE: it writes tenancy.memberships.
    EXECUTE format('INSERT INTO tenancy.memberships AS m (tenant, user_key, role) VALUES (CAST($1 AS %s), $2, $3)'
                   ' ON CONFLICT (tenant, user_key) DO UPDATE SET role = excluded.role',
                   format_type(tenancy.key_type(), NULL))
        USING k, user_key, role;
    RETURN k;
END
$$;
COMMENT ON FUNCTION tenancy.add_member(text, text, text) IS 'make a user a member of a tenant (or change its role); returns the tenant key';

CREATE FUNCTION tenancy.remove_member(tenant text, user_key text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text := tenancy.tenant_key(tenant);
BEGIN
    DELETE FROM tenancy.memberships m WHERE m.tenant::text = k AND m.user_key = remove_member.user_key;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION tenancy.remove_member(text, text) IS 'remove a membership; false when there was none';

-- The shadow-organization pattern: every user who owns at least one row of
-- the resource tables gets a personal tenant (slug <prefix><user key>) with
-- the user as owner.  Idempotent: a user who already owns the tenant of that
-- slug is left alone; a slug taken by another tenant (or wanted by two
-- users at once) is a conflict, reported and skipped, never joined.
CREATE FUNCTION tenancy.create_personal_tenants(
    users regclass, key_column name, name_column name,
    resource_tables regclass[], owner_columns name[],
    slug_prefix text DEFAULT 'user-',
    OUT users_with_resources bigint, OUT tenants_created bigint,
    OUT owners_added bigint, OUT conflicts bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keytype text := format_type(tenancy.key_type(), NULL);
    owners  text[] := '{}'::text[];
    people  jsonb;
    keygen  text;
    slugx   text;
BEGIN
    IF users IS NULL OR key_column IS NULL OR name_column IS NULL OR resource_tables IS NULL
       OR owner_columns IS NULL OR slug_prefix IS NULL THEN
        RAISE EXCEPTION 'arguments must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cardinality(resource_tables) = 0 OR cardinality(resource_tables) <> cardinality(owner_columns) THEN
        RAISE EXCEPTION 'resource_tables and owner_columns must have the same, non-zero length'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give one owner column per resource table, in the same order.';
    END IF;
    IF slug_prefix !~ '^([a-z0-9][a-z0-9-]{0,19})?$' THEN
        RAISE EXCEPTION 'invalid slug prefix "%"', slug_prefix
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A slug prefix is up to 20 lower-case letters, digits and hyphens, starting with a letter or digit.';
    END IF;
    FOR i IN 1 .. 2 LOOP
        PERFORM 1 FROM pg_attribute a
         WHERE a.attrelid = users AND a.attname = (ARRAY[key_column, name_column])[i]
           AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column "%" of % does not exist', (ARRAY[key_column, name_column])[i], users
                USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;
    FOR i IN 1 .. cardinality(resource_tables) LOOP
        PERFORM 1 FROM pg_attribute a
         WHERE a.attrelid = resource_tables[i] AND a.attname = owner_columns[i]
           AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column "%" of % does not exist', owner_columns[i], resource_tables[i]
                USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;

    -- Each table is read as its owner (tenancy.table_query()), one table per
    -- statement: the code a table owner controls (triggers, index
    -- expressions and predicates, policies) never runs with the caller's
    -- rights nor with another table owner's.  Keys meet as text.
    FOR i IN 1 .. cardinality(resource_tables) LOOP
        -- plpgsql_check: the table through %s of regclass (quoted by its output), the column through %I.
        owners := owners || coalesce((tenancy.table_query(resource_tables[i], NULL,
                      format('SELECT pg_catalog.array_agg(DISTINCT o.%1$I::pg_catalog.text) FROM %2$s o WHERE o.%1$I IS NOT NULL',
                             owner_columns[i], resource_tables[i])))[1]::text[], '{}');
    END LOOP;
    -- plpgsql_check: the table through %s of regclass, columns through %I, the owner keys as a parameter.
    people := coalesce((tenancy.table_query(users, NULL,
                  format('SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(u.%1$I::pg_catalog.text, u.%2$I::pg_catalog.text))'
                         ' FROM %3$s u WHERE u.%1$I IS NOT NULL AND u.%1$I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])',
                         key_column, name_column, users),
                  owners))[1]::jsonb, '[]');

    keygen := CASE keytype WHEN 'uuid' THEN 'pg_catalog.gen_random_uuid()'
                           WHEN 'bigint' THEN 'pg_catalog.nextval(''tenancy.tenant_key_seq'')'
                           ELSE 'c.slug' END;
    -- A key that is already a valid slug fragment is used as is; anything
    -- else (upper case, e-mail addresses, long keys) gets a hash suffix so
    -- that two users never map to one slug.
    slugx := format($x$CASE WHEN u.k ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$' AND length(%1$L || u.k) <= 63
                          THEN %1$L || u.k
                          ELSE left(%1$L || trim(both '-' FROM regexp_replace(lower(u.k), '[^a-z0-9]+', '-', 'g')), 54)
                               || CASE WHEN trim(both '-' FROM regexp_replace(lower(u.k), '[^a-z0-9]+', '-', 'g')) = '' AND %1$L = '' THEN '' ELSE '-' END
                               || left(md5(u.k), 8) END$x$,
                    slug_prefix);

    -- plpgsql_check: the slug expression and key generator are built above (the prefix through %L); the users as a parameter.
    EXECUTE format($q$
        WITH c AS (
            SELECT s.*, count(*) OVER (PARTITION BY s.slug) AS sharing
            FROM (SELECT u.k AS user_key, coalesce(u.n, u.k) AS name, %1$s AS slug
                  FROM (SELECT e.v ->> 0 AS k, e.v ->> 1 AS n FROM jsonb_array_elements($1) e(v)) u) s
        ),
        ins AS (
            INSERT INTO tenancy.tenants (id, slug, name)
            SELECT %2$s, c.slug, c.name FROM c
            WHERE c.sharing = 1
              AND NOT EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.slug = c.slug)
            ON CONFLICT DO NOTHING
            RETURNING id, slug
        ),
        own AS (
            INSERT INTO tenancy.memberships (tenant, user_key, role)
            SELECT ins.id, c.user_key, 'owner' FROM ins JOIN c ON c.slug = ins.slug
            ON CONFLICT DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM c),
               (SELECT count(*) FROM ins),
               (SELECT count(*) FROM own),
               (SELECT count(*) FROM c
                 WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.slug = c.slug)
                   AND NOT EXISTS (SELECT 1 FROM tenancy.tenants t JOIN tenancy.memberships m
                                     ON m.tenant = t.id AND m.role = 'owner'
                                   WHERE t.slug = c.slug AND m.user_key = c.user_key))
        $q$, slugx, keygen)
        INTO users_with_resources, tenants_created, owners_added, conflicts USING people;

    INSERT INTO tenancy.identity_sources AS s (users, key_column, name_column, resource, owner_column, slug_prefix)
    SELECT create_personal_tenants.users, create_personal_tenants.key_column, create_personal_tenants.name_column,
           x.res, x.col, create_personal_tenants.slug_prefix
    FROM unnest(resource_tables, owner_columns) x(res, col)
    ON CONFLICT ON CONSTRAINT identity_sources_pkey
    DO UPDATE SET key_column = excluded.key_column, name_column = excluded.name_column,
                  slug_prefix = excluded.slug_prefix;

    IF conflicts > 0 THEN
        RAISE WARNING '% users were skipped: the slug of their personal tenant is held by a tenant they do not own, or wanted by another user', conflicts
            USING HINT = 'tenancy.verify() lists them as user_without_tenant; add them with tenancy.add_member() or use another slug_prefix.';
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.create_personal_tenants(regclass, name, name, regclass[], name[], text)
    IS 'create a personal tenant, owned by the user, for each user who owns resources (idempotent)';

-- set_tenant() for an acting user: refuses (42501) a tenant the user is not
-- a member of.  SECURITY DEFINER so that application roles need no access
-- to tenancy.memberships.
CREATE FUNCTION tenancy.set_tenant_as(user_key text, tenant text, is_local boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
BEGIN
    IF user_key IS NULL OR tenant IS NULL OR is_local IS NULL THEN
        RAISE EXCEPTION 'user_key, tenant and is_local must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    k := tenancy.tenant_key(tenant);
    IF NOT EXISTS (SELECT 1 FROM tenancy.memberships m
                   WHERE m.user_key = set_tenant_as.user_key AND m.tenant::text = k) THEN
        RAISE EXCEPTION 'user "%" is not a member of tenant "%"', user_key, tenant
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Add the membership with tenancy.add_member().';
    END IF;
    RETURN tenancy.set_tenant(k, is_local);
END
$$;
COMMENT ON FUNCTION tenancy.set_tenant_as(text, text, boolean) IS 'set the current tenant for an acting user; 42501 unless the user is a member';
REVOKE EXECUTE ON FUNCTION
    tenancy.add_member(text, text, text),
    tenancy.remove_member(text, text),
    tenancy.create_personal_tenants(regclass, name, name, regclass[], name[], text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.set_tenant_as(text, text, boolean) TO PUBLIC;
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

-- src/shared.sql: shared (reference) tables.

------------------------------------------------------------------------------
-- Shared tables: reference data every tenant reads (films, countries, ...).
-- Marked so that the advisories stop asking for the tenant in foreign keys
-- that point at them, and verify() checks that only their owner writes them.
-- A table is either a tenant table (tenancy.tables) or shared, not both.
------------------------------------------------------------------------------

CREATE TABLE tenancy.shared_tables (
    relation  regclass PRIMARY KEY,
    marked_by name NOT NULL DEFAULT session_user,
    marked_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.shared_tables IS 'tables shared by every tenant (reference data): no tenant column, written only by their owner';
SELECT pg_catalog.pg_extension_config_dump('tenancy.shared_tables', '');
REVOKE ALL ON TABLE tenancy.shared_tables FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.shared_tables TO PUBLIC;   -- the advisories read it as the table owner

CREATE FUNCTION tenancy.mark_shared(tbl regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl);
    IF EXISTS (SELECT 1 FROM tenancy.tables t WHERE t.relation = tbl)
       OR EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = tbl) THEN
        RAISE EXCEPTION 'table % is registered as a tenant table', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'A table is either a tenant table, with a tenant column and a policy, or shared by every tenant.',
                  HINT = format('Undo its migration first: SELECT * FROM tenancy.rollback_table_sql(%L);', tbl::text);
    END IF;
    INSERT INTO tenancy.shared_tables (relation) VALUES (tbl) ON CONFLICT (relation) DO NOTHING;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION tenancy.mark_shared(regclass) IS 'mark a table shared by every tenant (reference data); false when it already is';
REVOKE ALL ON FUNCTION tenancy.mark_shared(regclass) FROM PUBLIC;

CREATE FUNCTION tenancy.unmark_shared(tbl regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM tenancy.shared_tables s WHERE s.relation = tbl;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION tenancy.unmark_shared(regclass) IS 'undo mark_shared(); false when the table was not marked';
REVOKE ALL ON FUNCTION tenancy.unmark_shared(regclass) FROM PUBLIC;

-- A shared table (or a partition of one) cannot be registered.
CREATE FUNCTION tenancy.tables_not_shared() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    shared regclass;
BEGIN
    SELECT s.relation INTO shared FROM tenancy.shared_tables s
     WHERE s.relation = NEW.relation
        OR s.relation IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors(NEW.relation) a)
     LIMIT 1;
    IF shared IS NOT NULL THEN
        RAISE EXCEPTION 'table % is marked shared', NEW.relation
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('%s holds data every tenant reads: it has no tenant column.', shared),
                  HINT = format('If it is tenant data after all: SELECT tenancy.unmark_shared(%L);', shared::text);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER tables_not_shared BEFORE INSERT OR UPDATE OF relation ON tenancy.tables
    FOR EACH ROW EXECUTE FUNCTION tenancy.tables_not_shared();
-- src/acknowledge.sql: acknowledged verify() findings.

------------------------------------------------------------------------------
-- Acknowledged findings: a DBA accepts a verify() finding about a role or
-- an object (an intended BYPASSRLS reporting role, say).  The
-- acknowledgement keeps a fingerprint of the facts it accepted and lapses
-- when they change.
------------------------------------------------------------------------------

CREATE TABLE tenancy.acknowledgements (
    check_name      text NOT NULL,
    object          text NOT NULL,
    reason          text NOT NULL CONSTRAINT acknowledgements_reason_check CHECK (btrim(reason) OPERATOR(pg_catalog.<>) ''),
    acknowledged_by name NOT NULL DEFAULT session_user,
    acknowledged_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    fingerprint     text NOT NULL,
    PRIMARY KEY (check_name, object)
);
COMMENT ON TABLE tenancy.acknowledgements IS 'verify() findings a DBA accepted, with the fingerprint of the facts accepted';
SELECT pg_catalog.pg_extension_config_dump('tenancy.acknowledgements', '');
REVOKE ALL ON TABLE tenancy.acknowledgements FROM PUBLIC;

-- What kind of object a check's findings are about (NULL: the check's
-- findings cannot be acknowledged).
CREATE FUNCTION tenancy.ack_kind(check_name text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE check_name
               WHEN 'bypassrls_role' THEN 'role'
               WHEN 'security_definer_function' THEN 'function'
               WHEN 'materialized_view' THEN 'relation'
               WHEN 'view_security_invoker' THEN 'relation'
               WHEN 'shared_table' THEN 'relation'
           END;
$$;

-- The facts an acknowledgement accepts: for a role, its attributes, the
-- roles it is a member of and its privileges on every registered and
-- shared table; for a function, its owner, SECURITY DEFINER, body, ACL and
-- settings; for a relation, its owner, kind, ACLs (column ACLs too),
-- options and definition.  NULL when the object does not exist.
CREATE FUNCTION tenancy.ack_fingerprint(check_name text, object text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text := tenancy.ack_kind(check_name);
    obj  oid;
BEGIN
    IF kind = 'role' THEN
        obj := to_regrole(object);
        RETURN (SELECT md5(format('role|%s|%s|%s|%s|%s|%s|%s|member of %s|privileges %s',
                    r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
                    r.rolreplication, r.rolbypassrls,
                    (SELECT string_agg(m.roleid::regrole::text || CASE WHEN m.admin_option THEN '+admin' ELSE '' END,
                                       ',' ORDER BY m.roleid::regrole::text)
                       FROM pg_auth_members m WHERE m.member = r.oid),
                    (SELECT string_agg(t.rel::text || ':' || p.privs, ';' ORDER BY t.rel::text)
                       FROM (SELECT x.relation AS rel FROM tenancy.tables x
                             UNION SELECT s.relation FROM tenancy.shared_tables s) t
                       JOIN pg_class c ON c.oid = t.rel,
                       LATERAL (SELECT string_agg(v.priv, ',' ORDER BY v.priv) AS privs
                                  FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) v(priv)
                                 WHERE has_table_privilege(r.oid, t.rel, v.priv)
                                    OR (v.priv IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                                        AND has_any_column_privilege(r.oid, t.rel, v.priv))) p
                      WHERE p.privs IS NOT NULL)))
                  FROM pg_roles r WHERE r.oid = obj);
    ELSIF kind = 'function' THEN
        obj := to_regprocedure(object);
        RETURN (SELECT md5(format('function|%s|%s|%s|%s|%s|%s',
                    p.proowner::regrole, p.prosecdef, md5(p.prosrc), md5(coalesce(p.prosqlbody::text, '')),
                    coalesce(p.proacl::text, 'default'), coalesce(p.proconfig::text, '')))
                  FROM pg_proc p WHERE p.oid = obj);
    ELSIF kind = 'relation' THEN
        obj := to_regclass(object);
        RETURN (SELECT md5(format('relation|%s|%s|%s|%s|%s|%s',
                    c.relowner::regrole, c.relkind, coalesce(c.relacl::text, 'default'),
                    coalesce(c.reloptions::text, ''),
                    (SELECT string_agg(a.attname || '=' || a.attacl::text, ',' ORDER BY a.attnum)
                       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL AND NOT a.attisdropped),
                    CASE WHEN c.relkind IN ('v', 'm') THEN md5(pg_get_viewdef(c.oid)) END))
                  FROM pg_class c WHERE c.oid = obj);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION tenancy.ack_fingerprint(text, text) IS 'fingerprint of the facts an acknowledgement of a verify() finding accepts';

-- For verify(): whether a finding is acknowledged ('acknowledged'), was
-- and lapsed ('lapsed'), or neither (NULL), and the note to add to its
-- detail.  A caller who cannot read tenancy.acknowledgements sees every
-- finding as it is.
CREATE FUNCTION tenancy.ack_state(check_name text, object text, OUT state text, OUT note text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
BEGIN
    IF NOT has_table_privilege('tenancy.acknowledgements', 'SELECT') THEN
        RETURN;
    END IF;
    SELECT k.reason, k.acknowledged_by, k.acknowledged_at, k.fingerprint INTO a
      FROM tenancy.acknowledgements k
     WHERE k.check_name = ack_state.check_name AND k.object = ack_state.object;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF a.fingerprint = tenancy.ack_fingerprint(ack_state.check_name, ack_state.object) THEN
        state := 'acknowledged';
        note := format('acknowledged by %I at %s: %s', a.acknowledged_by,
                       to_char(a.acknowledged_at, 'YYYY-MM-DD HH24:MI:SSOF'), a.reason);
    ELSE
        state := 'lapsed';
        note := format('the acknowledgement by %I at %s (%s) lapsed: %s changed since; acknowledge it again if it is still intended',
                       a.acknowledged_by, to_char(a.acknowledged_at, 'YYYY-MM-DD HH24:MI:SSOF'), a.reason,
                       ack_state.object);
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.ack_state(text, text) IS 'for verify(): whether a finding is acknowledged, lapsed or neither';

CREATE FUNCTION tenancy.acknowledge(check_name text, object text, reason text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text;
    name text;
BEGIN
    IF check_name IS NULL OR object IS NULL OR reason IS NULL THEN
        RAISE EXCEPTION 'check_name, object and reason must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    kind := tenancy.ack_kind(check_name);
    IF kind IS NULL THEN
        RAISE EXCEPTION 'findings of check "%" cannot be acknowledged', check_name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The checks whose findings can be acknowledged are bypassrls_role (a role), security_definer_function (a function), materialized_view, view_security_invoker and shared_table (a relation).';
    END IF;
    IF btrim(reason) = '' THEN
        RAISE EXCEPTION 'reason must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Say why the finding is intended: the report shows it.';
    END IF;
    name := CASE kind WHEN 'role' THEN to_regrole(object)::text
                      WHEN 'function' THEN to_regprocedure(object)::regprocedure::text
                      ELSE to_regclass(object)::regclass::text END;
    IF name IS NULL THEN
        RAISE EXCEPTION '% "%" does not exist', kind, object
            USING ERRCODE = CASE kind WHEN 'role' THEN 'undefined_object'
                                      WHEN 'function' THEN 'undefined_function' ELSE 'undefined_table' END,
                  HINT = CASE kind WHEN 'role' THEN 'Name the role as verify() shows it.'
                                   WHEN 'function' THEN 'Name the function with its schema and argument types, as in rental.report(numeric).'
                                   ELSE 'Name the relation with its schema, as verify() shows it.' END;
    END IF;
    INSERT INTO tenancy.acknowledgements AS k (check_name, object, reason, fingerprint)
    VALUES (check_name, name, reason, tenancy.ack_fingerprint(check_name, name))
    ON CONFLICT ON CONSTRAINT acknowledgements_pkey DO UPDATE
       SET reason = EXCLUDED.reason, fingerprint = EXCLUDED.fingerprint,
           acknowledged_by = EXCLUDED.acknowledged_by, acknowledged_at = EXCLUDED.acknowledged_at;
    RETURN name;
END
$$;
COMMENT ON FUNCTION tenancy.acknowledge(text, text, text) IS 'accept a verify() finding about a role or object, until the facts it accepted change; returns the object''s name';
REVOKE ALL ON FUNCTION tenancy.acknowledge(text, text, text) FROM PUBLIC;

CREATE FUNCTION tenancy.unacknowledge(check_name text, object text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text;
BEGIN
    IF check_name IS NULL OR object IS NULL THEN
        RAISE EXCEPTION 'check_name and object must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    kind := tenancy.ack_kind(check_name);
    DELETE FROM tenancy.acknowledgements k
     WHERE k.check_name = unacknowledge.check_name
       AND k.object IN (unacknowledge.object,
                        CASE kind WHEN 'role' THEN to_regrole(unacknowledge.object)::text
                                  WHEN 'function' THEN to_regprocedure(unacknowledge.object)::regprocedure::text
                                  ELSE to_regclass(unacknowledge.object)::regclass::text END);
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION tenancy.unacknowledge(text, text) IS 'withdraw an acknowledgement; false when there was none';
REVOKE ALL ON FUNCTION tenancy.unacknowledge(text, text) FROM PUBLIC;
-- src/verify.sql: the readiness report: one function per check, and verify().

-- The readiness report's checks: one function per check (verify_row_security
-- runs rls_enabled, rls_forced and tenancy_policy, which it reports per
-- partition), each returning the report's rows for one table (or, for the
-- last three, for the database).  verify() runs them in the report's order;
-- they run as its caller (revoked from PUBLIC, as verify()).
-- tenant_column: the registered column exists and has the key type
CREATE FUNCTION tenancy.verify_tenant_column(rel regclass, tenant_col name, present boolean, tenant_attnum smallint, tenant_type oid)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    keytype text := format_type(tenancy.key_type(), NULL);
BEGIN
    check_name := 'tenant_column'; relation := rel; rows_affected := NULL;
    IF NOT present THEN
        status := 'failure';
        detail := format('registered relation %s no longer exists', rel::oid);
        fix := format('DELETE FROM tenancy.tables WHERE relation = %s;', rel::oid);
        RETURN NEXT;
        RETURN;
    ELSIF tenant_attnum IS NULL THEN
        status := 'failure';
        detail := format('tenant column %I does not exist; the other checks skip this table', tenant_col);
        fix := format('SELECT tenancy.add_tenant_column(%L, column_name => %L);', rel::text, tenant_col);
        RETURN NEXT;
        RETURN;
    ELSIF tenant_type <> tenancy.key_type() THEN
        status := 'warning';
        detail := format('tenant column %I is of type %s but tenant keys are %s: comparisons cast and cannot use indexes',
                         tenant_col, format_type(tenant_type, NULL), keytype);
        fix := format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING %I::%s;', rel, tenant_col, keytype, tenant_col, keytype);
    ELSE
        status := 'ok';
        detail := format('tenant column %I of type %s', tenant_col, keytype);
        fix := NULL;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_tenant_column(regclass, name, boolean, smallint, oid) IS 'verify() check tenant_column: its report rows';

-- null_tenant: rows the backfill has not reached
CREATE FUNCTION tenancy.verify_null_tenant(rel regclass, tenant_col name, max_rows bigint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    lim     text := coalesce(max_rows::text, 'ALL');
    n       bigint;
    atleast text;
BEGIN
    relation := rel;
    n := (tenancy.table_query(rel, NULL,
              format('SELECT count(*) FROM (SELECT 1 FROM %s WHERE %I IS NULL LIMIT %s) s', rel, tenant_col, lim)))[1]::bigint;
    atleast := CASE WHEN n = max_rows THEN 'at least ' ELSE '' END;
    check_name := 'null_tenant'; rows_affected := n;
    IF n > 0 THEN
        status := 'failure';
        detail := format('%s%s rows have no tenant: policies hide them and NOT NULL cannot be enforced; fill them with tenancy.backfill() or an UPDATE',
                         atleast, n);
        fix := format('CALL tenancy.backfill(%L);', rel::text);
    ELSE
        status := 'ok'; detail := 'every row has a tenant'; fix := NULL;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_null_tenant(regclass, name, bigint) IS 'verify() check null_tenant: its report rows';

-- unknown_tenant: rows whose tenant is not in the registry
CREATE FUNCTION tenancy.verify_unknown_tenant(rel regclass, tenant_col name, tenant_type oid, max_rows bigint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    keytype text := format_type(tenancy.key_type(), NULL);
    lim     text := coalesce(max_rows::text, 'ALL');
    n       bigint;
    cond    text;
    atleast text;
    keys    text[] := ARRAY(SELECT k.id::text FROM tenancy.tenants k);
BEGIN
    relation := rel;
    cond := CASE WHEN tenant_type = tenancy.key_type()
                 THEN format('k.id = x.%I', tenant_col)
                 ELSE format('k.id::text = x.%I::text', tenant_col) END;
    n := (tenancy.table_query(rel, NULL,
              format('SELECT count(*) FROM (SELECT 1 FROM %s x WHERE x.%I IS NOT NULL'
                     ' AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest($1::%s[]) k(id) WHERE %s) LIMIT %s) s',
                     rel, tenant_col, keytype, cond, lim),
              keys))[1]::bigint;
    atleast := CASE WHEN n = max_rows THEN 'at least ' ELSE '' END;
    check_name := 'unknown_tenant'; rows_affected := n;
    IF n > 0 THEN
        status := 'failure';
        detail := format('%s%s rows name a tenant that is not in tenancy.tenants: register the listed keys with tenancy.create_tenant() or reassign the rows',
                         atleast, n);
        fix := format('SELECT DISTINCT x.%I FROM %s x WHERE x.%I IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.tenants k WHERE %s);',
                      tenant_col, rel, tenant_col, cond);
    ELSE
        status := 'ok'; detail := 'every tenant is registered'; fix := NULL;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_unknown_tenant(regclass, name, oid, bigint) IS 'verify() check unknown_tenant: its report rows';

-- conflicting_parents: rows whose foreign keys to registered tables
-- lead to parents of different tenants.  No tenant is right for
-- them: cross_tenant_reference's one-line fix through one key would
-- break the other, so it gives none for the keys involved.  One row
-- per pair of keys; no row for a table with fewer than two keys.
CREATE FUNCTION tenancy.verify_conflicting_parents(rel regclass, max_rows bigint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text, conflicting_keys text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    lim      text := coalesce(max_rows::text, 'ALL');
    n        bigint;
    cnt      bigint;
    txt      text;
    txt2     text;
    bad      integer;
    keyexpr  text;
    keynames text;
    qrel     regclass;
    f        record;
BEGIN
    relation := rel;
    check_name := 'conflicting_parents'; bad := 0; cnt := 0;
    SELECT string_agg(format('x.%I', a.attname), ', ' ORDER BY k.i),
           '(' || string_agg(quote_ident(a.attname), ', ' ORDER BY k.i) || ')'
      INTO keyexpr, keynames
      FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, i)
      JOIN pg_attribute a ON a.attnum = k.attnum
     WHERE i.indrelid = rel AND i.indisprimary AND a.attrelid = rel;
    -- Keys declared on partitions count (foreign_keys()): a pair of keys on
    -- the same partition, or one on the table and one on a partition, is
    -- compared on that partition.
    FOR f IN
        WITH fk AS (
            SELECT k.conoid, k.conname, k.partition, k.cols, k.refcols, k.confrelid AS parent,
                   pt.column_name AS pcol, pa.atttypid AS ptype
            FROM tenancy.foreign_keys(rel) k
            JOIN tenancy.tables pt ON pt.relation = k.confrelid
            JOIN pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attname = pt.column_name
                                AND pa.attnum > 0 AND NOT pa.attisdropped
        )
        SELECT a.conname AS con1, b.conname AS con2, a.parent AS parent1, b.parent AS parent2,
               coalesce(a.partition, b.partition, rel) AS src,
               CASE WHEN a.ptype = b.ptype THEN format('p1.%I <> p2.%I', a.pcol, b.pcol)
                    ELSE format('p1.%I::text <> p2.%I::text', a.pcol, b.pcol) END AS cond,
               (SELECT string_agg(format('x.%I = p1.%I', u.ck, u.pk), ' AND ' ORDER BY u.i)
                FROM unnest(a.cols, a.refcols) WITH ORDINALITY AS u(ck, pk, i)) AS join1,
               (SELECT string_agg(format('x.%I = p2.%I', u.ck, u.pk), ' AND ' ORDER BY u.i)
                FROM unnest(b.cols, b.refcols) WITH ORDINALITY AS u(ck, pk, i)) AS join2
        FROM fk a JOIN fk b ON (a.conname, a.conoid) < (b.conname, b.conoid)
        WHERE a.partition IS NULL OR b.partition IS NULL OR a.partition = b.partition
        ORDER BY coalesce(a.partition, b.partition, rel)::text, a.conname, b.conname
    LOOP
        cnt := cnt + 1;
        txt := current_setting('enable_nestloop');
        PERFORM set_config('enable_nestloop', 'off', true);
        txt2 := format(' FROM %s x JOIN %s p1 ON %s JOIN %s p2 ON %s WHERE %s',
                       f.src, f.parent1, f.join1, f.parent2, f.join2, f.cond);
        qrel := f.src;
        BEGIN
            n := (tenancy.table_query(qrel, NULL,
                      format('SELECT count(*) FROM (SELECT 1%s LIMIT %s) s', txt2, lim)))[1]::bigint;
        EXCEPTION WHEN insufficient_privilege THEN
            qrel := f.parent1;
            BEGIN
                n := (tenancy.table_query(qrel, NULL,
                          format('SELECT count(*) FROM (SELECT 1%s LIMIT %s) s', txt2, lim)))[1]::bigint;
            EXCEPTION WHEN insufficient_privilege THEN
                n := NULL; txt2 := SQLERRM;
            END;
        END;
        IF n > 0 THEN
            -- up to 5 sample keys: the primary key (else the ctid), lowest first
            txt2 := (tenancy.table_query(qrel, NULL,
                         format('SELECT pg_catalog.array_to_string(ARRAY(SELECT %s%s ORDER BY %s LIMIT 5), ''; '')',
                                CASE WHEN keyexpr IS NULL THEN 'x.ctid::text'
                                     ELSE format('pg_catalog.concat_ws('', '', %s)', keyexpr) END,
                                txt2, coalesce(keyexpr, 'x.ctid'))))[1];
        END IF;
        PERFORM set_config('enable_nestloop', txt, true);
        relation := rel; conflicting_keys := NULL;
        IF n IS NULL THEN
            bad := bad + 1;
            status := 'warning'; rows_affected := NULL;
            detail := format('cannot compare the parents through %I and %I: neither the owner of %s nor the owner of %s can read %s, %s and %s (%s)',
                             f.con1, f.con2, rel, f.parent1, rel, f.parent1, f.parent2, txt2);
            fix := format('GRANT SELECT ON %s, %s TO %I;', f.parent1, f.parent2,
                          (SELECT pg_get_userbyid(cl.relowner) FROM pg_class cl WHERE cl.oid = rel));
            IF txt2 LIKE 'statement reads tables of owners that do not share their privileges%' THEN
                fix := NULL;    -- no role may read them all without lending one owner's rights to another's code
            END IF;
            RETURN NEXT;
        ELSIF n > 0 THEN
            bad := bad + 1;
            conflicting_keys := ARRAY[f.con1::text, f.con2::text];
            status := 'failure'; rows_affected := n; fix := NULL;
            detail := format('%s%s%s rows reference through %I a row of %s and through %I a row of %s whose tenants differ (%s %s %s): no tenant is right for both, so a person must decide, row by row, which parent the row keeps and change the other reference; no fix is suggested',
                             CASE WHEN f.src <> rel THEN format('partition %s: ', f.src) ELSE '' END,
                             CASE WHEN n = max_rows THEN 'at least ' ELSE '' END, n, f.con1, f.parent1, f.con2, f.parent2,
                             CASE WHEN n > 5 THEN 'for example' ELSE 'namely' END,
                             coalesce(keynames, 'ctid'), txt2);
            RETURN NEXT;
        END IF;
    END LOOP;
    IF cnt > 0 AND bad = 0 THEN
        status := 'ok'; rows_affected := 0; fix := NULL;
        detail := format('%s pairs of foreign keys to registered tables, their parents agree on the tenant of every row', cnt);
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_conflicting_parents(regclass, bigint) IS 'verify() check conflicting_parents: its report rows, with the pair of foreign keys of each failure (conflicting_keys)';

-- derived_tenant_mismatch: rows whose tenant is not the one their
-- derivation gives (only for tables with tenancy.derive_tenant())
CREATE FUNCTION tenancy.verify_derived_tenant_mismatch(rel regclass, tenant_col name, max_rows bigint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    lim  text := coalesce(max_rows::text, 'ALL');
    n    bigint;
    txt  text;
    txt2 text;
    f    record;
BEGIN
    relation := rel;
    FOR f IN
        SELECT s.value_sql, d.source_kind, d.source
          FROM tenancy.derived_tenants d,
               LATERAL tenancy.derive_source(d.relation,
                                             CASE WHEN d.source_kind = 'expression' THEN d.source END,
                                             CASE WHEN d.source_kind = 'foreign_key' THEN d.source::name END) s
         WHERE d.relation = rel
    LOOP
        check_name := 'derived_tenant_mismatch';
        txt2 := format('SELECT count(*) FROM (SELECT 1 FROM %s t WHERE t.%I OPERATOR(pg_catalog.<>) %s LIMIT %s) s',
                       rel, tenant_col, f.value_sql, lim);
        BEGIN
            n := (tenancy.table_query(rel, NULL, txt2))[1]::bigint;
        EXCEPTION WHEN insufficient_privilege THEN
            n := NULL; txt2 := SQLERRM;
        END;
        txt := CASE f.source_kind WHEN 'expression' THEN format('the expression %s', f.source)
                                  ELSE format('foreign key %I', f.source) END;
        rows_affected := n;
        IF n IS NULL THEN
            status := 'warning';
            detail := format('cannot compare the tenants with their derivation from %s (%s)', txt, txt2);
            fix := NULL;
        ELSIF n > 0 THEN
            status := 'failure';
            detail := format('%s%s rows have another tenant than the one derived from %s: new rows get the derived one; review these',
                             CASE WHEN n = max_rows THEN 'at least ' ELSE '' END, n, txt);
            fix := format('UPDATE %s t SET %I = %s WHERE t.%I <> %s;', rel, tenant_col, f.value_sql, tenant_col, f.value_sql);
        ELSE
            status := 'ok'; fix := NULL;
            detail := format('every tenant matches its derivation from %s', txt);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.verify_derived_tenant_mismatch(regclass, name, bigint) IS 'verify() check derived_tenant_mismatch: its report rows';

-- cross_tenant_reference, per foreign key to a registered table
CREATE FUNCTION tenancy.verify_cross_tenant_reference(rel regclass, tenant_col name, tenant_type oid, max_rows bigint, conflicted text[])
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    lim     text := coalesce(max_rows::text, 'ALL');
    n       bigint;
    cnt     bigint;
    txt     text;
    txt2    text;
    cond    text;
    atleast text;
    bad     integer;
    f       record;
BEGIN
    relation := rel;
    check_name := 'cross_tenant_reference'; bad := 0; cnt := 0;
    -- (keys declared on partitions count the rows of their partition)
    FOR f IN
        SELECT c.conname, c.conrelid AS child, c.partition, c.confrelid AS parent, pt.column_name AS pcol,
               pa.atttypid AS ptype,
               (SELECT string_agg(format('x.%I = p.%I', k.ck, k.pk), ' AND ' ORDER BY k.i)
                FROM unnest(c.cols, c.refcols) WITH ORDINALITY AS k(ck, pk, i)) AS joincond
        FROM tenancy.foreign_keys(rel) c
        JOIN tenancy.tables pt ON pt.relation = c.confrelid
        JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attname = pt.column_name
                            AND pa.attnum > 0 AND NOT pa.attisdropped
    LOOP
        cnt := cnt + 1;
        relation := f.child;
        cond := CASE WHEN f.ptype = tenant_type THEN format('x.%I <> p.%I', tenant_col, f.pcol)
                     ELSE format('x.%I::text <> p.%I::text', tenant_col, f.pcol) END;
        -- Under a LIMIT the planner bets on a nested loop that finds the
        -- first rows early; with few or no violations that probes the
        -- parent once per child row.  A hash join reads each table once.
        txt := current_setting('enable_nestloop');
        PERFORM set_config('enable_nestloop', 'off', true);
        txt2 := format('SELECT count(*) FROM (SELECT 1 FROM %s x JOIN %s p ON %s WHERE %s LIMIT %s) s',
                       f.child, f.parent, f.joincond, cond, lim);
        BEGIN
            n := (tenancy.table_query(f.child, NULL, txt2))[1]::bigint;
        EXCEPTION WHEN insufficient_privilege THEN
            BEGIN
                n := (tenancy.table_query(f.parent, NULL, txt2))[1]::bigint;
            EXCEPTION WHEN insufficient_privilege THEN
                n := NULL; txt2 := SQLERRM;
            END;
        END;
        PERFORM set_config('enable_nestloop', txt, true);
        IF n IS NULL THEN
            bad := bad + 1;
            status := 'warning'; rows_affected := NULL;
            detail := format('cannot count the references through %I: neither the owner of %s nor the owner of %s can read both tables (%s)',
                             f.conname, f.child, f.parent, txt2);
            fix := format('GRANT SELECT ON %s TO %I;', f.parent,
                          (SELECT pg_get_userbyid(cl.relowner) FROM pg_class cl WHERE cl.oid = f.child));
            IF txt2 LIKE 'statement reads tables of owners that do not share their privileges%' THEN
                fix := NULL;    -- no role may read both without lending one owner's rights to the other's code
            END IF;
            RETURN NEXT;
        ELSIF n > 0 THEN
            bad := bad + 1;
            atleast := CASE WHEN n = max_rows THEN 'at least ' ELSE '' END;
            status := 'failure'; rows_affected := n;
            detail := format('%s%s rows %sreference through %I a row of %s that belongs to another tenant: once enforced, the reference dangles; the suggested fix gives each row the tenant of its parent (review it)',
                             atleast, n, CASE WHEN f.partition IS NOT NULL THEN format('of partition %s ', f.partition) ELSE '' END,
                             f.conname, f.parent);
            fix := format('UPDATE %s x SET %I = p.%I FROM %s p WHERE %s AND %s;',
                          f.child, tenant_col, f.pcol, f.parent, f.joincond, cond);
            IF f.conname = ANY (conflicted) THEN
                -- the parents disagree for some rows (conflicting_parents)
                detail := format('%s%s rows %sreference through %I a row of %s that belongs to another tenant: once enforced, the reference dangles; for some of these rows the parents disagree with each other (see conflicting_parents), so no fix is suggested: decide those rows first',
                                 atleast, n, CASE WHEN f.partition IS NOT NULL THEN format('of partition %s ', f.partition) ELSE '' END,
                                 f.conname, f.parent);
                fix := NULL;
            END IF;
            RETURN NEXT;
        END IF;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; rows_affected := 0; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no foreign key to a registered table'
                       ELSE format('%s foreign keys to registered tables, every reference within one tenant', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_cross_tenant_reference(regclass, name, oid, bigint, text[]) IS 'verify() check cross_tenant_reference: its report rows';

-- unique_scope: unique constraints and indexes without the tenant column
CREATE FUNCTION tenancy.verify_unique_scope(rel regclass, tenant_col name, tenant_attnum smallint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    txt2 text;
    bad  integer;
    f    record;
BEGIN
    relation := rel;
    check_name := 'unique_scope'; bad := 0; rows_affected := NULL; txt2 := '';
    FOR f IN
        SELECT ic.relname AS idxname, con.conname, con.contype, u.surrogate_key,
               tenancy.column_list(rel, u.keys) AS cols
        FROM tenancy.unscoped_unique_indexes(rel, tenant_attnum) u
        JOIN pg_class ic ON ic.oid = u.indexrelid
        LEFT JOIN pg_constraint con ON con.oid = u.conoid
        ORDER BY ic.relname
    LOOP
        IF f.surrogate_key THEN
            txt2 := format('; primary key %I (%s) is a generated surrogate key, unique across tenants by construction',
                           f.conname, f.cols);
            CONTINUE;
        END IF;
        bad := bad + 1;
        status := 'failure';
        detail := format('%s %I (%s) is unique across all tenants: a tenant can be refused a value another tenant holds, and so learn that it exists',
                         CASE f.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique constraint' ELSE 'unique index' END,
                         coalesce(f.conname, f.idxname), coalesce(f.cols, 'expression'));
        fix := format('SELECT * FROM tenancy.scope_constraints_sql(%L) \gexec', rel::text);
        RETURN NEXT;
    END LOOP;
    IF bad = 0 THEN
        status := 'ok'; fix := NULL;
        detail := format('every unique constraint and index includes %I%s', tenant_col, txt2);
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_unique_scope(regclass, name, smallint) IS 'verify() check unique_scope: its report rows';

-- foreign_key_scope: foreign keys to registered tables that are not (tenant, key)
CREATE FUNCTION tenancy.verify_foreign_key_scope(rel regclass, tenant_col name)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt bigint;
    bad integer;
    f   record;
BEGIN
    relation := rel;
    check_name := 'foreign_key_scope'; bad := 0; cnt := 0; rows_affected := NULL;
    -- (keys declared on partitions included, reported on their partition)
    FOR f IN
        SELECT c.conname, c.conrelid AS child, c.partition, c.confrelid AS parent,
               (SELECT string_agg(quote_ident(k.col), ', ' ORDER BY k.i)
                  FROM unnest(c.cols) WITH ORDINALITY k(col, i)) AS cols,
               EXISTS (SELECT 1 FROM unnest(c.cols, c.refcols) k(ck, pk)
                       WHERE k.ck = tenant_col AND k.pk = pt.column_name) AS scoped
        FROM tenancy.foreign_keys(rel) c
        JOIN tenancy.tables pt ON pt.relation = c.confrelid
    LOOP
        cnt := cnt + 1;
        CONTINUE WHEN f.scoped;
        bad := bad + 1;
        relation := f.child; status := 'failure';
        detail := format('foreign key %I %s(%s) references %s without the tenant column: a row can reference another tenant''s row, which shows that row exists and lets one tenant block the other''s deletes; enforce does not close this, the contract phase does',
                         f.conname, CASE WHEN f.partition IS NOT NULL THEN format('of partition %s ', f.partition) ELSE '' END,
                         f.cols, f.parent);
        fix := format('SELECT * FROM tenancy.scope_constraints_sql(%L) \gexec', rel::text);
        RETURN NEXT;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no foreign key to a registered table'
                       ELSE format('%s foreign keys to registered tables, all (tenant, key)', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_foreign_key_scope(regclass, name) IS 'verify() check foreign_key_scope: its report rows';

-- rls_enabled, rls_forced, tenancy_policy: the table and each partition
-- and inheritance child; the mode is the one enable_rls()/set_mode()
-- recorded, not tenancy.tables.stage
CREATE FUNCTION tenancy.verify_row_security(rel regclass, tenant_col name, rel_stage text)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    fix_rls text;
    rmode   text;
    p       record;
    c       record;
BEGIN
    relation := rel;
    rmode := (SELECT rt.mode FROM tenancy.rls_tables rt WHERE rt.relation = rel);
    FOR p IN
        SELECT c.oid::regclass AS prel, c.relrowsecurity, c.relforcerowsecurity,
               EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = c.oid
                       AND pol.polname = 'tenancy_policy') AS has_policy,
               -- migrating mode's policies: all of them in that stage, none in others
               (SELECT string_agg(quote_ident(l.name), ', ' ORDER BY l.name)
                  FROM unnest(tenancy.rls_legacy_policies()) l(name)
                 WHERE EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = c.oid AND pol.polname = l.name)
                       IS DISTINCT FROM coalesce(rmode = 'migrating', false)) AS legacy_wrong
        FROM (SELECT rel::oid AS relid, 0 AS level
              UNION ALL
              SELECT pt.relid, pt.level FROM tenancy.rls_tree(rel) pt WHERE pt.level > 0) tree
        JOIN pg_class c ON c.oid = tree.relid
        ORDER BY tree.level, c.oid::regclass::text
    LOOP
        relation := p.prel; rows_affected := NULL;
        -- one fix for all three: enable_rls() enables, forces and creates the policy;
        -- set_mode() covers what a covered table's tree misses
        fix_rls := CASE WHEN EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = rel AND t.root = rel)
                        THEN format('SELECT tenancy.set_mode(%L, %L);', rel::text,
                                    (SELECT t.mode FROM tenancy.rls_tables t WHERE t.relation = rel))
                        ELSE format('SELECT tenancy.enable_rls(%L%s);', rel::text,
                                    CASE WHEN tenant_col <> 'tenant_id'
                                         THEN format(', column_name => %L', tenant_col) ELSE '' END) END;
        FOR c IN
            SELECT * FROM (VALUES
                ('rls_enabled', p.relrowsecurity, 'row level security is enabled',
                 'row level security is disabled: every role with SELECT sees every tenant'),
                ('rls_forced', p.relforcerowsecurity, 'row level security is forced for the owner too',
                 'row level security is not forced: the table owner (often the application role) bypasses the policy'),
                ('tenancy_policy', p.has_policy AND p.legacy_wrong IS NULL, 'policy tenancy_policy exists',
                 CASE WHEN NOT p.has_policy
                      THEN 'policy tenancy_policy is missing: nothing limits rows to the current tenant'
                      WHEN rmode = 'migrating'
                      THEN format('migrating-mode policies %s are missing: rows whose tenant is still NULL are hidden, or the implicit tenant cannot change them', p.legacy_wrong)
                      ELSE format('migrating-mode policies %s are left in stage %s: rows whose tenant is NULL stay visible or changeable by every tenant', p.legacy_wrong, coalesce(rmode, rel_stage)) END)
            ) v(name, good, ok_detail, bad_detail)
        LOOP
            check_name := c.name;
            IF c.good THEN
                status := 'ok'; detail := c.ok_detail; fix := NULL;
            ELSE
                status := 'failure'; detail := c.bad_detail; fix := fix_rls;
            END IF;
            RETURN NEXT;
        END LOOP;
    END LOOP;
    relation := rel;
END
$$;
COMMENT ON FUNCTION tenancy.verify_row_security(regclass, name, text) IS 'verify() checks rls_enabled, rls_forced and tenancy_policy: their report rows, per partition';

-- policy_mode: the policy must be enforced.  The mode is the one
-- enable_rls()/set_mode() recorded in tenancy.rls_tables, of a
-- tenancy_policy that exists (rls_enabled and rls_forced check row
-- security), never tenancy.tables.stage: a stage is only a record.
CREATE FUNCTION tenancy.verify_policy_mode(rel regclass, tenant_col name, rel_stage text)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    pmode text;
BEGIN
    relation := rel;
    check_name := 'policy_mode'; rows_affected := NULL;
    fix := format('SELECT tenancy.set_mode(%L, %L);', rel::text, 'enforce');
    pmode := (SELECT rt.mode FROM tenancy.rls_tables rt
               WHERE rt.relation = rel
                 AND EXISTS (SELECT 1 FROM pg_policy pp
                              WHERE pp.polrelid = rt.relation AND pp.polname = 'tenancy_policy'));
    IF pmode = 'enforce' THEN
        status := 'ok'; fix := NULL;
        detail := format('stage %s: the policy is enforced', CASE WHEN rel_stage = 'contract' THEN rel_stage ELSE pmode END);
    ELSIF pmode = 'shadow' THEN
        status := 'warning';
        detail := 'stage shadow: the policy hides no rows yet; then migrating while the backfill runs, and enforce once it is finished and the shadow divergences are drained';
    ELSIF pmode = 'migrating' THEN
        status := 'warning';
        detail := 'stage migrating: rows not backfilled yet are visible to every tenant; enforce once the backfill is finished and the shadow divergences are drained';
    ELSIF EXISTS (SELECT 1 FROM pg_policy pp WHERE pp.polrelid = rel AND pp.polname = 'tenancy_policy') THEN
        status := 'failure'; fix := NULL;
        detail := format('stage %s is recorded, but policy tenancy_policy was not made by tenancy.enable_rls() (it is not in tenancy.rls_tables): its mode is unknown', rel_stage);
    ELSIF rel_stage IN ('migrating', 'shadow', 'enforce', 'contract') THEN
        status := 'failure';
        detail := format('stage %s is recorded, but the table carries no tenancy policy: it is not protected', rel_stage);
        fix := format('SELECT tenancy.enable_rls(%L, column_name => %L, mode => %L);', rel::text, tenant_col, 'shadow');
    ELSE
        status := 'failure';
        detail := format('stage %s: the table is not protected yet; shadow first, then migrating while the backfill runs, and enforce once it is finished', rel_stage);
        fix := format('SELECT tenancy.set_mode(%L, %L);', rel::text, 'shadow');
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_policy_mode(regclass, name, text) IS 'verify() check policy_mode: its report rows';

-- shadow_divergence: what shadow mode counted and nobody drained
CREATE FUNCTION tenancy.verify_shadow_divergence(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    n bigint;
    m bigint;
BEGIN
    relation := rel;
    check_name := 'shadow_divergence'; rows_affected := NULL; fix := NULL;
    BEGIN
        SELECT coalesce(sum(s.rows_hidden), 0)::bigint, coalesce(sum(s.writes_refused), 0)::bigint
          INTO n, m FROM tenancy.shadow_stats s WHERE s.relation = rel;
        rows_affected := n + m;
        IF n + m > 0 THEN
            status := 'failure';
            detail := format('shadow mode counted %s rows the policy would hide and %s writes it would refuse: find the code path that runs without the right tenant, fix it, then reset the counters',
                             n, m);
            fix := format('SELECT tenancy.reset_shadow_stats(%L);', rel::text);
        ELSIF (SELECT d.rows_dropped FROM tenancy.shadow_stats_dropped() d) > 0 THEN
            -- the counters were full: this table's divergences may be missing
            status := 'failure'; rows_affected := NULL;
            detail := format('shadow counters incomplete: %s rows of tables past tenancy.shadow_max_tables were not counted, so divergences may be missing: raise tenancy.shadow_max_tables (restart), reset the counters and run the workload again',
                             (SELECT d.rows_dropped FROM tenancy.shadow_stats_dropped() d));
            fix := 'SELECT tenancy.reset_shadow_stats();';
        ELSE
            status := 'ok'; detail := 'no shadow divergence counted';
        END IF;
    EXCEPTION
        WHEN object_not_in_prerequisite_state THEN   -- not preloaded: no counters
            status := 'warning'; rows_affected := NULL;
            detail := format('shadow counters unavailable: %s', SQLERRM);
            fix := NULL;
    END;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_shadow_divergence(regclass) IS 'verify() check shadow_divergence: its report rows';

-- tenant_index: an index led by the tenant column
CREATE FUNCTION tenancy.verify_tenant_index(rel regclass, tenant_col name, tenant_attnum smallint, rel_kind "char")
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
BEGIN
    relation := rel;
    check_name := 'tenant_index'; rows_affected := NULL;
    IF EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = rel AND i.indkey[0] = tenant_attnum) THEN
        status := 'ok'; detail := format('an index is led by %I', tenant_col); fix := NULL;
    ELSE
        status := 'warning';
        detail := format('no index is led by %I: every policy-filtered query scans the whole table', tenant_col);
        fix := CASE WHEN rel_kind = 'p'
                    THEN format('CREATE INDEX ON %s (%I);', rel, tenant_col)
                    ELSE format('CREATE INDEX CONCURRENTLY ON %s (%I);', rel, tenant_col) END;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_tenant_index(regclass, name, smallint, "char") IS 'verify() check tenant_index: its report rows';

-- view_security_invoker: views over the table (directly or through
-- other views) that run with their owner's rights
CREATE FUNCTION tenancy.verify_view_security_invoker(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt bigint;
    bad integer;
    ak  record;
    f   record;
BEGIN
    relation := rel;
    check_name := 'view_security_invoker'; bad := 0; cnt := 0;
    FOR f IN
        WITH RECURSIVE deps(view) AS (
            SELECT rw.ev_class
            FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = rel AND rw.ev_class <> rel
            UNION
            SELECT rw.ev_class
            FROM deps JOIN pg_depend d ON d.refobjid = deps.view
            JOIN pg_rewrite rw ON rw.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND rw.ev_class <> deps.view
        )
        SELECT v.oid::regclass AS view, pg_get_userbyid(v.relowner) AS owner,
               EXISTS (SELECT 1 FROM pg_options_to_table(v.reloptions) o
                       WHERE o.option_name = 'security_invoker'
                         AND lower(o.option_value) IN ('true', 'on', 'yes', '1')) AS invoker
        FROM deps JOIN pg_class v ON v.oid = deps.view
        WHERE v.relkind = 'v'
        ORDER BY v.oid::regclass::text
    LOOP
        cnt := cnt + 1;
        CONTINUE WHEN f.invoker;
        bad := bad + 1;
        relation := f.view; status := 'failure'; rows_affected := NULL;
        detail := format('view %s reads %s with the rights of its owner %I, not of the caller: row level security is checked against the owner',
                         f.view, rel, f.owner);
        fix := format('ALTER VIEW %s SET (security_invoker = true);', f.view);
        SELECT * INTO ak FROM tenancy.ack_state(check_name, f.view::text);
        IF ak.state = 'acknowledged' THEN
            status := 'acknowledged';
        END IF;
        detail := detail || coalesce('; ' || ak.note, '');
        RETURN NEXT;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; rows_affected := NULL; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no view reads this table'
                       ELSE format('%s views read this table, all with security_invoker', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_view_security_invoker(regclass) IS 'verify() check view_security_invoker: its report rows';

-- materialized_view: materialized views over the table (directly or
-- through views) that a role row security applies to can read: they
-- hold the rows their owner saw at refresh, every tenant's.
CREATE FUNCTION tenancy.verify_materialized_view(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt bigint;
    bad integer;
    ak  record;
    f   record;
BEGIN
    relation := rel;
    check_name := 'materialized_view'; bad := 0; cnt := 0;
    FOR f IN
        WITH RECURSIVE deps(view) AS (
            SELECT rw.ev_class
            FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = rel AND rw.ev_class <> rel
            UNION
            SELECT rw.ev_class
            FROM deps JOIN pg_depend d ON d.refobjid = deps.view
            JOIN pg_rewrite rw ON rw.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND rw.ev_class <> deps.view
        )
        SELECT v.oid::regclass AS view, v.relowner,
               EXISTS (SELECT 1 FROM aclexplode(coalesce(v.relacl, acldefault('r', v.relowner))) a
                       WHERE a.grantee = 0 AND a.privilege_type = 'SELECT')
               OR EXISTS (SELECT 1 FROM pg_attribute at, aclexplode(at.attacl) a
                          WHERE at.attrelid = v.oid AND a.grantee = 0 AND a.privilege_type = 'SELECT') AS public_reads,
               (SELECT string_agg(quote_ident(ro.rolname), ', ' ORDER BY ro.rolname)
                  FROM pg_roles ro
                 WHERE ro.oid >= 16384 AND ro.oid <> v.relowner AND NOT ro.rolsuper AND NOT ro.rolbypassrls
                   AND has_any_column_privilege(ro.oid, v.oid, 'SELECT')) AS readers,
               (SELECT string_agg(format('REVOKE SELECT ON %s FROM %s;', v.oid::regclass,
                                         CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END),
                                  E'\n' ORDER BY g.grantee <> 0, pg_get_userbyid(g.grantee))
                  FROM (SELECT DISTINCT a.grantee
                          FROM (SELECT (aclexplode(coalesce(v.relacl, acldefault('r', v.relowner)))).*
                                UNION ALL
                                SELECT (aclexplode(at.attacl)).* FROM pg_attribute at WHERE at.attrelid = v.oid) a
                         WHERE a.privilege_type = 'SELECT' AND a.grantee <> v.relowner
                           AND NOT EXISTS (SELECT 1 FROM pg_roles ro WHERE ro.oid = a.grantee
                                            AND (ro.rolsuper OR ro.rolbypassrls))) g) AS revokes
        FROM deps JOIN pg_class v ON v.oid = deps.view
        WHERE v.relkind = 'm'
        ORDER BY v.oid::regclass::text
    LOOP
        cnt := cnt + 1;
        CONTINUE WHEN NOT f.public_reads AND f.readers IS NULL;
        bad := bad + 1;
        relation := f.view; status := 'failure'; rows_affected := NULL;
        detail := format('materialized view %s holds the rows of %s its owner %I saw at refresh, every tenant''s, and row security does not apply to reading it; %s can read it: revoke SELECT, or replace it with a view with security_invoker (or a table with the tenant column and the policy)',
                         f.view, rel, pg_get_userbyid(f.relowner),
                         CASE WHEN f.public_reads THEN 'every role (PUBLIC)' ELSE f.readers END);
        fix := coalesce(f.revokes, format('-- %s reads it through a role it is a member of: revoke that membership', f.readers));
        SELECT * INTO ak FROM tenancy.ack_state(check_name, f.view::text);
        IF ak.state = 'acknowledged' THEN
            status := 'acknowledged';
        END IF;
        detail := detail || coalesce('; ' || ak.note, '');
        RETURN NEXT;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; rows_affected := NULL; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no materialized view reads this table'
                       ELSE format('%s materialized views read this table, none readable by a role row security applies to', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_materialized_view(regclass) IS 'verify() check materialized_view: its report rows';

-- security_definer_function: SECURITY DEFINER functions owned by a
-- superuser or a BYPASSRLS role that read the table (pg_depend for
-- SQL-standard bodies, else a word match of the table's name in the
-- source, as the advisories) and that an application role may run:
-- they return every tenant's rows.
CREATE FUNCTION tenancy.verify_security_definer_function(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt        bigint;
    bad        integer;
    ak         record;
    relname_re text;
    f          record;
BEGIN
    relation := rel;
    check_name := 'security_definer_function'; bad := 0; cnt := 0;
    relname_re := '\m' || regexp_replace(lower((SELECT cl.relname FROM pg_class cl WHERE cl.oid = rel)),
                                         '([^a-z0-9_])', '\\\1', 'g') || '\M';
    FOR f IN
        SELECT p.oid::regprocedure AS fn, o.rolname AS owner, o.rolsuper,
               EXISTS (SELECT 1 FROM pg_depend d
                       WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                         AND d.refclassid = 'pg_class'::regclass AND d.refobjid = rel) AS depends,
               EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                       WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public_runs,
               (SELECT string_agg(quote_ident(ro.rolname), ', ' ORDER BY ro.rolname)
                  FROM pg_roles ro
                 WHERE ro.oid >= 16384 AND ro.oid <> p.proowner AND NOT ro.rolsuper AND NOT ro.rolbypassrls
                   AND has_function_privilege(ro.oid, p.oid, 'EXECUTE')) AS runners
        FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
        WHERE p.prosecdef AND (o.rolsuper OR o.rolbypassrls)
          AND NOT EXISTS (SELECT 1 FROM pg_depend e
                          WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
          AND (EXISTS (SELECT 1 FROM pg_depend d
                       WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                         AND d.refclassid = 'pg_class'::regclass AND d.refobjid = rel)
               OR lower(p.prosrc) ~ relname_re)
        ORDER BY p.oid::regprocedure::text
    LOOP
        cnt := cnt + 1;
        CONTINUE WHEN NOT f.public_runs AND f.runners IS NULL;
        bad := bad + 1;
        relation := rel; status := 'failure'; rows_affected := NULL;
        detail := format('SECURITY DEFINER function %s runs as %I, %s, and %s %s: %s can call it and get every tenant''s rows; make it SECURITY INVOKER, or REVOKE EXECUTE from PUBLIC and grant it only to roles that may see every tenant, or give it an owner row security applies to',
                         f.fn, f.owner, CASE WHEN f.rolsuper THEN 'a superuser' ELSE 'a role with BYPASSRLS' END,
                         CASE WHEN f.depends THEN 'depends on' ELSE 'its source mentions' END, rel,
                         CASE WHEN f.public_runs THEN 'every role (PUBLIC)' ELSE f.runners END);
        fix := format('ALTER FUNCTION %s SECURITY INVOKER;', f.fn);
        SELECT * INTO ak FROM tenancy.ack_state(check_name, f.fn::text);
        IF ak.state = 'acknowledged' THEN
            status := 'acknowledged';
        END IF;
        detail := detail || coalesce('; ' || ak.note, '');
        RETURN NEXT;
    END LOOP;
    IF bad = 0 THEN
        status := 'ok'; rows_affected := NULL; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no SECURITY DEFINER function of a superuser or BYPASSRLS role reads this table'
                       ELSE format('%s SECURITY DEFINER functions of a superuser or BYPASSRLS role read this table, none callable by a role row security applies to', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_security_definer_function(regclass) IS 'verify() check security_definer_function: its report rows';

-- bypassrls_role: roles that skip the policy and can read the table.
-- Superusers are left out: they bypass every check by design.  An
-- acknowledged role gets its own row.
CREATE FUNCTION tenancy.verify_bypassrls_role(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    n    bigint;
    cnt  bigint;
    txt  text;
    txt2 text;
    cond text;
    ak   record;
    f    record;
BEGIN
    relation := rel;
    check_name := 'bypassrls_role'; n := 0; cnt := 0; txt := NULL; txt2 := NULL; cond := NULL;
    FOR f IN
        SELECT ro.oid::regrole::text AS role
          FROM pg_roles ro
         WHERE ro.rolbypassrls AND NOT ro.rolsuper
           AND has_any_column_privilege(ro.oid, rel, 'SELECT')
         ORDER BY ro.rolname
    LOOP
        cnt := cnt + 1;
        SELECT * INTO ak FROM tenancy.ack_state(check_name, f.role);
        IF ak.state = 'acknowledged' THEN
            status := 'acknowledged'; rows_affected := 1; fix := NULL;
            detail := format('role %s has BYPASSRLS and can read every tenant''s rows; %s', f.role, ak.note);
            RETURN NEXT;
            CONTINUE;
        END IF;
        n := n + 1;
        txt := concat_ws(', ', txt, f.role);
        txt2 := concat_ws(E'\n', txt2, format('ALTER ROLE %s NOBYPASSRLS;', f.role));
        IF ak.note IS NOT NULL THEN
            cond := concat_ws('; ', cond, ak.note);
        END IF;
    END LOOP;
    rows_affected := n;
    IF n > 0 THEN
        status := 'warning';
        detail := format('roles with BYPASSRLS can read every tenant''s rows: %s', txt) || coalesce('; ' || cond, '');
        fix := txt2;
        RETURN NEXT;
    ELSIF cnt = 0 THEN
        status := 'ok'; detail := 'no non-superuser role with BYPASSRLS can read this table'; fix := NULL;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_bypassrls_role(regclass) IS 'verify() check bypassrls_role: its report rows';

-- unregistered_reference: tables whose foreign keys point here but
-- that are not registered (nor partitions of a registered table); a
-- key declared on a partition is reported on its partitioned table
CREATE FUNCTION tenancy.verify_unregistered_reference(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    bad integer;
    f   record;
BEGIN
    relation := rel;
    check_name := 'unregistered_reference'; bad := 0; rows_affected := NULL;
    FOR f IN
        SELECT c.root::regclass AS child,
               string_agg(CASE WHEN c.conrelid = c.root THEN quote_ident(c.conname)
                               ELSE format('%I of partition %s', c.conname, c.conrelid::regclass) END,
                          ', ' ORDER BY c.conrelid::regclass::text, c.conname) AS cons
        FROM (SELECT c.conname, c.conrelid, coalesce(pg_partition_root(c.conrelid), c.conrelid) AS root
                FROM pg_constraint c
               WHERE c.contype = 'f' AND c.confrelid = rel AND c.conparentid = 0 AND c.conrelid <> rel
                 AND NOT EXISTS (SELECT 1 FROM tenancy.tables t2
                                 WHERE t2.relation = c.conrelid
                                    OR t2.relation IN (SELECT pg_partition_ancestors(c.conrelid)))) c
        GROUP BY c.root
        ORDER BY c.root::regclass::text
    LOOP
        bad := bad + 1;
        relation := f.child; status := 'failure';
        detail := format('%s references %s (%s) but is not registered: its rows carry no tenant and no policy protects them',
                         f.child, rel, f.cons);
        fix := format('SELECT tenancy.add_tenant_column(%L);', f.child::text);
        RETURN NEXT;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; fix := NULL;
        detail := 'every table referencing this one is registered';
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_unregistered_reference(regclass) IS 'verify() check unregistered_reference: its report rows';

-- shared_table: tables marked shared (tenancy.mark_shared()); a failure
-- when a role other than the owner (and superusers) may write one of
-- them or a partition: one tenant's write changes every tenant's data.
CREATE FUNCTION tenancy.verify_shared_table()
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt  bigint;
    txt  text;
    txt2 text;
    ak   record;
    f    record;
BEGIN
    check_name := 'shared_table'; cnt := 0; rows_affected := NULL;
    FOR f IN
        SELECT s.relation AS rel, c.oid IS NOT NULL AS present, c.relowner
          FROM tenancy.shared_tables s LEFT JOIN pg_class c ON c.oid = s.relation
         ORDER BY s.relation::text
    LOOP
        cnt := cnt + 1; relation := f.rel;
        IF NOT f.present THEN
            status := 'failure';
            detail := format('relation %s marked shared no longer exists', f.rel::oid);
            fix := format('SELECT tenancy.unmark_shared(%s);', f.rel::oid);
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- direct grants of a write privilege (PUBLIC included), on the
        -- table, its partitions and their columns
        SELECT string_agg(DISTINCT w.who, ', '),
               string_agg(DISTINCT format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM %s;', w.member, w.who), E'\n')
          INTO txt, txt2
          FROM (SELECT m.relid::regclass AS member,
                       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS who
                  FROM (SELECT f.rel AS relid UNION SELECT t.relid FROM pg_partition_tree(f.rel) t) m
                  JOIN pg_class c ON c.oid = m.relid,
                       LATERAL (SELECT (aclexplode(coalesce(c.relacl, acldefault('r', c.relowner)))).*
                                UNION ALL
                                SELECT (aclexplode(at.attacl)).* FROM pg_attribute at WHERE at.attrelid = c.oid) a
                 WHERE a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
                   AND a.grantee <> c.relowner
                   AND NOT EXISTS (SELECT 1 FROM pg_roles ro WHERE ro.oid = a.grantee AND ro.rolsuper)) w;
        IF txt IS NULL THEN
            -- roles that write through a membership (of the owner, of
            -- pg_write_all_data)
            SELECT string_agg(quote_ident(ro.rolname), ', ' ORDER BY ro.rolname) INTO txt
              FROM pg_roles ro
             WHERE ro.oid >= 16384 AND ro.oid <> f.relowner AND NOT ro.rolsuper
               AND (has_table_privilege(ro.oid, f.rel, 'INSERT, UPDATE, DELETE, TRUNCATE')
                    OR has_any_column_privilege(ro.oid, f.rel, 'INSERT, UPDATE'));
            txt2 := CASE WHEN txt IS NOT NULL
                         THEN format('-- %s: write access through a membership (of the owner, of pg_write_all_data): revoke that membership', txt) END;
        END IF;
        IF txt IS NULL THEN
            status := 'ok'; fix := NULL;
            detail := format('shared by every tenant; only its owner %I (and superusers) can write it',
                             pg_get_userbyid(f.relowner));
        ELSE
            status := 'failure'; fix := txt2;
            detail := format('shared by every tenant, but %s can write it: one tenant''s write changes every tenant''s data; let only its owner write it',
                             CASE WHEN txt = 'PUBLIC' THEN 'every role (PUBLIC)' ELSE txt END);
            SELECT * INTO ak FROM tenancy.ack_state(check_name, f.rel::text);
            IF ak.state = 'acknowledged' THEN
                status := 'acknowledged';
            END IF;
            detail := detail || coalesce('; ' || ak.note, '');
        END IF;
        RETURN NEXT;
    END LOOP;
    IF cnt = 0 THEN
        relation := NULL; status := 'ok'; fix := NULL;
        detail := 'no table is marked shared (tenancy.mark_shared())';
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_shared_table() IS 'verify() check shared_table: its report rows for the database';

-- user_without_tenant: users owning resources without any membership
CREATE FUNCTION tenancy.verify_user_without_tenant(max_rows bigint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    lim     text := coalesce(max_rows::text, 'ALL');
    n       bigint;
    txt     text;
    bad     integer;
    ownkeys text[];
    f       record;
BEGIN
    check_name := 'user_without_tenant'; bad := 0;
    FOR f IN
        SELECT s.users, s.key_column, s.name_column, s.slug_prefix,
               array_agg(s.resource::text ORDER BY s.resource::text, s.owner_column) AS resources,
               array_agg(s.owner_column ORDER BY s.resource::text, s.owner_column) AS owners,
               array_agg(s.resource ORDER BY s.resource::text, s.owner_column) AS rels
        FROM tenancy.identity_sources s
        GROUP BY s.users, s.key_column, s.name_column, s.slug_prefix
        ORDER BY s.users::text
    LOOP
        bad := bad + 1;
        -- Each table as its owner, one table per statement: the owner keys
        -- of each resource table, then the users table, with the owner keys
        -- and the member keys as parameters.
        BEGIN
            ownkeys := '{}';
            FOR i IN 1 .. cardinality(f.rels) LOOP
                -- plpgsql_check: the table through %s of regclass, the column through %I.
                ownkeys := ownkeys || coalesce((tenancy.table_query(f.rels[i], NULL,
                             format('SELECT pg_catalog.array_agg(DISTINCT o.%1$I::pg_catalog.text) FROM %2$s o WHERE o.%1$I IS NOT NULL',
                                    f.owners[i], f.rels[i])))[1]::text[], '{}');
            END LOOP;
            n := (tenancy.table_query(f.users, NULL,
                      format('SELECT count(*) FROM (SELECT 1 FROM %s u WHERE u.%I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])'
                             ' AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest($2::pg_catalog.text[]) mb(user_key)'
                             ' WHERE mb.user_key OPERATOR(pg_catalog.=) u.%I::pg_catalog.text) LIMIT %s) s',
                             f.users, f.key_column, f.key_column, lim),
                      ownkeys, ARRAY(SELECT DISTINCT mb.user_key FROM tenancy.memberships mb)))[1]::bigint;
        EXCEPTION WHEN insufficient_privilege THEN
            n := NULL; txt := SQLERRM;
        END;
        relation := f.users; rows_affected := n;
        IF n IS NULL THEN
            status := 'warning';
            detail := format('cannot count the users: %s', txt);
            fix := NULL;
        ELSIF n > 0 THEN
            status := 'failure';
            detail := format('%s%s users own resources but belong to no tenant: they lose their data once policies are enforced',
                             CASE WHEN n = max_rows THEN 'at least ' ELSE '' END, n);
            fix := format('SELECT * FROM tenancy.create_personal_tenants(%L, %L, %L, %L, %L, %L);',
                          f.users::text, f.key_column, f.name_column, f.resources, f.owners, f.slug_prefix);
        ELSE
            status := 'ok'; detail := 'every user owning resources belongs to a tenant'; fix := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF bad = 0 THEN
        relation := NULL; status := 'ok'; rows_affected := 0; fix := NULL;
        detail := 'no identity source recorded: tenancy.create_personal_tenants() has not run';
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_user_without_tenant(bigint) IS 'verify() check user_without_tenant: its report rows for the database';

-- tenant_without_owner: once memberships are in use, every tenant needs one
CREATE FUNCTION tenancy.verify_tenant_without_owner()
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    n    bigint;
    txt  text;
    txt2 text;
BEGIN
    check_name := 'tenant_without_owner'; relation := 'tenancy.memberships'::regclass;
    IF NOT EXISTS (SELECT 1 FROM tenancy.memberships) AND NOT EXISTS (SELECT 1 FROM tenancy.identity_sources) THEN
        status := 'ok'; rows_affected := 0; fix := NULL;
        detail := 'memberships are not in use';
    ELSE
        SELECT count(*),
               string_agg(quote_literal(t.slug), ', ' ORDER BY t.slug) FILTER (WHERE t.rn <= 10),
               string_agg(format('SELECT tenancy.add_member(%L, %L, %L);', t.slug, '<user key>', 'owner'), E'\n' ORDER BY t.slug)
                   FILTER (WHERE t.rn <= 10)
          INTO n, txt, txt2
          FROM (SELECT k.slug, row_number() OVER (ORDER BY k.slug) AS rn
                FROM tenancy.tenants k
                WHERE NOT EXISTS (SELECT 1 FROM tenancy.memberships mb
                                  WHERE mb.tenant = k.id AND mb.role = 'owner')) t;
        rows_affected := n;
        IF n > 0 THEN
            status := 'warning';
            detail := format('%s tenants have no owner (%s%s): nobody can administer them', n, txt,
                             CASE WHEN n > 10 THEN ', ...' ELSE '' END);
            fix := txt2;
        ELSE
            status := 'ok'; detail := 'every tenant has an owner'; fix := NULL;
        END IF;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_tenant_without_owner() IS 'verify() check tenant_without_owner: its report rows for the database';

REVOKE EXECUTE ON FUNCTION
    tenancy.verify_tenant_column(regclass,name,boolean,smallint,oid),
    tenancy.verify_null_tenant(regclass,name,bigint),
    tenancy.verify_unknown_tenant(regclass,name,oid,bigint),
    tenancy.verify_conflicting_parents(regclass,bigint),
    tenancy.verify_derived_tenant_mismatch(regclass,name,bigint),
    tenancy.verify_cross_tenant_reference(regclass,name,oid,bigint,text[]),
    tenancy.verify_unique_scope(regclass,name,smallint),
    tenancy.verify_foreign_key_scope(regclass,name),
    tenancy.verify_row_security(regclass,name,text),
    tenancy.verify_policy_mode(regclass,name,text),
    tenancy.verify_shadow_divergence(regclass),
    tenancy.verify_tenant_index(regclass,name,smallint,"char"),
    tenancy.verify_view_security_invoker(regclass),
    tenancy.verify_materialized_view(regclass),
    tenancy.verify_security_definer_function(regclass),
    tenancy.verify_bypassrls_role(regclass),
    tenancy.verify_unregistered_reference(regclass),
    tenancy.verify_shared_table(),
    tenancy.verify_user_without_tenant(bigint),
    tenancy.verify_tenant_without_owner()
FROM PUBLIC;

-- The readiness report.  One row per finding; a clean database gives one
-- 'ok' row per check and table, so the report shows what was checked.
-- Counting runs through tenancy.table_query(): as the table's owner when the
-- caller has its privileges (a superuser does), else as the caller, under
-- SECURITY_RESTRICTED_OPERATION, so code the owner planted (index
-- expressions and predicates, operators) never runs with more rights than
-- the owner's; the owner sees every row, FORCE ROW LEVEL SECURITY or not.
-- row_security is off: a role that RLS would filter gets an error instead
-- of a wrong count.  A count that joins two tables runs as the first owner
-- that can read both (the child's, then the parent's), else is a warning.
-- The registry is passed as a parameter (table owners cannot read it).
-- max_rows caps each count.
-- squawk: ignore require-lock-timeout: each fix is one statement for a DBA to run by itself; its index fixes are CONCURRENTLY (no lock blocking reads or writes)
-- squawk: ignore require-statement-timeout: as above: a statement_timeout would cancel the concurrent build
CREATE FUNCTION tenancy.verify(tbl regclass DEFAULT NULL, max_rows bigint DEFAULT NULL)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    r          record;
    cp         record;
    conflicted text[];
BEGIN
    IF max_rows IS NOT NULL AND max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be positive'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF tbl IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.tables t WHERE t.relation = tbl) THEN
        RAISE EXCEPTION 'table % is not registered in tenancy.tables', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register it with tenancy.add_tenant_column(), or call tenancy.verify() for every registered table.';
    END IF;

    FOR r IN
        SELECT t.relation AS rel, t.column_name AS col, t.stage,
               c.oid IS NOT NULL AS present, c.relkind,
               a.attnum, a.atttypid
        FROM tenancy.tables t
        LEFT JOIN pg_class c ON c.oid = t.relation
        LEFT JOIN pg_attribute a ON a.attrelid = t.relation AND a.attname = t.column_name
                                AND a.attnum > 0 AND NOT a.attisdropped
        WHERE tbl IS NULL OR t.relation = tbl
        ORDER BY t.relation::text
    LOOP
        RETURN QUERY SELECT * FROM tenancy.verify_tenant_column(r.rel, r.col, r.present, r.attnum, r.atttypid);
        -- a table or column that is gone: the other checks skip the table
        CONTINUE WHEN NOT r.present OR r.attnum IS NULL;
        RETURN QUERY SELECT * FROM tenancy.verify_null_tenant(r.rel, r.col, max_rows);
        RETURN QUERY SELECT * FROM tenancy.verify_unknown_tenant(r.rel, r.col, r.atttypid, max_rows);
        -- the foreign keys whose parents disagree: cross_tenant_reference
        -- suggests no fix through them
        conflicted := '{}';
        FOR cp IN SELECT * FROM tenancy.verify_conflicting_parents(r.rel, max_rows) LOOP
            check_name := cp.check_name; relation := cp.relation; status := cp.status;
            rows_affected := cp.rows_affected; detail := cp.detail; fix := cp.fix;
            conflicted := conflicted || coalesce(cp.conflicting_keys, '{}');
            RETURN NEXT;
        END LOOP;
        RETURN QUERY SELECT * FROM tenancy.verify_derived_tenant_mismatch(r.rel, r.col, max_rows);
        RETURN QUERY SELECT * FROM tenancy.verify_cross_tenant_reference(r.rel, r.col, r.atttypid, max_rows, conflicted);
        RETURN QUERY SELECT * FROM tenancy.verify_unique_scope(r.rel, r.col, r.attnum);
        RETURN QUERY SELECT * FROM tenancy.verify_foreign_key_scope(r.rel, r.col);
        RETURN QUERY SELECT * FROM tenancy.verify_row_security(r.rel, r.col, r.stage);
        RETURN QUERY SELECT * FROM tenancy.verify_policy_mode(r.rel, r.col, r.stage);
        RETURN QUERY SELECT * FROM tenancy.verify_shadow_divergence(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_tenant_index(r.rel, r.col, r.attnum, r.relkind);
        RETURN QUERY SELECT * FROM tenancy.verify_view_security_invoker(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_materialized_view(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_security_definer_function(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_bypassrls_role(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_unregistered_reference(r.rel);
    END LOOP;

    IF tbl IS NOT NULL THEN
        RETURN;
    END IF;

    RETURN QUERY SELECT * FROM tenancy.verify_shared_table();
    RETURN QUERY SELECT * FROM tenancy.verify_user_without_tenant(max_rows);
    RETURN QUERY SELECT * FROM tenancy.verify_tenant_without_owner();
END
$$;
COMMENT ON FUNCTION tenancy.verify(regclass, bigint) IS 'readiness report: one row per check and finding (ok, warning, failure) with a suggested fix';
REVOKE EXECUTE ON FUNCTION
    tenancy.verify(regclass, bigint)
FROM PUBLIC;
-- src/rollback.sql: rollback_table(): undo what the extension added for a table.

------------------------------------------------------------------------------
-- Rollback: undo what the extension added for a table, keep the data
------------------------------------------------------------------------------

-- squawk: ignore prefer-robust-stmts: computed from contract_log and the catalog: rerun after a failure, it holds only what is still to undo
-- squawk: ignore require-concurrent-index-deletion: rollback_table() runs these in one transaction, where DROP INDEX CONCURRENTLY is not allowed
-- squawk: ignore ban-drop-not-null: the rollback restores the schema from before the migration, nullable tenant column included
CREATE FUNCTION tenancy.rollback_table_sql(tbl regclass) RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    l   record;
    st  text;
    pn  name;
BEGIN
    st := (tenancy.registered_table(tbl)).stage;
    -- the preview's timeouts (rollback_table() runs the rest in one transaction);
    -- no statement_timeout: undoing a scoped key validates the original again
    RETURN QUERY SELECT u.s || ';' FROM unnest(tenancy.preview_set(true)) u(s);
    -- contract steps, newest first (those of its partitions too)
    FOR l IN
        SELECT c.undo_sql FROM tenancy.contract_log c
        WHERE (c.relation = tbl OR c.relation IN (SELECT t.relid FROM pg_partition_tree(tbl) t WHERE t.level > 0))
          AND c.undone_at IS NULL AND c.undo_sql IS NOT NULL
        ORDER BY c.id DESC
    LOOP
        RETURN NEXT l.undo_sql || ';';
    END LOOP;
    -- the derived tenant's trigger (and its policy)
    IF EXISTS (SELECT 1 FROM tenancy.derived_tenants d WHERE d.relation = tbl) THEN
        RETURN NEXT format('SELECT tenancy.underive_tenant(%L);', tbl::text);
    END IF;
    -- column defaults that call the extension's functions
    FOR l IN
        SELECT DISTINCT a.attname
        FROM pg_attrdef ad
        JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
        JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                        AND d.refclassid = 'pg_proc'::regclass
        JOIN pg_proc pr ON pr.oid = d.refobjid AND pr.pronamespace = 'tenancy'::regnamespace
        WHERE ad.adrelid = tbl
        ORDER BY a.attname
    LOOP
        RETURN NEXT format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT;', tbl, l.attname);
    END LOOP;
    -- the policy: through the RLS feature when it is installed
    IF EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = 'tenancy_policy') THEN
        IF EXISTS (SELECT 1 FROM tenancy.rls_tables r WHERE r.relation = tbl AND r.root = tbl) THEN
            -- made by enable_rls(): undo exactly what it did
            RETURN NEXT format('SELECT tenancy.disable_rls(%L);', tbl::text);
        ELSE
            FOR l IN
                SELECT c.oid::regclass AS rel,
                       NOT EXISTS (SELECT 1 FROM pg_policy p2 WHERE p2.polrelid = c.oid
                                   AND p2.polname <> 'tenancy_policy'
                                   AND p2.polname <> ALL (tenancy.rls_legacy_policies())) AS only_policy
                FROM (SELECT tbl::oid AS relid, 0 AS level
                      UNION ALL
                      SELECT pt.relid, pt.level FROM tenancy.rls_tree(tbl) pt WHERE pt.level > 0) tree
                JOIN pg_class c ON c.oid = tree.relid
                WHERE EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenancy_policy')
                ORDER BY tree.level, c.oid::regclass::text
            LOOP
                RETURN NEXT format('DROP POLICY tenancy_policy ON %s;', l.rel);
                FOR pn IN SELECT p.polname FROM pg_policy p
                            WHERE p.polrelid = l.rel AND p.polname = ANY (tenancy.rls_legacy_policies())
                            ORDER BY p.polname LOOP
                    RETURN NEXT format('DROP POLICY %I ON %s;', pn, l.rel);
                END LOOP;
                IF l.only_policy THEN
                    RETURN NEXT format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;', l.rel);
                END IF;
            END LOOP;
        END IF;
    END IF;
    IF st IN ('migrating', 'shadow', 'enforce', 'contract') THEN
        RETURN NEXT format('SELECT tenancy.tables_set_stage(%L, %L);', tbl::text, 'backfill');
    END IF;
    RETURN NEXT format('UPDATE tenancy.contract_log SET undone_at = pg_catalog.now() WHERE relation = %L::regclass AND undone_at IS NULL;',
                       tbl::text);
    IF EXISTS (SELECT 1 FROM tenancy.contract_log c JOIN pg_partition_tree(tbl) t ON t.relid = c.relation
                WHERE t.level > 0 AND c.undone_at IS NULL) THEN
        RETURN NEXT format('UPDATE tenancy.contract_log SET undone_at = pg_catalog.now() WHERE relation IN (SELECT relid FROM pg_catalog.pg_partition_tree(%L) WHERE level > 0) AND undone_at IS NULL;',
                           tbl::text);
    END IF;
    RETURN QUERY SELECT u.s || ';' FROM unnest(tenancy.preview_reset()) u(s);
END
$$;
COMMENT ON FUNCTION tenancy.rollback_table_sql(regclass) IS 'preview of rollback_table(): the statements, newest step first';

CREATE FUNCTION tenancy.rollback_table(tbl regclass) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmt text;
BEGIN
    -- plpgsql_check: VOLATILE: the statements are DDL.
    FOR stmt IN SELECT s FROM tenancy.rollback_table_sql(tbl) s LOOP
        -- the preview's SET/RESET of its timeouts: not for one transaction
        CONTINUE WHEN stmt ~ '^(SET|RESET) (lock|statement)_timeout';
        -- plpgsql_check: from rollback_table_sql(): names through %I, literals through %L.
        EXECUTE stmt;
        RETURN NEXT stmt;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.rollback_table(regclass) IS 'undo the contract steps, the tenancy defaults and the policy of a table in one transaction; the data stays';
REVOKE EXECUTE ON FUNCTION
    tenancy.rollback_table_sql(regclass),
    tenancy.rollback_table(regclass)
FROM PUBLIC;
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
-- src/status.sql: migration status: unmigrated-row counts (C: status.c, worker.c).

------------------------------------------------------------------------------
-- Migration status: unmigrated-row counts kept by the background worker
-- (tenancy.worker_*) and by tenancy.refresh_status().  See src/status.c.
------------------------------------------------------------------------------

CREATE TABLE tenancy.migration_status (
    relation         regclass PRIMARY KEY,
    column_name      name NOT NULL,
    unmigrated       bigint,
    total_rows       bigint,
    percent_migrated numeric,
    method           text NOT NULL
                     CONSTRAINT migration_status_method_check
                     CHECK (method OPERATOR(pg_catalog.=) ANY (ARRAY['proof', 'exact', 'estimate'])),
    checked_at       timestamptz NOT NULL,
    measured_at      timestamptz,
    rate_per_s       numeric,
    eta              interval,
    scan_position    bigint,
    scan_unmigrated  bigint,
    scan_rows        bigint,
    prev_unmigrated  bigint,
    prev_measured_at timestamptz
);
COMMENT ON TABLE tenancy.migration_status IS 'rows whose tenant column is still NULL, per registered table; kept by the background worker and tenancy.refresh_status()';
COMMENT ON COLUMN tenancy.migration_status.unmigrated IS 'rows with the tenant column NULL (NULL: unknown yet)';
COMMENT ON COLUMN tenancy.migration_status.total_rows IS 'rows in the table: the planner''s estimate, or the count of the last complete incremental pass';
COMMENT ON COLUMN tenancy.migration_status.method IS 'proof: NOT NULL or validated CHECK; exact: counted (partial index or complete pass); estimate: pg_stats null_frac * rows, until a first pass ends; for a partitioned table the weakest of its partitions''';
COMMENT ON COLUMN tenancy.migration_status.checked_at IS 'last time the worker or refresh_status() looked at the table';
COMMENT ON COLUMN tenancy.migration_status.measured_at IS 'time of the last exact count or proof';
COMMENT ON COLUMN tenancy.migration_status.rate_per_s IS 'rows migrated per second since the figure before the last change was last seen (decays while nothing moves; negative: NULLs are being added)';
COMMENT ON COLUMN tenancy.migration_status.eta IS 'time left at that rate';
COMMENT ON COLUMN tenancy.migration_status.scan_position IS 'next heap block of the incremental count under way (for a partitioned table: the OID from which the partitions are still to be visited in the pass under way); NULL when none';
COMMENT ON COLUMN tenancy.migration_status.prev_unmigrated IS 'the figure before the last change (for the rate)';
COMMENT ON COLUMN tenancy.migration_status.prev_measured_at IS 'last time that figure was measured';
REVOKE ALL ON TABLE tenancy.migration_status FROM PUBLIC;

-- The leaf partitions of registered partitioned tables, each counted like a
-- plain table; the parent's row in migration_status is their sum.
CREATE TABLE tenancy.migration_status_partitions (
    relation         regclass PRIMARY KEY,
    parent           regclass NOT NULL,
    column_name      name NOT NULL,
    unmigrated       bigint,
    total_rows       bigint,
    percent_migrated numeric,
    method           text NOT NULL
                     CONSTRAINT migration_status_partitions_method_check
                     CHECK (method OPERATOR(pg_catalog.=) ANY (ARRAY['proof', 'exact', 'estimate'])),
    checked_at       timestamptz NOT NULL,
    measured_at      timestamptz,
    rate_per_s       numeric,
    eta              interval,
    scan_position    bigint,
    scan_unmigrated  bigint,
    scan_rows        bigint,
    prev_unmigrated  bigint,
    prev_measured_at timestamptz
);
CREATE INDEX migration_status_partitions_parent ON tenancy.migration_status_partitions (parent);
COMMENT ON TABLE tenancy.migration_status_partitions IS 'per leaf partition of a registered partitioned table: the same figures as tenancy.migration_status, whose row for the parent is their sum';
COMMENT ON COLUMN tenancy.migration_status_partitions.parent IS 'the registered partitioned table (the root, through every level)';
REVOKE ALL ON TABLE tenancy.migration_status_partitions FROM PUBLIC;

CREATE FUNCTION tenancy.refresh_status(tbl regclass DEFAULT NULL)
RETURNS SETOF tenancy.migration_status
    AS 'MODULE_PATHNAME', 'tenancy_refresh_status'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.refresh_status(regclass) IS 'count unmigrated rows now, as one worker cycle does, for one registered table or all; returns their status rows';
REVOKE EXECUTE ON FUNCTION tenancy.refresh_status(regclass) FROM PUBLIC;
-- src/rls.sql: row-level security: policies, modes, advisories, partition and inheritance coverage (C: rls.c, rls_guard.c).

------------------------------------------------------------------------------
-- Row-level security: policy generator and staged enforcement
-- (migrating, shadow, enforce).  One policy per table, named tenancy_policy;
-- its mode is tenancy.tables.stage.  What enable_rls() changed is kept in
-- tenancy.rls_tables, so disable_rls() can undo exactly that.
------------------------------------------------------------------------------

CREATE TABLE tenancy.rls_tables (
    relation    regclass PRIMARY KEY,
    root        regclass NOT NULL,
    column_name name NOT NULL,
    mode        text NOT NULL
                CONSTRAINT rls_tables_mode_check
                CHECK (mode OPERATOR(pg_catalog.=) ANY (ARRAY['migrating', 'shadow', 'enforce'])),
    prior_rls   boolean NOT NULL,
    prior_force boolean NOT NULL,
    prior_stage text,
    enabled_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.rls_tables IS 'tables that carry tenancy_policy: the table enable_rls() was called on (root), its mode, and the row security state and stage to restore';
SELECT pg_catalog.pg_extension_config_dump('tenancy.rls_tables', '');
REVOKE ALL ON TABLE tenancy.rls_tables FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.rls_tables TO PUBLIC;

-- Bookkeeping, run as the extension owner by tenancy.rls_record() once it
-- has checked that the caller owns the table.
CREATE FUNCTION tenancy.rls_record_internal(op text, tbl regclass, root regclass,
                                            column_name name, mode text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur_stage text;
    reg_column name;
    found_reg boolean;
    r record;
BEGIN
    IF op = 'forget_dropped' THEN
        DELETE FROM tenancy.rls_tables t
         WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);
        RETURN;
    END IF;

    -- Rows left behind by dropped tables must not claim a reused OID.
    DELETE FROM tenancy.rls_tables t
     WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);

    IF op = 'register' THEN
        IF mode IS NULL OR mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
            RAISE EXCEPTION 'unknown row level security mode "%"', mode
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The modes are shadow, migrating and enforce.';
        END IF;
        -- Only what enable_rls() records (rls_record() is executable by
        -- every role, and the worker and verify() trust this table): a table
        -- with a tenant column of the key type, under its own root or the
        -- partitioned table it belongs to.
        PERFORM tenancy.rls_check(tbl, column_name, mode);
        IF tbl <> root THEN
            PERFORM tenancy.rls_check(root, column_name, mode);
            IF tbl NOT IN (SELECT tenancy.rls_members(root)) THEN
                RAISE EXCEPTION 'table % is not a partition of %', tbl, root
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Register a partition with the partitioned table above it, as tenancy.enable_rls() does.';
            END IF;
        END IF;
        SELECT t.stage, t.column_name INTO cur_stage, reg_column
          FROM tenancy.tables t WHERE t.relation = tbl;
        found_reg := FOUND;
        IF tbl = root AND found_reg AND reg_column <> column_name THEN
            RAISE EXCEPTION 'table % is registered with tenant column "%", not "%"', tbl, reg_column, column_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Pass column_name => %L.', reg_column);
        END IF;
        INSERT INTO tenancy.rls_tables AS t (relation, root, column_name, mode, prior_rls, prior_force, prior_stage)
        SELECT tbl, root, column_name, mode, c.relrowsecurity, c.relforcerowsecurity,
               CASE WHEN tbl = root THEN cur_stage END
          FROM pg_class c WHERE c.oid = tbl
        ON CONFLICT (relation) DO UPDATE SET mode = EXCLUDED.mode
         WHERE t.root = EXCLUDED.root AND t.column_name = EXCLUDED.column_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'table % already carries the tenancy policy of another table or column', tbl
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Call tenancy.disable_rls() on it first.';
        END IF;
        IF tbl = root THEN
            INSERT INTO tenancy.tables (relation, column_name, stage)
            VALUES (tbl, column_name, mode)
            ON CONFLICT (relation) DO UPDATE SET stage = EXCLUDED.stage;
        END IF;
    ELSIF op = 'unregister' THEN
        DELETE FROM tenancy.rls_tables t WHERE t.relation = tbl RETURNING * INTO r;
        IF FOUND AND r.relation = r.root THEN
            IF r.prior_stage IS NOT NULL THEN
                UPDATE tenancy.tables t SET stage = r.prior_stage WHERE t.relation = tbl;
            ELSE
                -- enable_rls() registered the table: forget it, unless another
                -- feature has recorded something about it since (a source, or
                -- rows referencing it).
                BEGIN
                    DELETE FROM tenancy.tables t WHERE t.relation = tbl AND t.source IS NULL;
                EXCEPTION WHEN foreign_key_violation THEN
                    NULL;
                END;
                UPDATE tenancy.tables t SET stage = 'expand' WHERE t.relation = tbl;
            END IF;
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown operation "%"', op USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION tenancy.rls_record_internal(text, regclass, regclass, name, text) FROM PUBLIC;

-- Checks that the caller owns the table(s), then runs rls_record_internal()
-- as the extension owner.  The generated DDL calls it, so that running the
-- output of policy_sql() is equivalent to enable_rls().
CREATE FUNCTION tenancy.rls_record(op text, tbl regclass, root regclass DEFAULT NULL,
                                   column_name name DEFAULT NULL, mode text DEFAULT NULL)
RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_rls_record'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.rls_record(text, regclass, regclass, name, text) IS 'record (register/unregister) a table in tenancy.rls_tables; the caller must own it';

-- Validation shared by every generator: what the table is, that the caller
-- owns it, the tenant column and the accessor matching its type.
CREATE FUNCTION tenancy.rls_check(tbl regclass, column_name name, mode text,
                                  OUT qualified text, OUT accessor text, OUT is_partitioned boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
    coltype oid;
    basetype oid;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT cl.relkind, cl.relname, n.nspname, cl.relowner INTO c
      FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', tbl::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF c.relkind IN ('v', 'm') THEN
        RAISE EXCEPTION '"%" is a view', c.relname
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'Row level security applies to tables; a view is checked through its tables.',
                  HINT = 'Enable it on the tables under the view, and give the view security_invoker.';
    ELSIF c.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', c.relname USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT pg_has_role(c.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', c.relname
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF mode IS NULL OR mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
        RAISE EXCEPTION 'unknown row level security mode "%"', coalesce(mode, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The modes are shadow, migrating and enforce.';
    END IF;
    IF mode = 'shadow' THEN
        PERFORM tenancy.shadow_require_preload();
    END IF;
    SELECT a.atttypid INTO coltype
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', column_name, c.relname
            USING ERRCODE = 'undefined_column',
                  HINT = 'Add the tenant column first (tenancy.add_tenant_column()), or pass column_name.';
    END IF;
    basetype := coalesce((SELECT nullif(t.typbasetype, 0) FROM pg_type t WHERE t.oid = coltype), coltype);
    IF basetype <> tenancy.key_type() THEN
        RAISE EXCEPTION 'column "%" of relation "%" is of type %, but tenant keys are of type %',
                column_name, c.relname, format_type(coltype, NULL), format_type(tenancy.key_type(), NULL)
            USING ERRCODE = 'datatype_mismatch',
                  DETAIL = 'The policy compares the column with the current tenant without a cast, so that an index on the column stays usable.',
                  HINT = 'Change the column type, or tenancy.tenant_type.';
    END IF;
    qualified := format('%I.%I', c.nspname, c.relname);
    accessor := CASE format_type(basetype, NULL)
                    WHEN 'uuid' THEN 'tenancy.current_tenant()'
                    WHEN 'bigint' THEN 'tenancy.current_tenant_bigint()'
                    ELSE 'tenancy.current_tenant_text()' END;
    is_partitioned := c.relkind = 'p';
END
$$;

-- USING and WITH CHECK expressions of the policy for a mode.
CREATE FUNCTION tenancy.rls_quals(tbl regclass, column_name name, mode text,
                                  OUT using_expr text, OUT check_expr text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    col text := quote_ident(column_name);
BEGIN
    IF mode = 'enforce' THEN
        using_expr := format('%s OPERATOR(pg_catalog.=) %s', col, chk.accessor);
        check_expr := using_expr;
    ELSIF mode = 'migrating' THEN
        -- rows whose tenant is NULL: see tenancy.rls_legacy_stmts()
        using_expr := format('%s OPERATOR(pg_catalog.=) %s', col, chk.accessor);
        check_expr := using_expr;
    ELSE
        using_expr := format('tenancy.shadow_read(%L::regclass, %s)', chk.qualified, col);
        check_expr := format('tenancy.shadow_write(%L::regclass, %s)', chk.qualified, col);
    END IF;
END
$$;

-- Migrating mode adds, next to tenancy_policy (plain equality in every mode
-- but shadow), one policy per command for rows whose tenant is still NULL:
-- every tenant reads them, only the implicit tenant updates or deletes them
-- (nobody while no implicit tenant is set).  tenancy.is_implicit_tenant()
-- reads the registry when the statement runs, so set_implicit_tenant() needs
-- no set_mode() after it.
CREATE FUNCTION tenancy.rls_legacy_policies() RETURNS name[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY['tenancy_policy_legacy_delete', 'tenancy_policy_legacy_read',
                 'tenancy_policy_legacy_update']::name[];
$$;

CREATE FUNCTION tenancy.rls_legacy_stmts(qualified text, column_name name, roles text, mode text)
RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN mode = 'migrating' THEN ARRAY[
        format('CREATE POLICY tenancy_policy_legacy_read ON %s AS PERMISSIVE FOR SELECT TO %s USING (%I IS NULL)',
               qualified, roles, column_name),
        format('CREATE POLICY tenancy_policy_legacy_update ON %s AS PERMISSIVE FOR UPDATE TO %s USING (%I IS NULL AND (SELECT tenancy.is_implicit_tenant())) WITH CHECK (%I IS NULL AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name, column_name),
        format('CREATE POLICY tenancy_policy_legacy_delete ON %s AS PERMISSIVE FOR DELETE TO %s USING (%I IS NULL AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name)]
    ELSE '{}'::text[] END;
$$;

-- The table and everything below it, partitions and inheritance children
-- alike (both are rows of pg_inherits), at any depth.
CREATE FUNCTION tenancy.rls_tree(tbl regclass) RETURNS TABLE (relid regclass, level integer)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tree(relid, level) AS (
        SELECT tbl::oid, 0
        UNION
        SELECT i.inhrelid, tree.level + 1 FROM tree JOIN pg_inherits i ON i.inhparent = tree.relid
    )
    SELECT t.relid::regclass, min(t.level) FROM tree t GROUP BY t.relid;
$$;

-- The tables a policy goes on: the table and every partition and
-- inheritance child below it that can carry row security (foreign tables
-- cannot).  Children come first: see tenancy.rls_cover_partitions().
CREATE FUNCTION tenancy.rls_members(tbl regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.relid
      FROM tenancy.rls_tree(tbl) m
      JOIN pg_class c ON c.oid = m.relid
     WHERE c.relkind IN ('r', 'p')
     ORDER BY m.level DESC, c.relname, m.relid;
$$;

CREATE FUNCTION tenancy.rls_role_list(roles regrole[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN coalesce(cardinality(roles), 0) = 0 THEN 'PUBLIC'
                ELSE (SELECT string_agg(quote_ident(r.rolname), ', ' ORDER BY u.ord)
                        FROM unnest(roles) WITH ORDINALITY u(role, ord)
                        JOIN pg_roles r ON r.oid = u.role) END;
$$;

-- Statements that put the policy on one table (a member of root's tree).
CREATE FUNCTION tenancy.rls_cover_stmts(tbl regclass, root regclass, column_name name,
                                        roles text, mode text) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    q record := tenancy.rls_quals(tbl, column_name, mode);
BEGIN
    RETURN ARRAY[
        format('SELECT tenancy.rls_record(''register'', %L::regclass, %L::regclass, %L, %L)',
               chk.qualified, (tenancy.rls_check(root, column_name, mode)).qualified, column_name, mode),
        format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', chk.qualified),
        format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', chk.qualified),
        format('CREATE POLICY tenancy_policy ON %s AS PERMISSIVE FOR ALL TO %s USING (%s) WITH CHECK (%s)',
               chk.qualified, roles, q.using_expr, q.check_expr)]
        || tenancy.rls_legacy_stmts(chk.qualified, column_name, roles, mode)
        -- a table whose tenant is derived: see tenancy.derive_tenant()
        || CASE WHEN tenancy.derived_root(tbl) IS NOT NULL
                THEN ARRAY[tenancy.derive_policy_stmt(tbl, tenancy.derived_root(tbl), column_name, roles)]
                ELSE '{}'::text[] END;
END
$$;

CREATE FUNCTION tenancy.rls_enable_stmts(tbl regclass, column_name name, roles regrole[], mode text)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    rolelist text := tenancy.rls_role_list(roles);
    stmts text[] := '{}'::text[];
    m regclass;
BEGIN
    IF roles IS NOT NULL AND array_position(roles, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'roles must not contain NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass NULL instead of the array for PUBLIC.';
    END IF;
    FOR m IN SELECT tenancy.rls_members(tbl) LOOP
        IF EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = m)
           OR EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = m AND p.polname = 'tenancy_policy') THEN
            RAISE EXCEPTION 'table % already has a policy named tenancy_policy', m
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Change its mode with tenancy.set_mode(), or call tenancy.disable_rls() first.';
        END IF;
    END LOOP;
    IF chk.is_partitioned OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = tbl) THEN
        stmts := stmts || format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', chk.qualified);
    END IF;
    FOR m IN SELECT tenancy.rls_members(tbl) LOOP
        stmts := stmts || tenancy.rls_cover_stmts(m, tbl, column_name, rolelist, mode);
    END LOOP;
    RETURN stmts;
END
$$;

CREATE FUNCTION tenancy.rls_script(stmts text[]) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(s || ';', chr(10) ORDER BY o) FROM unnest(stmts) WITH ORDINALITY u(s, o);
$$;

CREATE FUNCTION tenancy.rls_run(stmts text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text;
BEGIN
    -- plpgsql_check: VOLATILE: the statements are DDL.
    FOREACH s IN ARRAY stmts LOOP
        -- plpgsql_check: built by rls_*_stmts(), every name through %I/%L.
        EXECUTE s;
    END LOOP;
    RETURN tenancy.rls_script(stmts);
END
$$;

CREATE FUNCTION tenancy.rls_advisories(tbl regclass, column_name name DEFAULT NULL)
RETURNS TABLE (kind text, object text, detail text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col name := coalesce(column_name,
                         (SELECT t.column_name FROM tenancy.rls_tables t WHERE t.relation = tbl),
                         'tenant_id');
    relname name := (SELECT c.relname FROM pg_class c WHERE c.oid = tbl);
    attno int2 := (SELECT a.attnum FROM pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = col AND NOT a.attisdropped);
    name_re text := '\m' || regexp_replace(lower(relname), '([^a-z0-9_])', '\\\1', 'g') || '\M';
BEGIN
    IF relname IS NULL THEN
        RAISE EXCEPTION 'relation with OID % does not exist', tbl::oid USING ERRCODE = 'undefined_table';
    END IF;

    -- Tables (the table, its partitions and children) with no index led by the tenant column.
    RETURN QUERY
    SELECT 'missing_index', m.relid::regclass::text,
           format('no index starts with column %I: tenant-scoped queries read the whole table', col)
      FROM tenancy.rls_tree(tbl) m
      JOIN pg_class c ON c.oid = m.relid
     WHERE c.relkind IN ('r', 'p')
       AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                               ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                        WHERE i.indrelid = m.relid AND a.attname = col)
     ORDER BY m.level, c.relname;

    -- Partitions and inheritance children that cannot carry row security.
    RETURN QUERY
    SELECT 'foreign_partition', m.relid::regclass::text,
           'a foreign table cannot have row level security: rows read through it are not filtered'
      FROM tenancy.rls_tree(tbl) m JOIN pg_class c ON c.oid = m.relid
     WHERE c.relkind = 'f' ORDER BY c.relname;

    -- Inheritance children without the policy: read directly, they show
    -- every tenant's rows to roles with SELECT on them.
    RETURN QUERY
    SELECT 'uncovered_inheritance_child', m.relid::regclass::text,
           format('inherits from %s but has no tenancy_policy: roles with SELECT on it read every tenant''s rows; %s covers it',
                  tbl::text,
                  CASE WHEN EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = tbl AND t.root = tbl)
                       THEN 'tenancy.set_mode() on the table' ELSE 'tenancy.enable_rls() on the table' END)
      FROM tenancy.rls_tree(tbl) m JOIN pg_class c ON c.oid = m.relid
     WHERE m.level > 0 AND c.relkind = 'r' AND NOT c.relispartition
       AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = m.relid AND p.polname = 'tenancy_policy')
     ORDER BY c.relname;

    -- Views (and views of views) over the table.
    RETURN QUERY
    WITH RECURSIVE deps(oid) AS (
        SELECT tbl::oid
        UNION
        SELECT r.ev_class
          FROM deps JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = deps.oid
                                    AND d.classid = 'pg_rewrite'::regclass
                    JOIN pg_rewrite r ON r.oid = d.objid
         WHERE r.ev_class <> deps.oid
    )
    SELECT CASE v.relkind WHEN 'm' THEN 'materialized_view' ELSE 'view_without_security_invoker' END,
           v.oid::regclass::text,
           CASE v.relkind
               WHEN 'm' THEN 'a materialized view stores the rows its owner saw when refreshed; reading it does not apply the policy'
               ELSE format('runs as its owner %I, so row security is checked for %I, not for the caller%s; set security_invoker = true',
                           o.rolname, o.rolname,
                           CASE WHEN o.rolsuper OR o.rolbypassrls THEN ', who bypasses row security: the view shows every tenant' ELSE '' END)
           END
      FROM deps JOIN pg_class v ON v.oid = deps.oid JOIN pg_roles o ON o.oid = v.relowner
     WHERE deps.oid <> tbl
       AND (v.relkind = 'm'
            OR (v.relkind = 'v' AND NOT EXISTS (
                    SELECT 1 FROM unnest(v.reloptions) opt
                     WHERE opt ~* '^security_invoker=(true|on|yes|1|t|y)$')))
     ORDER BY 2;

    -- SECURITY DEFINER functions that depend on the table (SQL-standard
    -- bodies) or mention its name in their source text.
    RETURN QUERY
    SELECT 'security_definer_function', p.oid::regprocedure::text,
           format('SECURITY DEFINER, owned by %I, %s: row security is checked for %I%s',
                  o.rolname,
                  CASE WHEN EXISTS (SELECT 1 FROM pg_depend d
                                     WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                       AND d.refclassid = 'pg_class'::regclass AND d.refobjid = tbl)
                       THEN 'depends on the table' ELSE 'its source mentions the table' END,
                  o.rolname,
                  CASE WHEN o.rolsuper OR o.rolbypassrls THEN ', who bypasses row security' ELSE '' END)
      FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.prosecdef
       AND NOT EXISTS (SELECT 1 FROM pg_depend e
                        WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
       AND (EXISTS (SELECT 1 FROM pg_depend d
                     WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                       AND d.refclassid = 'pg_class'::regclass AND d.refobjid = tbl)
            OR lower(p.prosrc) ~ name_re)
     ORDER BY 2;

    -- Triggers on the table whose function is SECURITY DEFINER.
    RETURN QUERY
    SELECT 'security_definer_trigger', format('%I on %s', tg.tgname, tbl::text),
           format('trigger function %s is SECURITY DEFINER, owned by %I: what it reads and writes is checked for %I',
                  p.oid::regprocedure::text, o.rolname, o.rolname)
      FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid JOIN pg_roles o ON o.oid = p.proowner
     WHERE tg.tgrelid = tbl AND NOT tg.tgisinternal AND p.prosecdef
     ORDER BY tg.tgname;

    -- Roles that bypass row security (the bootstrap superuser always does).
    RETURN QUERY
    SELECT 'bypassrls_role', quote_ident(r.rolname),
           CASE WHEN r.rolsuper THEN 'superuser: bypasses row security, FORCE or not'
                ELSE 'has BYPASSRLS: sees and writes every tenant''s rows' END
      FROM pg_roles r
     WHERE (r.rolsuper OR r.rolbypassrls) AND r.oid <> 10
     ORDER BY r.rolname;

    -- Unique indexes (primary keys included) without the tenant column.
    RETURN QUERY
    SELECT 'unique_without_tenant', quote_ident(ic.relname),
           format('unique across all tenants, not per tenant: one tenant''s values block another''s and reveal that they exist; add %I to it', col)
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
     WHERE i.indrelid = tbl AND i.indisunique AND (attno IS NULL OR attno <> ALL (i.indkey::int2[]))
     ORDER BY ic.relname;

    -- Foreign keys from or to the table without the tenant column.
    RETURN QUERY
    SELECT 'foreign_key_without_tenant', format('%I on %s', con.conname, con.conrelid::regclass::text),
           format('referential checks bypass row security: a row can reference another tenant''s row; include %I in the key', col)
      FROM pg_constraint con
     WHERE con.contype = 'f'
       AND ((con.conrelid = tbl AND (attno IS NULL OR attno <> ALL (con.conkey))
             -- a key to a shared table (reference data) needs no tenant
             AND NOT EXISTS (SELECT 1 FROM tenancy.shared_tables s
                              WHERE s.relation = con.confrelid
                                 OR s.relation IN (SELECT a.relid FROM pg_partition_ancestors(con.confrelid) a)))
            OR (con.confrelid = tbl AND (attno IS NULL OR attno <> ALL (con.confkey))))
     ORDER BY con.conname;

    -- Other permissive policies: combined with OR, they widen access.
    RETURN QUERY
    SELECT 'permissive_policy', format('%I on %s', p.polname, tbl::text),
           'permissive policies are combined with OR: rows it admits are visible whatever the tenant'
      FROM pg_policy p
     WHERE p.polrelid = tbl AND p.polpermissive AND p.polname <> 'tenancy_policy'
       AND p.polname <> 'tenancy_policy_derived'    -- admits only rows derive_tenant() derived
       AND NOT (p.polname = ANY (tenancy.rls_legacy_policies())
                AND EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = tbl AND t.mode = 'migrating'))
     ORDER BY p.polname;
END
$$;
COMMENT ON FUNCTION tenancy.rls_advisories(regclass, name) IS 'what would still leak or be slow with the tenant policy on this table';

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog (a rerun emits what is still to do); a transaction is the DBA's choice
CREATE FUNCTION tenancy.policy_sql(tbl regclass, column_name name DEFAULT 'tenant_id',
                                   roles regrole[] DEFAULT NULL, mode text DEFAULT 'enforce')
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(tenancy.rls_enable_stmts(tbl, column_name, roles, mode)));
$$;
COMMENT ON FUNCTION tenancy.policy_sql(regclass, name, regrole[], text) IS 'the DDL enable_rls() would run, for review or a migration file';

CREATE FUNCTION tenancy.enable_rls(tbl regclass, column_name name DEFAULT 'tenant_id',
                                   roles regrole[] DEFAULT NULL, mode text DEFAULT 'enforce')
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmts text[] := tenancy.rls_enable_stmts(tbl, column_name, roles, mode);
    a record;
BEGIN
    FOR a IN SELECT * FROM tenancy.rls_advisories(tbl, column_name) LOOP
        RAISE NOTICE 'tenancy: % %', replace(a.kind, '_', ' '), a.object USING DETAIL = a.detail;
    END LOOP;
    RETURN tenancy.rls_run(stmts);
END
$$;
COMMENT ON FUNCTION tenancy.enable_rls(regclass, name, regrole[], text) IS 'enable and force row level security with the tenant policy; returns the DDL it ran';

CREATE FUNCTION tenancy.rls_root_row(tbl regclass) RETURNS tenancy.rls_tables
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r tenancy.rls_tables;
BEGIN
    SELECT * INTO r FROM tenancy.rls_tables t WHERE t.relation = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % has no tenancy row level security', tbl
            USING ERRCODE = 'undefined_object',
                  HINT = 'Call tenancy.enable_rls() first.';
    END IF;
    IF r.root <> r.relation THEN
        RAISE EXCEPTION 'table % is % of %, whose tenancy row level security covers it', tbl,
                CASE WHEN (SELECT c.relispartition FROM pg_class c WHERE c.oid = tbl) THEN 'a partition'
                     ELSE 'an inheritance child' END, r.root
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Call the function on %s.', r.root);
    END IF;
    RETURN r;
END
$$;

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog (a rerun emits what is still to do); a transaction is the DBA's choice
CREATE FUNCTION tenancy.set_mode_sql(tbl regclass, mode text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tenancy.rls_root_row(tbl);     -- 55000 unless registered
    RETURN tenancy.preview_wrap(tenancy.rls_script(tenancy.rls_mode_stmts(tbl, mode)));
END
$$;

CREATE FUNCTION tenancy.rls_mode_stmts(tbl regclass, mode text) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r tenancy.rls_tables := tenancy.rls_root_row(tbl);
    chk record := tenancy.rls_check(tbl, r.column_name, mode);
    stmts text[] := '{}'::text[];
    m record;
    q record;
    qn text;
BEGIN
    IF chk.is_partitioned OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = tbl) THEN
        stmts := stmts || format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', chk.qualified);
    END IF;
    FOR m IN SELECT t.relation FROM tenancy.rls_tables t JOIN pg_class c ON c.oid = t.relation
              WHERE t.root = tbl ORDER BY t.relation = tbl DESC, c.relname, t.relation LOOP
        stmts := stmts || format('SELECT tenancy.rls_record(''register'', %L::regclass, %L::regclass, %L, %L)',
                                 (tenancy.rls_check(m.relation, r.column_name, mode)).qualified,
                                 chk.qualified, r.column_name, mode);
    END LOOP;
    FOR m IN SELECT t.relation,
                    (SELECT CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                                 ELSE (SELECT string_agg(quote_ident(o.rolname), ', ' ORDER BY o.rolname)
                                         FROM pg_roles o WHERE o.oid = ANY (p.polroles)) END
                       FROM pg_policy p WHERE p.polrelid = t.relation AND p.polname = 'tenancy_policy') AS rolelist
               FROM tenancy.rls_tables t JOIN pg_class c ON c.oid = t.relation
              WHERE t.root = tbl ORDER BY t.relation = tbl DESC, c.relname, t.relation LOOP
        q := tenancy.rls_quals(m.relation, r.column_name, mode);
        qn := (tenancy.rls_check(m.relation, r.column_name, mode)).qualified;
        -- migrating mode's own policies: dropped, then made again for that mode
        stmts := stmts || (SELECT array_agg(format('DROP POLICY %I ON %s', l.name, qn) ORDER BY l.name)
                             FROM unnest(tenancy.rls_legacy_policies()) l(name)
                            WHERE EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = m.relation AND p.polname = l.name))
                       || format('ALTER POLICY tenancy_policy ON %s USING (%s) WITH CHECK (%s)',
                                 qn, q.using_expr, q.check_expr)
                       || tenancy.rls_legacy_stmts(qn, r.column_name, coalesce(m.rolelist, 'PUBLIC'), mode);
    END LOOP;
    -- Members of the tree that miss the policy (a child created while the
    -- event trigger was disabled): covered as the event trigger would.
    FOR m IN SELECT tenancy.rls_members(tbl) AS relation LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = m.relation);
        stmts := stmts || tenancy.rls_cover_stmts(m.relation, tbl, r.column_name,
                                                  coalesce((SELECT CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                                                                   ELSE (SELECT string_agg(quote_ident(o.rolname), ', ' ORDER BY o.rolname)
                                                                           FROM pg_roles o WHERE o.oid = ANY (p.polroles)) END
                                                              FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = 'tenancy_policy'),
                                                           'PUBLIC'), mode);
    END LOOP;
    RETURN stmts;
END
$$;
COMMENT ON FUNCTION tenancy.set_mode_sql(regclass, text) IS 'the DDL set_mode() would run';

CREATE FUNCTION tenancy.set_mode(tbl regclass, mode text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rls_run(tenancy.rls_mode_stmts(tbl, mode));
$$;
COMMENT ON FUNCTION tenancy.set_mode(regclass, text) IS 'switch the tenant policy of a table to shadow, migrating or enforce, in one transaction; returns the DDL it ran';

CREATE FUNCTION tenancy.rls_disable_stmts(tbl regclass) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    root tenancy.rls_tables := tenancy.rls_root_row(tbl);
    chk record := tenancy.rls_check(tbl, root.column_name, root.mode);
    stmts text[] := '{}'::text[];
    r record;
BEGIN
    IF chk.is_partitioned OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = tbl) THEN
        stmts := stmts || format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', chk.qualified);
    END IF;
    -- The root first: once it is unregistered, new partitions are no longer covered.
    FOR r IN SELECT t.*, format('%I.%I', n.nspname, c.relname) AS qname
               FROM tenancy.rls_tables t JOIN pg_class c ON c.oid = t.relation
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.root = tbl ORDER BY t.relation = tbl DESC, c.relname, t.relation LOOP
        stmts := stmts || format('SELECT tenancy.rls_record(''unregister'', %L::regclass)', r.qname)
                       || format('DROP POLICY IF EXISTS tenancy_policy ON %s', r.qname)
                       || (SELECT array_agg(format('DROP POLICY IF EXISTS %I ON %s', l.name, r.qname) ORDER BY l.name)
                             FROM unnest(tenancy.rls_legacy_policies()) l(name)
                            WHERE EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = r.relation AND p.polname = l.name))
                       || CASE WHEN EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = r.relation
                                               AND p.polname = 'tenancy_policy_derived')
                               THEN ARRAY[format('DROP POLICY IF EXISTS tenancy_policy_derived ON %s', r.qname)]
                               ELSE '{}'::text[] END;
        IF NOT r.prior_force THEN
            stmts := stmts || format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', r.qname);
        END IF;
        IF NOT r.prior_rls THEN
            stmts := stmts || format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', r.qname);
        END IF;
    END LOOP;
    RETURN stmts;
END
$$;

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog (a rerun emits what is still to do); a transaction is the DBA's choice
CREATE FUNCTION tenancy.disable_rls_sql(tbl regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(tenancy.rls_disable_stmts(tbl)));
$$;
COMMENT ON FUNCTION tenancy.disable_rls_sql(regclass) IS 'the DDL disable_rls() would run';

CREATE FUNCTION tenancy.disable_rls(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rls_run(tenancy.rls_disable_stmts(tbl));
$$;
COMMENT ON FUNCTION tenancy.disable_rls(regclass) IS 'drop the tenant policy enable_rls() created and restore the earlier row security state; returns the DDL it ran';

-- New partitions and inheritance children of a covered table get the policy
-- as they are created or attached (PARTITION OF, ATTACH PARTITION, INHERITS,
-- ALTER TABLE ... INHERIT, at any depth): this event trigger puts it on every
-- member of a covered tree that does not carry it yet, in the mode and for
-- the roles of the root.
CREATE FUNCTION tenancy.rls_cover_partitions() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    obj record;
    root tenancy.rls_tables;
    rolelist text;
    m regclass;
    s text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenancy.rls_tables) THEN
        RETURN;
    END IF;
    FOR obj IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
                WHERE c.classid = 'pg_class'::regclass AND c.object_type = 'table' LOOP
        WITH RECURSIVE up(relid, level) AS (
            SELECT obj.objid, 0
            UNION
            SELECT i.inhparent, up.level + 1 FROM up JOIN pg_inherits i ON i.inhrelid = up.relid
        )
        SELECT t.* INTO root
          FROM up JOIN tenancy.rls_tables t ON t.relation = up.relid AND t.root = t.relation
         ORDER BY up.level
         LIMIT 1;
        CONTINUE WHEN NOT FOUND;
        SELECT CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                    ELSE (SELECT string_agg(quote_ident(r.rolname), ', ' ORDER BY r.rolname)
                            FROM pg_roles r WHERE r.oid = ANY (p.polroles)) END
          INTO rolelist
          FROM pg_policy p WHERE p.polrelid = root.relation AND p.polname = 'tenancy_policy';
        FOR m IN SELECT tenancy.rls_members(root.relation) LOOP
            CONTINUE WHEN EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = m);
            FOREACH s IN ARRAY tenancy.rls_cover_stmts(m, root.relation, root.column_name,
                                                       coalesce(rolelist, 'PUBLIC'), root.mode) LOOP
                EXECUTE s;
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER tenancy_rls_cover_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION tenancy.rls_cover_partitions();

-- Forget dropped tables.
CREATE FUNCTION tenancy.rls_forget_dropped() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() d
                JOIN tenancy.rls_tables t ON t.relation = d.objid
               WHERE d.classid = 'pg_class'::regclass) THEN
        PERFORM tenancy.rls_record('forget_dropped', NULL);
    END IF;
END
$$;

CREATE EVENT TRIGGER tenancy_rls_forget_dropped ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION tenancy.rls_forget_dropped();
-- src/shadow.sql: shadow-mode policy functions and counters (C: shadow.c).

CREATE FUNCTION tenancy.shadow_require_preload() RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_shadow_require_preload'
    LANGUAGE C VOLATILE;

-- Shadow-mode policy functions: always true, count what enforce would do.
CREATE FUNCTION tenancy.shadow_read(rel regclass, tenant uuid) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_read_uuid' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_read(rel regclass, tenant bigint) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_read_bigint' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_read(rel regclass, tenant text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_read_text' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_write(rel regclass, tenant uuid) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_write_uuid' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_write(rel regclass, tenant bigint) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_write_bigint' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_write(rel regclass, tenant text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_write_text' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
COMMENT ON FUNCTION tenancy.shadow_read(regclass, uuid) IS 'shadow-mode USING: true; counts the rows enforce mode would hide';
COMMENT ON FUNCTION tenancy.shadow_write(regclass, uuid) IS 'shadow-mode WITH CHECK: true; counts the writes enforce mode would refuse';

CREATE FUNCTION tenancy.read_shadow_stats(
    OUT relation regclass, OUT rows_checked bigint, OUT rows_hidden bigint,
    OUT writes_refused bigint, OUT last_divergence timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_shadow_stats'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.shadow_stats AS
    SELECT relation, rows_checked, rows_hidden, writes_refused, last_divergence
      FROM tenancy.read_shadow_stats();
COMMENT ON VIEW tenancy.shadow_stats IS 'per table in this database: rows and writes checked by shadow-mode policies, and how many enforce mode would hide or refuse (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.reset_shadow_stats(tbl regclass DEFAULT NULL) RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_reset_shadow_stats'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.reset_shadow_stats(regclass) IS 'reset the shadow counters of a table, or of every table of this database';

CREATE FUNCTION tenancy.shadow_stats_dropped(OUT rows_dropped bigint, OUT divergences_dropped bigint)
    AS 'MODULE_PATHNAME', 'tenancy_shadow_stats_dropped'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.shadow_stats_dropped() IS 'cluster-wide: rows, and divergences among them, that shadow mode could not count because tenancy.shadow_max_tables tables were counted already (since reset_shadow_stats() of every table)';

REVOKE ALL ON TABLE tenancy.shadow_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.read_shadow_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.reset_shadow_stats(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.shadow_stats_dropped() FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.shadow_stats TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.read_shadow_stats() TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.shadow_stats_dropped() TO pg_read_all_stats;
-- src/derive.sql: derived tenants: a BEFORE INSERT trigger from a row expression or a parent (C: derive.c).

------------------------------------------------------------------------------
-- Derived tenants: tables whose every row's tenant follows from the row (an
-- expression over it) or from its parent (a foreign key to a table with a
-- tenant column).  A BEFORE INSERT trigger (src/derive.c) writes the
-- derived tenant into rows that legacy code writes with no tenant set, and
-- refuses rows written under another tenant than their own; the policy
-- tenancy_policy_derived lets the rows it derived through.
------------------------------------------------------------------------------

CREATE TABLE tenancy.derived_tenants (
    relation     regclass PRIMARY KEY,
    column_name  name NOT NULL,
    source_kind  text NOT NULL
                 CONSTRAINT derived_tenants_kind_check
                 CHECK (source_kind OPERATOR(pg_catalog.=) ANY (ARRAY['expression', 'foreign_key'])),
    source       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.derived_tenants IS 'tables whose tenant derive_tenant() derives on insert: from an expression over the row or a foreign key';
SELECT pg_catalog.pg_extension_config_dump('tenancy.derived_tenants', '');
REVOKE ALL ON TABLE tenancy.derived_tenants FROM PUBLIC;
-- Read by enable_rls() (as its caller) to put tenancy_policy_derived on
-- derived tables, as tenancy.rls_tables is.
GRANT SELECT ON TABLE tenancy.derived_tenants TO PUBLIC;

CREATE FUNCTION tenancy.derive_tenant_trigger() RETURNS trigger
    AS 'MODULE_PATHNAME', 'tenancy_derive_tenant_trigger'
    LANGUAGE C;
COMMENT ON FUNCTION tenancy.derive_tenant_trigger() IS 'BEFORE INSERT row trigger of derive_tenant(): writes or checks the derived tenant';

-- WITH CHECK of tenancy_policy_derived: true only for the row the trigger
-- has just derived in a legacy write (no tenant set, or a role bound to the
-- implicit tenant), with that tenant.  Executable by PUBLIC: policies run
-- as the querying role; it admits nothing the trigger did not derive.
CREATE FUNCTION tenancy.derived_write(rel regclass, tenant anyelement) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_derived_write'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.derived_write(regclass, anyelement) IS 'policy check: the new row''s tenant is the one the derive trigger derived for it';

-- A derivation's parts, validated: the column, the kind, the value over
-- the row (aliased t, as in backfill sources), and the table whose owner
-- computes it (the table itself for an expression, the parent for a
-- foreign key).
CREATE FUNCTION tenancy.derive_source(tbl regclass, source text, via name,
                                      OUT source_kind text, OUT source_text text,
                                      OUT value_sql text, OUT run_as regclass)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    keytype text := tenancy.type_sql(tenancy.key_type());
    con record;
    pcol name;
    pcoltype regtype;
BEGIN
    IF (source IS NULL) = (via IS NULL) THEN
        RAISE EXCEPTION 'pass exactly one of source and via'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'source => an expression over the row (aliased t), or via => a foreign key constraint name.';
    END IF;
    IF source IS NOT NULL THEN
        source_kind := 'expression';
        source_text := source;
        value_sql := format('CAST((%s) AS %s)', source, keytype);
        run_as := tbl;
        RETURN;
    END IF;
    SELECT c.confrelid::regclass AS parent, c.conkey, c.confkey, c.conpfeqop INTO con
      FROM pg_constraint c
     WHERE c.conrelid = tbl AND c.conname = via AND c.contype = 'f';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'foreign key "%" of relation "%" does not exist', via, tbl
            USING ERRCODE = 'undefined_object',
                  HINT = 'Name a foreign key constraint of the table (\d shows them).';
    END IF;
    pcol := tenancy.tenant_column(con.parent);
    SELECT a.atttypid::regtype INTO pcoltype FROM pg_attribute a
     WHERE a.attrelid = con.parent AND a.attname = pcol AND a.attnum > 0 AND NOT a.attisdropped;
    IF pcoltype IS DISTINCT FROM tenancy.key_type() THEN
        RAISE EXCEPTION 'parent table "%" has no tenant column "%"', con.parent, pcol
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Add the tenant column of the parent first (and derive or backfill it).';
    END IF;
    source_kind := 'foreign_key';
    source_text := via::text;
    run_as := con.parent;
    -- The foreign key's own equality operators, qualified.
    SELECT format('(SELECT p.%I FROM %I.%I p WHERE %s)', pcol, pn.nspname, pc.relname,
                  string_agg(format('p.%I OPERATOR(%I.%s) t.%I', pa.attname, opn.nspname, op.oprname, ca.attname),
                             ' AND ' ORDER BY k.i))
      INTO value_sql
      FROM unnest(con.conkey, con.confkey, con.conpfeqop) WITH ORDINALITY AS k(ck, pk, eqop, i)
      JOIN pg_attribute ca ON ca.attrelid = tbl AND ca.attnum = k.ck
      JOIN pg_attribute pa ON pa.attrelid = con.parent AND pa.attnum = k.pk
      JOIN pg_operator op ON op.oid = k.eqop
      JOIN pg_namespace opn ON opn.oid = op.oprnamespace
      JOIN pg_class pc ON pc.oid = con.parent
      JOIN pg_namespace pn ON pn.oid = pc.relnamespace
     GROUP BY pn.nspname, pc.relname;
END
$$;

-- The nearest table at or above rel (a partition) that has a derivation.
CREATE FUNCTION tenancy.derived_root(rel regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.relation
      FROM (SELECT rel::oid, 0::bigint
            UNION ALL
            SELECT a.relid, a.level FROM pg_partition_ancestors(rel) WITH ORDINALITY a(relid, level)) a(relid, level)
      JOIN tenancy.derived_tenants d ON d.relation = a.relid
     ORDER BY a.level
     LIMIT 1;
$$;

-- What the trigger on rel runs: the query over the new row ($1, of rel's
-- row type), and whose owner runs it.  Rebuilt from the registry and the
-- catalog, never stored.
CREATE FUNCTION tenancy.derive_lookup(rel regclass, OUT root regclass, OUT run_as regclass,
                                      OUT column_name name, OUT query text, OUT source text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d tenancy.derived_tenants;
    s record;
BEGIN
    SELECT * INTO d FROM tenancy.derived_tenants t WHERE t.relation = tenancy.derived_root(rel);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    s := tenancy.derive_source(d.relation,
                               CASE WHEN d.source_kind = 'expression' THEN d.source END,
                               CASE WHEN d.source_kind = 'foreign_key' THEN d.source::name END);
    root := d.relation;
    run_as := CASE WHEN s.source_kind = 'expression' THEN rel ELSE s.run_as END;
    column_name := d.column_name;
    query := format('SELECT %s FROM (SELECT ($1).*) t', s.value_sql);
    source := CASE WHEN s.source_kind = 'expression' THEN format('the expression %s', d.source)
                   ELSE format('foreign key %I to %s', d.source, s.run_as) END;
END
$$;

-- The policy that admits derived rows, on one member of a table's tree.
CREATE FUNCTION tenancy.derive_policy_stmt(m regclass, root regclass, column_name name, roles text)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('CREATE POLICY tenancy_policy_derived ON %s AS PERMISSIVE FOR INSERT TO %s WITH CHECK (tenancy.derived_write(%L::regclass, %I))',
                  (tenancy.rls_check(m, column_name, 'enforce')).qualified, roles,
                  (tenancy.rls_check(root, column_name, 'enforce')).qualified, column_name);
$$;

-- The statements derive_tenant() runs (empty: nothing to do).
CREATE FUNCTION tenancy.derive_tenant_stmts(tbl regclass, source text, via name, column_name name)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    col name;
    coltype oid;
    s record;
    cur tenancy.derived_tenants;
    m record;
    stmts text[] := '{}'::text[];
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl);
    IF NOT pg_has_role((SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    col := coalesce(column_name, tenancy.tenant_column(tbl));
    s := tenancy.derive_source(tbl, source, via);
    SELECT a.atttypid INTO coltype FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF FOUND AND coalesce((SELECT nullif(t.typbasetype, 0) FROM pg_type t WHERE t.oid = coltype), coltype)
                 <> tenancy.key_type() THEN
        RAISE EXCEPTION 'column "%" of relation "%" is of type %, but tenant keys are of type %',
                        col, tbl, format_type(coltype, NULL), format_type(tenancy.key_type(), NULL)
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Pass column_name => the tenant column.';
    END IF;
    -- The expression must compile over the row, as the caller; nothing runs.
    -- plpgsql_check: the source is the caller's own expression over its own table.
    EXECUTE format('SELECT %s FROM %s t LIMIT 0', s.value_sql, tbl);
    SELECT * INTO cur FROM tenancy.derived_tenants d WHERE d.relation = tbl;
    IF FOUND THEN
        IF (cur.column_name, cur.source_kind, cur.source) IS DISTINCT FROM (col, s.source_kind, s.source_text) THEN
            RAISE EXCEPTION 'table "%" already derives its tenant from %', tbl,
                            CASE cur.source_kind WHEN 'expression' THEN 'the expression ' || cur.source
                                 ELSE format('foreign key %I', cur.source) END
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Call tenancy.underive_tenant() first.';
        END IF;
    ELSE
        stmts := stmts || format('CREATE TRIGGER tenancy_derive_tenant BEFORE INSERT ON %I.%I FOR EACH ROW EXECUTE FUNCTION tenancy.derive_tenant_trigger()',
                                 (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl),
                                 (SELECT c.relname FROM pg_class c WHERE c.oid = tbl));
    END IF;
    -- Members already under tenancy_policy get the policy for derived rows,
    -- for the same roles.
    FOR m IN SELECT r.relid,
                    CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                         ELSE (SELECT string_agg(quote_ident(ro.rolname), ', ' ORDER BY ro.rolname)
                                 FROM pg_roles ro WHERE ro.oid = ANY (p.polroles)) END AS roles
               FROM tenancy.rls_members(tbl) r(relid)
               JOIN pg_policy p ON p.polrelid = r.relid AND p.polname = 'tenancy_policy'
              WHERE NOT EXISTS (SELECT 1 FROM pg_policy d WHERE d.polrelid = r.relid
                                   AND d.polname = 'tenancy_policy_derived') LOOP
        stmts := stmts || tenancy.derive_policy_stmt(m.relid, tbl, col, m.roles);
    END LOOP;
    RETURN stmts;
END
$$;

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog (a rerun emits what is still to do); a transaction is the DBA's choice
CREATE FUNCTION tenancy.derive_tenant_sql(tbl regclass, source text DEFAULT NULL, via name DEFAULT NULL,
                                          column_name name DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmts text[] := tenancy.derive_tenant_stmts(tbl, source, via, column_name);
BEGIN
    IF cardinality(stmts) = 0 THEN
        RETURN '';
    END IF;
    RETURN tenancy.preview_wrap(tenancy.rls_script(stmts)) || chr(10)
        || regexp_replace(format('-- undo: SELECT tenancy.underive_tenant(%L);', tbl::text),
                          '\r\n|[\r\n]', chr(10) || '-- ', 'g');
END
$$;
COMMENT ON FUNCTION tenancy.derive_tenant_sql(regclass, text, name, name) IS 'the DDL derive_tenant() would run, and how to undo it';

CREATE FUNCTION tenancy.derive_tenant(tbl regclass, source text DEFAULT NULL, via name DEFAULT NULL,
                                      column_name name DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    stmts text[];
    s record;
    col name;
BEGIN
    stmts := tenancy.derive_tenant_stmts(tbl, source, via, column_name);
    col := coalesce(column_name, tenancy.tenant_column(tbl));
    s := tenancy.derive_source(tbl, source, via);
    -- The trigger's DDL takes a SHARE ROW EXCLUSIVE lock: writers wait, readers do not.
    INSERT INTO tenancy.derived_tenants (relation, column_name, source_kind, source)
    VALUES (tbl, col, s.source_kind, s.source_text)
    ON CONFLICT (relation) DO NOTHING;
    IF cardinality(stmts) = 0 THEN
        RAISE NOTICE 'table "%" already derives its tenant this way, nothing to do', tbl;
        RETURN NULL;
    END IF;
    RETURN tenancy.rls_run(stmts);
END
$$;
COMMENT ON FUNCTION tenancy.derive_tenant(regclass, text, name, name) IS 'derive the tenant of new rows from an expression over the row or a foreign key to a parent; returns the DDL run, NULL when there was nothing to do';

CREATE FUNCTION tenancy.underive_tenant(tbl regclass) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmts text[] := '{}'::text[];
    m regclass;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl);
    IF NOT pg_has_role((SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = tbl AND g.tgname = 'tenancy_derive_tenant'
                                            AND g.tgparentid = 0) THEN
        stmts := stmts || format('DROP TRIGGER tenancy_derive_tenant ON %s',
                                 (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                                    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl));
    END IF;
    FOR m IN SELECT r FROM tenancy.rls_members(tbl) r
              WHERE EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = r AND p.polname = 'tenancy_policy_derived') LOOP
        stmts := stmts || format('DROP POLICY tenancy_policy_derived ON %s',
                                 (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                                    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = m));
    END LOOP;
    DELETE FROM tenancy.derived_tenants d WHERE d.relation = tbl;
    IF cardinality(stmts) = 0 THEN
        RETURN NULL;
    END IF;
    RETURN tenancy.rls_run(stmts);
END
$$;
COMMENT ON FUNCTION tenancy.underive_tenant(regclass) IS 'undo derive_tenant(): drop the trigger and the policy for derived rows; returns the DDL run, NULL when there was nothing to do';

-- derive_tenant_trigger() stays executable by PUBLIC: CREATE TRIGGER needs
-- EXECUTE on it (derive_tenant() runs as the table owner), and it runs only
-- as a trigger.
-- derive_source() too, as backfill_value_sql(): verify() calls it as its
-- caller.
REVOKE EXECUTE ON FUNCTION
    tenancy.derive_lookup(regclass),
    tenancy.derive_tenant_stmts(regclass, text, name, name),
    tenancy.derive_tenant_sql(regclass, text, name, name),
    tenancy.derive_tenant(regclass, text, name, name),
    tenancy.underive_tenant(regclass)
FROM PUBLIC;
