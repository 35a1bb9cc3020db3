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
                      HINT = 'The modes are migrating, shadow and enforce.';
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

REVOKE ALL ON TABLE tenancy.shadow_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.read_shadow_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.reset_shadow_stats(regclass) FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.shadow_stats TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.read_shadow_stats() TO pg_read_all_stats;

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
                  HINT = 'The modes are migrating, shadow and enforce.';
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
        using_expr := format('%s OPERATOR(pg_catalog.=) %s OR %s IS NULL', col, chk.accessor, col);
        check_expr := format('%s OPERATOR(pg_catalog.=) %s', col, chk.accessor);
    ELSE
        using_expr := format('tenancy.shadow_read(%L::regclass, %s)', chk.qualified, col);
        check_expr := format('tenancy.shadow_write(%L::regclass, %s)', chk.qualified, col);
    END IF;
END
$$;

-- The tables a policy goes on: the table and, for a partitioned table, every
-- partition below it that can carry row security (foreign tables cannot).
-- Partitions come first: see tenancy.rls_cover_partitions().
CREATE FUNCTION tenancy.rls_members(tbl regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.relid
      FROM (SELECT t.relid, t.level FROM pg_partition_tree(tbl) t
            UNION SELECT tbl, 0) m
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
               chk.qualified, roles, q.using_expr, q.check_expr)];
END
$$;

CREATE FUNCTION tenancy.rls_enable_stmts(tbl regclass, column_name name, roles regrole[], mode text)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    rolelist text := tenancy.rls_role_list(roles);
    stmts text[] := '{}';
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
    IF chk.is_partitioned THEN
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
    FOREACH s IN ARRAY stmts LOOP
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

    -- Tables (the table and its partitions) with no index led by the tenant column.
    RETURN QUERY
    SELECT 'missing_index', m.relid::regclass::text,
           format('no index starts with column %I: tenant-scoped queries read the whole table', col)
      FROM (SELECT t.relid, t.level FROM pg_partition_tree(tbl) t
            UNION SELECT tbl, 0) m
      JOIN pg_class c ON c.oid = m.relid
     WHERE c.relkind IN ('r', 'p')
       AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                               ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                        WHERE i.indrelid = m.relid AND a.attname = col)
     ORDER BY m.level, c.relname;

    -- Partitions that cannot carry row security.
    RETURN QUERY
    SELECT 'foreign_partition', m.relid::regclass::text,
           'a foreign table cannot have row level security: rows read through it are not filtered'
      FROM pg_partition_tree(tbl) m JOIN pg_class c ON c.oid = m.relid
     WHERE c.relkind = 'f' ORDER BY c.relname;

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
       AND ((con.conrelid = tbl AND (attno IS NULL OR attno <> ALL (con.conkey)))
            OR (con.confrelid = tbl AND (attno IS NULL OR attno <> ALL (con.confkey))))
     ORDER BY con.conname;

    -- Other permissive policies: combined with OR, they widen access.
    RETURN QUERY
    SELECT 'permissive_policy', format('%I on %s', p.polname, tbl::text),
           'permissive policies are combined with OR: rows it admits are visible whatever the tenant'
      FROM pg_policy p
     WHERE p.polrelid = tbl AND p.polpermissive AND p.polname <> 'tenancy_policy'
     ORDER BY p.polname;
END
$$;
COMMENT ON FUNCTION tenancy.rls_advisories(regclass, name) IS 'what would still leak or be slow with the tenant policy on this table';

CREATE FUNCTION tenancy.policy_sql(tbl regclass, column_name name DEFAULT 'tenant_id',
                                   roles regrole[] DEFAULT NULL, mode text DEFAULT 'enforce')
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rls_script(tenancy.rls_enable_stmts(tbl, column_name, roles, mode));
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
        RAISE EXCEPTION 'table % is a partition of %, whose tenancy row level security covers it', tbl, r.root
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Call the function on %s.', r.root);
    END IF;
    RETURN r;
END
$$;

CREATE FUNCTION tenancy.set_mode_sql(tbl regclass, mode text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r tenancy.rls_tables := tenancy.rls_root_row(tbl);
BEGIN
    RETURN tenancy.rls_script(tenancy.rls_mode_stmts(tbl, mode));
END
$$;

CREATE FUNCTION tenancy.rls_mode_stmts(tbl regclass, mode text) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r tenancy.rls_tables := tenancy.rls_root_row(tbl);
    chk record := tenancy.rls_check(tbl, r.column_name, mode);
    stmts text[] := '{}';
    m record;
    q record;
BEGIN
    IF chk.is_partitioned THEN
        stmts := stmts || format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', chk.qualified);
    END IF;
    FOR m IN SELECT t.relation FROM tenancy.rls_tables t JOIN pg_class c ON c.oid = t.relation
              WHERE t.root = tbl ORDER BY t.relation = tbl DESC, c.relname, t.relation LOOP
        stmts := stmts || format('SELECT tenancy.rls_record(''register'', %L::regclass, %L::regclass, %L, %L)',
                                 (tenancy.rls_check(m.relation, r.column_name, mode)).qualified,
                                 chk.qualified, r.column_name, mode);
    END LOOP;
    FOR m IN SELECT t.relation FROM tenancy.rls_tables t JOIN pg_class c ON c.oid = t.relation
              WHERE t.root = tbl ORDER BY t.relation = tbl DESC, c.relname, t.relation LOOP
        q := tenancy.rls_quals(m.relation, r.column_name, mode);
        stmts := stmts || format('ALTER POLICY tenancy_policy ON %s USING (%s) WITH CHECK (%s)',
                                 (tenancy.rls_check(m.relation, r.column_name, mode)).qualified,
                                 q.using_expr, q.check_expr);
    END LOOP;
    RETURN stmts;
END
$$;
COMMENT ON FUNCTION tenancy.set_mode_sql(regclass, text) IS 'the DDL set_mode() would run';

CREATE FUNCTION tenancy.set_mode(tbl regclass, mode text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rls_run(tenancy.rls_mode_stmts(tbl, mode));
$$;
COMMENT ON FUNCTION tenancy.set_mode(regclass, text) IS 'switch the tenant policy of a table to migrating, shadow or enforce, in one transaction; returns the DDL it ran';

CREATE FUNCTION tenancy.rls_disable_stmts(tbl regclass) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    root tenancy.rls_tables := tenancy.rls_root_row(tbl);
    chk record := tenancy.rls_check(tbl, root.column_name, root.mode);
    stmts text[] := '{}';
    r record;
    q text;
BEGIN
    IF chk.is_partitioned THEN
        stmts := stmts || format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', chk.qualified);
    END IF;
    -- The root first: once it is unregistered, new partitions are no longer covered.
    FOR r IN SELECT t.*, format('%I.%I', n.nspname, c.relname) AS qname
               FROM tenancy.rls_tables t JOIN pg_class c ON c.oid = t.relation
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.root = tbl ORDER BY t.relation = tbl DESC, c.relname, t.relation LOOP
        stmts := stmts || format('SELECT tenancy.rls_record(''unregister'', %L::regclass)', r.qname)
                       || format('DROP POLICY IF EXISTS tenancy_policy ON %s', r.qname);
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

CREATE FUNCTION tenancy.disable_rls_sql(tbl regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rls_script(tenancy.rls_disable_stmts(tbl));
$$;
COMMENT ON FUNCTION tenancy.disable_rls_sql(regclass) IS 'the DDL disable_rls() would run';

CREATE FUNCTION tenancy.disable_rls(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rls_run(tenancy.rls_disable_stmts(tbl));
$$;
COMMENT ON FUNCTION tenancy.disable_rls(regclass) IS 'drop the tenant policy enable_rls() created and restore the earlier row security state; returns the DDL it ran';

-- New partitions of a covered table get the policy as they are created or
-- attached: this event trigger puts it on every partition of a covered tree
-- that does not carry it yet, in the mode and for the roles of the root.
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
        SELECT t.* INTO root
          FROM pg_partition_ancestors(obj.objid) a
          JOIN tenancy.rls_tables t ON t.relation = a.relid AND t.root = t.relation
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
