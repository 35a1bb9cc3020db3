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

-- Is a routine of another feature installed?  (Features land separately.)
CREATE FUNCTION tenancy.has_routine(name name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pg_proc
                   WHERE pronamespace = 'tenancy'::regnamespace AND proname = $1);
$$;
COMMENT ON FUNCTION tenancy.has_routine(name) IS 'whether tenancy.<name>() exists (features are optional to each other)';

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

-- Record one contract step (the generated SQL of scope_constraints_sql()
-- calls this after each statement).
CREATE FUNCTION tenancy.log_step(relation regclass, step text, sql text, undo_sql text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO tenancy.contract_log (relation, step, sql, undo_sql)
    VALUES ($1, $2, $3, $4) RETURNING id;
$$;
COMMENT ON FUNCTION tenancy.log_step(regclass, text, text, text) IS 'record a contract step and its undo SQL in tenancy.contract_log';

-- The readiness report.  One row per finding; a clean database gives one
-- 'ok' row per check and table, so the report shows what was checked.
-- Counting runs with row_security off: a role that RLS would filter gets
-- an error instead of a wrong count.  max_rows caps each count.
CREATE FUNCTION tenancy.verify(tbl regclass DEFAULT NULL, max_rows bigint DEFAULT NULL)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    keytype  text := format_type(tenancy.key_type(), NULL);
    lim      text := coalesce(max_rows::text, 'ALL');
    r        record;
    f        record;
    p        record;
    n        bigint;
    m        bigint;
    cnt      bigint;
    txt      text;
    txt2     text;
    cond     text;
    atleast  text;
    bad      integer;
    has_shadow boolean := to_regclass('tenancy.shadow_stats') IS NOT NULL;
    fix_rls  text;
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
        -- tenant_column: the registered column exists and has the key type
        check_name := 'tenant_column'; relation := r.rel; rows_affected := NULL;
        IF NOT r.present THEN
            status := 'failure';
            detail := format('registered relation %s no longer exists', r.rel::oid);
            fix := format('DELETE FROM tenancy.tables WHERE relation = %s;', r.rel::oid);
            RETURN NEXT;
            CONTINUE;
        ELSIF r.attnum IS NULL THEN
            status := 'failure';
            detail := format('tenant column %I does not exist; the other checks skip this table', r.col);
            fix := CASE WHEN tenancy.has_routine('add_tenant_column')
                        THEN format('SELECT tenancy.add_tenant_column(%L, column_name => %L);', r.rel::text, r.col)
                        ELSE format('ALTER TABLE %s ADD COLUMN %I %s;', r.rel, r.col, keytype) END;
            RETURN NEXT;
            CONTINUE;
        ELSIF r.atttypid <> tenancy.key_type() THEN
            status := 'warning';
            detail := format('tenant column %I is of type %s but tenant keys are %s: comparisons cast and cannot use indexes',
                             r.col, format_type(r.atttypid, NULL), keytype);
            fix := format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING %I::%s;', r.rel, r.col, keytype, r.col, keytype);
        ELSE
            status := 'ok';
            detail := format('tenant column %I of type %s', r.col, keytype);
            fix := NULL;
        END IF;
        RETURN NEXT;

        -- null_tenant: rows the backfill has not reached
        EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s WHERE %I IS NULL LIMIT %s) s', r.rel, r.col, lim)
            INTO n;
        atleast := CASE WHEN n = max_rows THEN 'at least ' ELSE '' END;
        check_name := 'null_tenant'; rows_affected := n;
        IF n > 0 THEN
            status := 'failure';
            detail := format('%s%s rows have no tenant: policies hide them and NOT NULL cannot be enforced; fill them with tenancy.backfill() or an UPDATE',
                             atleast, n);
            fix := CASE WHEN tenancy.has_routine('backfill')
                        THEN format('CALL tenancy.backfill(%L);', r.rel::text)
                        WHEN tenancy.implicit_tenant() IS NOT NULL
                        THEN format('UPDATE %s SET %I = %L WHERE %I IS NULL;', r.rel, r.col, tenancy.implicit_tenant(), r.col)
                        ELSE NULL END;
        ELSE
            status := 'ok'; detail := 'every row has a tenant'; fix := NULL;
        END IF;
        RETURN NEXT;

        -- unknown_tenant: rows whose tenant is not in the registry
        cond := CASE WHEN r.atttypid = tenancy.key_type()
                     THEN format('k.id = x.%I', r.col)
                     ELSE format('k.id::text = x.%I::text', r.col) END;
        EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s x WHERE x.%I IS NOT NULL'
                       ' AND NOT EXISTS (SELECT 1 FROM tenancy.tenants k WHERE %s) LIMIT %s) s',
                       r.rel, r.col, cond, lim)
            INTO n;
        atleast := CASE WHEN n = max_rows THEN 'at least ' ELSE '' END;
        check_name := 'unknown_tenant'; rows_affected := n;
        IF n > 0 THEN
            status := 'failure';
            detail := format('%s%s rows name a tenant that is not in tenancy.tenants: register the listed keys with tenancy.create_tenant() or reassign the rows',
                             atleast, n);
            fix := format('SELECT DISTINCT x.%I FROM %s x WHERE x.%I IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.tenants k WHERE %s);',
                          r.col, r.rel, r.col, cond);
        ELSE
            status := 'ok'; detail := 'every tenant is registered'; fix := NULL;
        END IF;
        RETURN NEXT;

        -- cross_tenant_reference, per foreign key to a registered table
        check_name := 'cross_tenant_reference'; bad := 0; cnt := 0;
        FOR f IN
            SELECT c.conname, c.confrelid::regclass AS parent, pt.column_name AS pcol,
                   pa.atttypid AS ptype,
                   (SELECT string_agg(format('x.%I = p.%I', ca.attname, ra.attname), ' AND ' ORDER BY k.i)
                    FROM unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(ck, pk, i)
                    JOIN pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = k.ck
                    JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = k.pk) AS joincond
            FROM pg_constraint c
            JOIN tenancy.tables pt ON pt.relation = c.confrelid
            JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attname = pt.column_name
                                AND pa.attnum > 0 AND NOT pa.attisdropped
            WHERE c.contype = 'f' AND c.conrelid = r.rel AND c.conparentid = 0
            ORDER BY c.conname
        LOOP
            cnt := cnt + 1;
            cond := CASE WHEN f.ptype = r.atttypid THEN format('x.%I <> p.%I', r.col, f.pcol)
                         ELSE format('x.%I::text <> p.%I::text', r.col, f.pcol) END;
            -- Under a LIMIT the planner bets on a nested loop that finds the
            -- first rows early; with few or no violations that probes the
            -- parent once per child row.  A hash join reads each table once.
            txt := current_setting('enable_nestloop');
            PERFORM set_config('enable_nestloop', 'off', true);
            EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s x JOIN %s p ON %s WHERE %s LIMIT %s) s',
                           r.rel, f.parent, f.joincond, cond, lim)
                INTO n;
            PERFORM set_config('enable_nestloop', txt, true);
            IF n > 0 THEN
                bad := bad + 1;
                atleast := CASE WHEN n = max_rows THEN 'at least ' ELSE '' END;
                status := 'failure'; rows_affected := n;
                detail := format('%s%s rows reference through %I a row of %s that belongs to another tenant: once enforced, the reference dangles; the suggested fix gives each row the tenant of its parent (review it)',
                                 atleast, n, f.conname, f.parent);
                fix := format('UPDATE %s x SET %I = p.%I FROM %s p WHERE %s AND %s;',
                              r.rel, r.col, f.pcol, f.parent, f.joincond, cond);
                RETURN NEXT;
            END IF;
        END LOOP;
        IF bad = 0 THEN
            status := 'ok'; rows_affected := 0; fix := NULL;
            detail := CASE WHEN cnt = 0 THEN 'no foreign key to a registered table'
                           ELSE format('%s foreign keys to registered tables, every reference within one tenant', cnt) END;
            RETURN NEXT;
        END IF;

        -- unique_scope: unique constraints and indexes without the tenant column
        check_name := 'unique_scope'; bad := 0; rows_affected := NULL; txt2 := '';
        FOR f IN
            SELECT ic.relname AS idxname, i.indisprimary, con.conname, con.contype,
                   tenancy.column_list(r.rel, (string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts]) AS cols,
                   0 = ANY ((string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts]) AS has_expr,
                   NOT EXISTS (SELECT 1 FROM unnest((string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts]) k(attnum)
                               JOIN pg_attribute a ON a.attrelid = r.rel AND a.attnum = k.attnum
                               WHERE NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '') AS generated
            FROM pg_index i
            JOIN pg_class ic ON ic.oid = i.indexrelid
            LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = r.rel
                                       AND con.contype IN ('p', 'u')
            WHERE i.indrelid = r.rel AND i.indisunique
              AND NOT (r.attnum = ANY ((string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts]))
            ORDER BY ic.relname
        LOOP
            IF f.indisprimary AND f.generated AND NOT f.has_expr THEN
                txt2 := format('; primary key %I (%s) is a generated surrogate key, unique across tenants by construction',
                               f.conname, f.cols);
                CONTINUE;
            END IF;
            bad := bad + 1;
            status := 'failure';
            detail := format('%s %I (%s) is unique across all tenants: a tenant can be refused a value another tenant holds, and so learn that it exists',
                             CASE f.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique constraint' ELSE 'unique index' END,
                             coalesce(f.conname, f.idxname), coalesce(f.cols, 'expression'));
            fix := format('SELECT * FROM tenancy.scope_constraints_sql(%L) \gexec', r.rel::text);
            RETURN NEXT;
        END LOOP;
        IF bad = 0 THEN
            status := 'ok'; fix := NULL;
            detail := format('every unique constraint and index includes %I%s', r.col, txt2);
            RETURN NEXT;
        END IF;

        -- foreign_key_scope: foreign keys to registered tables that are not (tenant, key)
        check_name := 'foreign_key_scope'; bad := 0; cnt := 0;
        FOR f IN
            SELECT c.conname, c.confrelid::regclass AS parent,
                   tenancy.column_list(c.conrelid::regclass, c.conkey) AS cols,
                   EXISTS (SELECT 1 FROM unnest(c.conkey, c.confkey) k(ck, pk)
                           JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = k.pk
                           WHERE k.ck = r.attnum AND pa.attname = pt.column_name) AS scoped
            FROM pg_constraint c
            JOIN tenancy.tables pt ON pt.relation = c.confrelid
            WHERE c.contype = 'f' AND c.conrelid = r.rel AND c.conparentid = 0
            ORDER BY c.conname
        LOOP
            cnt := cnt + 1;
            CONTINUE WHEN f.scoped;
            bad := bad + 1;
            status := 'warning';
            detail := format('foreign key %I (%s) references %s without the tenant column: nothing stops a new cross-tenant reference',
                             f.conname, f.cols, f.parent);
            fix := format('SELECT * FROM tenancy.scope_constraints_sql(%L) \gexec', r.rel::text);
            RETURN NEXT;
        END LOOP;
        IF bad = 0 THEN
            status := 'ok'; fix := NULL;
            detail := CASE WHEN cnt = 0 THEN 'no foreign key to a registered table'
                           ELSE format('%s foreign keys to registered tables, all (tenant, key)', cnt) END;
            RETURN NEXT;
        END IF;

        -- rls_enabled, rls_forced, tenancy_policy: the table and each partition
        FOR p IN
            SELECT c.oid::regclass AS prel, c.relrowsecurity, c.relforcerowsecurity,
                   EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = c.oid
                           AND pol.polname = 'tenancy_policy') AS has_policy
            FROM (SELECT r.rel::oid AS relid, 0 AS level
                  UNION ALL
                  SELECT pt.relid, pt.level FROM pg_partition_tree(r.rel) pt WHERE pt.level > 0) tree
            JOIN pg_class c ON c.oid = tree.relid
            ORDER BY tree.level, c.oid::regclass::text
        LOOP
            relation := p.prel; rows_affected := NULL;
            fix_rls := CASE WHEN tenancy.has_routine('enable_rls')
                            THEN format('SELECT tenancy.enable_rls(%L);', r.rel::text) END;
            check_name := 'rls_enabled';
            IF p.relrowsecurity THEN
                status := 'ok'; detail := 'row level security is enabled'; fix := NULL;
            ELSE
                status := 'failure';
                detail := 'row level security is disabled: every role with SELECT sees every tenant';
                fix := coalesce(fix_rls, format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY;', p.prel));
            END IF;
            RETURN NEXT;
            check_name := 'rls_forced';
            IF p.relforcerowsecurity THEN
                status := 'ok'; detail := 'row level security is forced for the owner too'; fix := NULL;
            ELSE
                status := 'failure';
                detail := 'row level security is not forced: the table owner (often the application role) bypasses the policy';
                fix := coalesce(fix_rls, format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', p.prel));
            END IF;
            RETURN NEXT;
            check_name := 'tenancy_policy';
            IF p.has_policy THEN
                status := 'ok'; detail := 'policy tenancy_policy exists'; fix := NULL;
            ELSE
                status := 'failure';
                detail := 'policy tenancy_policy is missing: nothing limits rows to the current tenant';
                fix := coalesce(fix_rls, format('CREATE POLICY tenancy_policy ON %s USING (%I = %s) WITH CHECK (%I = %s);',
                                                p.prel, r.col, tenancy.tenant_accessor(), r.col, tenancy.tenant_accessor()));
            END IF;
            RETURN NEXT;
        END LOOP;
        relation := r.rel;

        -- policy_mode: the stage must be enforce (or contract)
        check_name := 'policy_mode'; rows_affected := NULL;
        fix := CASE WHEN tenancy.has_routine('set_mode')
                    THEN format('SELECT tenancy.set_mode(%L, %L);', r.rel::text, 'enforce')
                    ELSE format('UPDATE tenancy.tables SET stage = %L WHERE relation = %L::regclass;', 'enforce', r.rel::text) END;
        IF r.stage IN ('enforce', 'contract') THEN
            status := 'ok'; detail := format('stage %s: the policy is enforced', r.stage); fix := NULL;
        ELSIF r.stage IN ('migrating', 'shadow') THEN
            status := 'warning';
            detail := format('stage %s: the policy does not hide rows yet; enforce once shadow divergences are drained', r.stage);
        ELSE
            status := 'failure';
            detail := format('stage %s: the table is not protected yet; finish the backfill, then migrating, shadow and enforce', r.stage);
            fix := CASE WHEN tenancy.has_routine('set_mode')
                        THEN format('SELECT tenancy.set_mode(%L, %L);', r.rel::text, 'migrating') ELSE fix END;
        END IF;
        RETURN NEXT;

        -- shadow_divergence: what shadow mode counted and nobody drained
        check_name := 'shadow_divergence'; rows_affected := NULL; fix := NULL;
        IF NOT has_shadow THEN
            status := 'ok'; rows_affected := 0;
            detail := 'skipped: tenancy.shadow_stats is not installed, so no shadow mode ran';
        ELSE
            BEGIN
                EXECUTE 'SELECT coalesce(sum(rows_hidden), 0)::bigint, coalesce(sum(writes_refused), 0)::bigint'
                        ' FROM tenancy.shadow_stats WHERE relation = $1'
                    INTO n, m USING r.rel;
                rows_affected := n + m;
                IF n + m > 0 THEN
                    status := 'failure';
                    detail := format('shadow mode counted %s rows the policy would hide and %s writes it would refuse: find the code path that runs without the right tenant, fix it, then reset the counters',
                                     n, m);
                    fix := CASE WHEN tenancy.has_routine('reset_shadow_stats')
                                THEN format('SELECT tenancy.reset_shadow_stats(%L);', r.rel::text) END;
                ELSE
                    status := 'ok'; detail := 'no shadow divergence counted';
                END IF;
            EXCEPTION
                WHEN object_not_in_prerequisite_state OR undefined_column OR undefined_function THEN
                    status := 'warning'; rows_affected := NULL;
                    detail := format('shadow counters unavailable: %s', SQLERRM);
                    fix := NULL;
            END;
        END IF;
        RETURN NEXT;

        -- tenant_index: an index led by the tenant column
        check_name := 'tenant_index'; rows_affected := NULL;
        IF EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = r.rel AND i.indkey[0] = r.attnum) THEN
            status := 'ok'; detail := format('an index is led by %I', r.col); fix := NULL;
        ELSE
            status := 'warning';
            detail := format('no index is led by %I: every policy-filtered query scans the whole table', r.col);
            fix := CASE WHEN r.relkind = 'p'
                        THEN format('CREATE INDEX ON %s (%I);', r.rel, r.col)
                        ELSE format('CREATE INDEX CONCURRENTLY ON %s (%I);', r.rel, r.col) END;
        END IF;
        RETURN NEXT;

        -- view_security_invoker: views over the table (directly or through
        -- other views) that run with their owner's rights
        check_name := 'view_security_invoker'; bad := 0; cnt := 0;
        FOR f IN
            WITH RECURSIVE deps(view) AS (
                SELECT rw.ev_class
                FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid
                WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                  AND d.refobjid = r.rel AND rw.ev_class <> r.rel
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
                             f.view, r.rel, f.owner);
            fix := format('ALTER VIEW %s SET (security_invoker = true);', f.view);
            RETURN NEXT;
        END LOOP;
        relation := r.rel;
        IF bad = 0 THEN
            status := 'ok'; rows_affected := NULL; fix := NULL;
            detail := CASE WHEN cnt = 0 THEN 'no view reads this table'
                           ELSE format('%s views read this table, all with security_invoker', cnt) END;
            RETURN NEXT;
        END IF;

        -- bypassrls_role: roles that skip the policy and can read the table.
        -- Superusers are left out: they bypass every check by design.
        check_name := 'bypassrls_role';
        SELECT count(*), string_agg(quote_ident(ro.rolname), ', ' ORDER BY ro.rolname),
               string_agg(format('ALTER ROLE %I NOBYPASSRLS;', ro.rolname), E'\n' ORDER BY ro.rolname)
          INTO n, txt, txt2
          FROM pg_roles ro
         WHERE ro.rolbypassrls AND NOT ro.rolsuper
           AND has_any_column_privilege(ro.oid, r.rel, 'SELECT');
        rows_affected := n;
        IF n > 0 THEN
            status := 'warning';
            detail := format('roles with BYPASSRLS can read every tenant''s rows: %s', txt);
            fix := txt2;
        ELSE
            status := 'ok'; detail := 'no non-superuser role with BYPASSRLS can read this table'; fix := NULL;
        END IF;
        RETURN NEXT;

        -- unregistered_reference: tables whose foreign keys point here but
        -- that are not registered (nor partitions of a registered table)
        check_name := 'unregistered_reference'; bad := 0; rows_affected := NULL;
        FOR f IN
            SELECT c.conrelid::regclass AS child, string_agg(quote_ident(c.conname), ', ' ORDER BY c.conname) AS cons
            FROM pg_constraint c
            WHERE c.contype = 'f' AND c.confrelid = r.rel AND c.conparentid = 0 AND c.conrelid <> r.rel
              AND NOT EXISTS (SELECT 1 FROM tenancy.tables t2
                              WHERE t2.relation = c.conrelid
                                 OR t2.relation IN (SELECT pg_partition_ancestors(c.conrelid)))
            GROUP BY c.conrelid
            ORDER BY c.conrelid::regclass::text
        LOOP
            bad := bad + 1;
            relation := f.child; status := 'failure';
            detail := format('%s references %s (%s) but is not registered: its rows carry no tenant and no policy protects them',
                             f.child, r.rel, f.cons);
            fix := CASE WHEN tenancy.has_routine('add_tenant_column')
                        THEN format('SELECT tenancy.add_tenant_column(%L);', f.child::text)
                        ELSE format('ALTER TABLE %s ADD COLUMN tenant_id %s; INSERT INTO tenancy.tables (relation) VALUES (%L);',
                                    f.child, keytype, f.child::text) END;
            RETURN NEXT;
        END LOOP;
        relation := r.rel;
        IF bad = 0 THEN
            status := 'ok'; fix := NULL;
            detail := 'every table referencing this one is registered';
            RETURN NEXT;
        END IF;
    END LOOP;

    IF tbl IS NOT NULL THEN
        RETURN;
    END IF;

    -- user_without_tenant: users owning resources without any membership
    check_name := 'user_without_tenant'; bad := 0;
    FOR f IN
        SELECT s.users, s.key_column, s.name_column, s.slug_prefix,
               array_agg(s.resource::text ORDER BY s.resource::text, s.owner_column) AS resources,
               array_agg(s.owner_column ORDER BY s.resource::text, s.owner_column) AS owners,
               string_agg(format('EXISTS (SELECT 1 FROM %s o WHERE o.%I = u.%I)', s.resource, s.owner_column, s.key_column),
                          ' OR ' ORDER BY s.resource::text, s.owner_column) AS owns
        FROM tenancy.identity_sources s
        GROUP BY s.users, s.key_column, s.name_column, s.slug_prefix
        ORDER BY s.users::text
    LOOP
        bad := bad + 1;
        EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s u WHERE (%s) AND NOT EXISTS'
                       ' (SELECT 1 FROM tenancy.memberships mb WHERE mb.user_key = u.%I::text) LIMIT %s) s',
                       f.users, f.owns, f.key_column, lim)
            INTO n;
        relation := f.users; rows_affected := n;
        IF n > 0 THEN
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

    -- tenant_without_owner: once memberships are in use, every tenant needs one
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
COMMENT ON FUNCTION tenancy.verify(regclass, bigint) IS 'readiness report: one row per check and finding (ok, warning, failure) with a suggested fix';

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
    chk     name;
    con     record;
BEGIN
    SELECT t.column_name INTO col FROM tenancy.tables t WHERE t.relation = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not registered in tenancy.tables', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register it with tenancy.add_tenant_column().';
    END IF;
    SELECT a.attnotnull INTO is_notnull FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of % does not exist', col, tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    chk := left('tenancy_' || col || '_not_null', 63);
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

CREATE FUNCTION tenancy.enforce_not_null_sql(tbl regclass) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.sql || ';' FROM tenancy.enforce_not_null_plan(tbl) p;
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
    i       integer;
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
    SELECT t.column_name INTO col FROM tenancy.tables t WHERE t.relation = tbl;
    IF 'set_not_null' = ANY (steps) THEN
        EXECUTE format('SELECT count(*) FROM %s WHERE %I IS NULL', tbl, col) INTO nulls;
        IF nulls > 0 THEN
            RAISE EXCEPTION 'table % has % rows with a NULL %', tbl, nulls, col
                USING ERRCODE = 'not_null_violation',
                      DETAIL = 'Nothing was changed.',
                      HINT = 'Finish the backfill first (tenancy.verify() shows what is left).';
        END IF;
    END IF;
    IF cardinality(steps) = 0 THEN
        RAISE NOTICE 'column % of % is already NOT NULL', col, tbl;
        RETURN;
    END IF;
    -- Inside a transaction block this fails here, before any change.
    COMMIT;
    FOR i IN 1 .. cardinality(steps) LOOP
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        attempt := 0;
        LOOP
            attempt := attempt + 1;
            BEGIN
                PERFORM pg_catalog.set_config('lock_timeout', timeout, true);
                EXECUTE sqls[i];
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
                    PERFORM pg_catalog.pg_sleep(least(0.05 * 2 ^ attempt, 2));
                WHEN check_violation THEN
                    -- A NULL arrived between the count and VALIDATE.
                    raced := true;
                    EXIT;
            END;
        END LOOP;
        IF raced THEN
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', tbl, left('tenancy_' || col || '_not_null', 63));
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
--   3. VALIDATE it (no lock that blocks writes);
--   4. drop the old foreign key and give its name to the new one;
--   5. swap each unique constraint (or index) for its scoped index.
CREATE FUNCTION tenancy.scope_constraints_plan(tbl regclass DEFAULT NULL)
RETURNS TABLE (step integer, relation regclass, action text, sql text, undo_sql text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r       record;
    f       record;
    phases  jsonb[] := ARRAY['[]', '[]', '[]', '[]', '[]']::jsonb[];
    planned jsonb := '{}';
    want    text;
    idx     text;
    nsp     name;
    newname text;
    newcon  text;
    def     text;
    acts    text;
    i       integer;
    e       jsonb;
BEGIN
    IF tbl IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.tables t WHERE t.relation = tbl) THEN
        RAISE EXCEPTION 'table % is not registered in tenancy.tables', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register it with tenancy.add_tenant_column().';
    END IF;

    FOR r IN
        SELECT t.relation AS rel, t.column_name AS col, a.attnum, c.relname, c.relkind,
               c.relnamespace::regnamespace::name AS nsp
        FROM tenancy.tables t
        JOIN pg_class c ON c.oid = t.relation
        JOIN pg_attribute a ON a.attrelid = t.relation AND a.attname = t.column_name
                           AND a.attnum > 0 AND NOT a.attisdropped
        WHERE tbl IS NULL OR t.relation = tbl
        ORDER BY t.relation::text
    LOOP
        -- 1 and 5: unique constraints and indexes without the tenant column
        FOR f IN
            SELECT i.indexrelid, ic.relname AS idxname, i.indisprimary, i.indnullsnotdistinct,
                   con.oid AS conoid, con.conname, con.contype, con.condeferrable, con.condeferred,
                   (string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts] AS keys,
                   (SELECT string_agg(pg_get_indexdef(i.indexrelid, k, true), ', ' ORDER BY k)
                      FROM generate_series(1, i.indnkeyatts) k) AS keycols,
                   (SELECT string_agg(pg_get_indexdef(i.indexrelid, k, true), ', ' ORDER BY k)
                      FROM generate_series(i.indnkeyatts + 1, i.indnatts) k) AS inccols,
                   (SELECT string_agg(coalesce(a.attname, 'expr'), '_' ORDER BY k.i)
                      FROM unnest((string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts]) WITH ORDINALITY k(attnum, i)
                      LEFT JOIN pg_attribute a ON a.attrelid = r.rel AND a.attnum = k.attnum) AS colnames,
                   pg_get_expr(i.indpred, i.indrelid, true) AS pred,
                   NOT EXISTS (SELECT 1 FROM unnest((string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts]) k(attnum)
                               LEFT JOIN pg_attribute a ON a.attrelid = r.rel AND a.attnum = k.attnum
                               WHERE a.attnum IS NULL OR (NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '')) AS generated
            FROM pg_index i
            JOIN pg_class ic ON ic.oid = i.indexrelid
            LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = r.rel
                                       AND con.contype IN ('p', 'u')
            WHERE i.indrelid = r.rel AND i.indisunique
              AND NOT (r.attnum = ANY ((string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts]))
            ORDER BY ic.relname
        LOOP
            -- a generated surrogate primary key stays (verify() accepts it)
            CONTINUE WHEN f.indisprimary AND f.generated;
            newname := left(r.relname || '_' || r.col || '_' || f.colnames, 59) || '_key';
            acts := CASE WHEN f.condeferrable THEN ' DEFERRABLE' ELSE '' END
                 || CASE WHEN f.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END;
            IF r.relkind = 'p' AND f.contype IN ('p', 'u') THEN
                -- PostgreSQL has no ADD CONSTRAINT ... USING INDEX on
                -- partitioned tables: rebuild the constraint in one step
                -- (the index build blocks writes).
                phases[5] := phases[5] || jsonb_build_object(
                    'rel', r.rel::text, 'action', 'rebuild_constraint',
                    'sql', format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s (%I, %s)%s',
                                  r.rel, f.conname, f.conname,
                                  CASE f.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, r.col, f.keycols, acts),
                    'undo', format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
                                   r.rel, f.conname, f.conname, pg_get_constraintdef(f.conoid)));
                planned := planned || jsonb_build_object(
                    format('%s:%s', r.rel::oid, (SELECT array_agg(x ORDER BY x) FROM unnest(r.attnum || f.keys) x)), f.conname);
                CONTINUE;
            END IF;
            phases[1] := phases[1] || jsonb_build_object(
                'rel', r.rel::text, 'action', 'create_scoped_index',
                'sql', format('CREATE UNIQUE INDEX %sIF NOT EXISTS %I ON %s (%I, %s)%s%s%s',
                              CASE WHEN r.relkind = 'p' THEN '' ELSE 'CONCURRENTLY ' END,
                              newname, r.rel, r.col, f.keycols,
                              CASE WHEN f.inccols IS NOT NULL THEN format(' INCLUDE (%s)', f.inccols) ELSE '' END,
                              CASE WHEN f.indnullsnotdistinct THEN ' NULLS NOT DISTINCT' ELSE '' END,
                              CASE WHEN f.pred IS NOT NULL THEN format(' WHERE %s', f.pred) ELSE '' END),
                'undo', format('DROP INDEX IF EXISTS %I.%I', r.nsp, newname));
            IF f.pred IS NULL AND NOT 0 = ANY (f.keys) THEN
                planned := planned || jsonb_build_object(
                    format('%s:%s', r.rel::oid, (SELECT array_agg(x ORDER BY x) FROM unnest(r.attnum || f.keys) x)), newname);
            END IF;
            IF f.contype IN ('p', 'u') THEN
                phases[5] := phases[5] || jsonb_build_object(
                    'rel', r.rel::text, 'action', 'swap_constraint',
                    'sql', format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s USING INDEX %I%s',
                                  r.rel, f.conname, f.conname,
                                  CASE f.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, newname, acts),
                    'undo', format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
                                   r.rel, f.conname, f.conname, pg_get_constraintdef(f.conoid)));
            ELSE
                phases[5] := phases[5] || jsonb_build_object(
                    'rel', r.rel::text, 'action', 'swap_index',
                    'sql', format($f$DO $tenancy$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index WHERE indexrelid = %L::regclass AND indisvalid) THEN RAISE EXCEPTION 'index %s is not valid' USING ERRCODE = 'object_not_in_prerequisite_state'; END IF; DROP INDEX %I.%I; ALTER INDEX %I.%I RENAME TO %I; END $tenancy$ $f$,
                                  format('%I.%I', r.nsp, newname), format('%I.%I', r.nsp, newname),
                                  r.nsp, f.idxname, r.nsp, newname, f.idxname),
                    'undo', format('ALTER INDEX %I.%I RENAME TO %I; %s',
                                   r.nsp, f.idxname, newname, pg_get_indexdef(f.indexrelid)));
            END IF;
        END LOOP;

        -- 1 to 4: foreign keys to registered tables, as (tenant, key)
        FOR f IN
            SELECT c.oid, c.conname, c.confrelid::regclass AS parent, pt.column_name AS pcol, pa.attnum AS pattnum,
                   pc.relname AS prelname, pc.relkind AS prelkind, pc.relnamespace::regnamespace::name AS pnsp,
                   c.confkey, c.confupdtype, c.confdeltype, c.confmatchtype, c.condeferrable, c.condeferred,
                   tenancy.column_list(c.conrelid::regclass, c.conkey) AS cols,
                   tenancy.column_list(c.confrelid::regclass, c.confkey) AS refcols,
                   tenancy.column_list(c.conrelid::regclass, c.confdelsetcols) AS delsetcols,
                   (SELECT string_agg(a.attname, '_' ORDER BY k.i)
                      FROM unnest(c.confkey) WITH ORDINALITY k(attnum, i)
                      JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum) AS refnames
            FROM pg_constraint c
            JOIN tenancy.tables pt ON pt.relation = c.confrelid
            JOIN pg_class pc ON pc.oid = c.confrelid
            JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attname = pt.column_name
                                AND pa.attnum > 0 AND NOT pa.attisdropped
            WHERE c.contype = 'f' AND c.conrelid = r.rel AND c.conparentid = 0
              AND NOT EXISTS (SELECT 1 FROM unnest(c.conkey, c.confkey) k(ck, pk)
                              WHERE k.ck = r.attnum AND k.pk = pa.attnum)
            ORDER BY c.conname
        LOOP
            -- the parent needs a unique (tenant, key)
            want := format('%s:%s', f.parent::oid, (SELECT array_agg(x ORDER BY x) FROM unnest(f.pattnum || f.confkey) x));
            IF NOT planned ? want THEN
                SELECT ic.relname INTO idx
                  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid = f.parent AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                   AND (SELECT array_agg(x ORDER BY x) FROM unnest((string_to_array(i.indkey::text, ' ')::smallint[])[1:i.indnkeyatts]) x)
                       = (SELECT array_agg(x ORDER BY x) FROM unnest(f.pattnum || f.confkey) x)
                 LIMIT 1;
                IF idx IS NULL THEN
                    idx := left(f.prelname || '_' || f.pcol || '_' || f.refnames, 59) || '_key';
                    phases[1] := phases[1] || jsonb_build_object(
                        'rel', f.parent::text, 'action', 'create_parent_index',
                        'sql', format('CREATE UNIQUE INDEX %sIF NOT EXISTS %I ON %s (%I, %s)',
                                      CASE WHEN f.prelkind = 'p' THEN '' ELSE 'CONCURRENTLY ' END,
                                      idx, f.parent, f.pcol, f.refcols),
                        'undo', format('DROP INDEX IF EXISTS %I.%I', f.pnsp, idx));
                END IF;
                planned := planned || jsonb_build_object(want, idx);
            END IF;

            newcon := left(f.conname, 56) || '_tenant';
            acts := CASE f.confmatchtype WHEN 'f' THEN ' MATCH FULL' ELSE '' END
                 || CASE f.confupdtype WHEN 'r' THEN ' ON UPDATE RESTRICT' WHEN 'c' THEN ' ON UPDATE CASCADE'
                                       WHEN 'n' THEN ' ON UPDATE SET NULL' WHEN 'd' THEN ' ON UPDATE SET DEFAULT' ELSE '' END
                 || CASE f.confdeltype WHEN 'r' THEN ' ON DELETE RESTRICT' WHEN 'c' THEN ' ON DELETE CASCADE'
                                       WHEN 'n' THEN format(' ON DELETE SET NULL (%s)', coalesce(f.delsetcols, f.cols))
                                       WHEN 'd' THEN format(' ON DELETE SET DEFAULT (%s)', coalesce(f.delsetcols, f.cols))
                                       ELSE '' END
                 || CASE WHEN f.condeferrable THEN ' DEFERRABLE' ELSE '' END
                 || CASE WHEN f.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END;
            phases[2] := phases[2] || jsonb_build_object(
                'rel', r.rel::text, 'action', 'add_scoped_foreign_key',
                'sql', format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I, %s) REFERENCES %s (%I, %s)%s NOT VALID',
                              r.rel, newcon, r.col, f.cols, f.parent, f.pcol, f.refcols, acts),
                'undo', format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', r.rel, newcon));
            phases[3] := phases[3] || jsonb_build_object(
                'rel', r.rel::text, 'action', 'validate_foreign_key',
                'sql', format('ALTER TABLE %s VALIDATE CONSTRAINT %I', r.rel, newcon),
                'undo', NULL);
            def := pg_get_constraintdef(f.oid);
            IF def !~ ' NOT VALID$' THEN
                def := def || ' NOT VALID';
            END IF;
            phases[4] := phases[4] || jsonb_build_object(
                'rel', r.rel::text, 'action', 'replace_foreign_key',
                'sql', format($f$DO $tenancy$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = %L::regclass AND conname = %L AND convalidated) THEN RAISE EXCEPTION 'foreign key %s is missing or not validated' USING ERRCODE = 'object_not_in_prerequisite_state'; END IF; ALTER TABLE %s DROP CONSTRAINT %I; ALTER TABLE %s RENAME CONSTRAINT %I TO %I; END $tenancy$ $f$,
                              r.rel::text, newcon, quote_ident(newcon), r.rel, f.conname, r.rel, newcon, f.conname),
                'undo', format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I; ALTER TABLE %s ADD CONSTRAINT %I %s; ALTER TABLE %s VALIDATE CONSTRAINT %I',
                               r.rel, f.conname, newcon, r.rel, f.conname, def, r.rel, f.conname));
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
CREATE FUNCTION tenancy.scope_constraints_sql(tbl regclass DEFAULT NULL) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.stmt
    FROM tenancy.scope_constraints_plan(tbl) p,
         LATERAL (VALUES (1, p.sql),
                         (2, format('SELECT tenancy.log_step(%L, %L, %L, %L)',
                                    p.relation::text, p.action, p.sql, p.undo_sql))) s(n, stmt)
    ORDER BY p.step, s.n;
$$;
COMMENT ON FUNCTION tenancy.scope_constraints_sql(regclass) IS 'statements for \gexec that make unique constraints and foreign keys tenant-scoped, each followed by its log_step()';

------------------------------------------------------------------------------
-- Rollback: undo what the extension added for a table, keep the data
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.rollback_table_sql(tbl regclass) RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    l   record;
    st  text;
BEGIN
    SELECT t.stage INTO st FROM tenancy.tables t WHERE t.relation = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not registered in tenancy.tables', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- contract steps, newest first
    FOR l IN
        SELECT c.undo_sql FROM tenancy.contract_log c
        WHERE c.relation = tbl AND c.undone_at IS NULL AND c.undo_sql IS NOT NULL
        ORDER BY c.id DESC
    LOOP
        RETURN NEXT l.undo_sql || ';';
    END LOOP;
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
        IF tenancy.has_routine('disable_rls') THEN
            RETURN NEXT format('SELECT tenancy.disable_rls(%L);', tbl::text);
        ELSE
            FOR l IN
                SELECT c.oid::regclass AS rel,
                       NOT EXISTS (SELECT 1 FROM pg_policy p2 WHERE p2.polrelid = c.oid
                                   AND p2.polname <> 'tenancy_policy') AS only_policy
                FROM (SELECT tbl::oid AS relid, 0 AS level
                      UNION ALL
                      SELECT pt.relid, pt.level FROM pg_partition_tree(tbl) pt WHERE pt.level > 0) tree
                JOIN pg_class c ON c.oid = tree.relid
                WHERE EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenancy_policy')
                ORDER BY tree.level, c.oid::regclass::text
            LOOP
                RETURN NEXT format('DROP POLICY tenancy_policy ON %s;', l.rel);
                IF l.only_policy THEN
                    RETURN NEXT format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;', l.rel);
                END IF;
            END LOOP;
        END IF;
    END IF;
    IF st IN ('migrating', 'shadow', 'enforce', 'contract') THEN
        RETURN NEXT format('UPDATE tenancy.tables SET stage = %L WHERE relation = %L::regclass;', 'backfill', tbl::text);
    END IF;
    RETURN NEXT format('UPDATE tenancy.contract_log SET undone_at = pg_catalog.now() WHERE relation = %L::regclass AND undone_at IS NULL;',
                       tbl::text);
END
$$;
COMMENT ON FUNCTION tenancy.rollback_table_sql(regclass) IS 'preview of rollback_table(): the statements, newest step first';

CREATE FUNCTION tenancy.rollback_table(tbl regclass) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmt text;
BEGIN
    FOR stmt IN SELECT s FROM tenancy.rollback_table_sql(tbl) s LOOP
        EXECUTE stmt;
        RETURN NEXT stmt;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.rollback_table(regclass) IS 'undo the contract steps, the tenancy defaults and the policy of a table in one transaction; the data stays';

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
    owns    text;
    keygen  text;
    slugx   text;
    i       integer;
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

    SELECT string_agg(format('EXISTS (SELECT 1 FROM %s o WHERE o.%I = u.%I)', x.res, x.col, key_column), ' OR ')
      INTO owns
      FROM unnest(resource_tables, owner_columns) x(res, col);
    keygen := CASE keytype WHEN 'uuid' THEN 'pg_catalog.gen_random_uuid()'
                           WHEN 'bigint' THEN 'pg_catalog.nextval(''tenancy.tenant_key_seq'')'
                           ELSE 'c.slug' END;
    -- A key that is already a valid slug fragment is used as is; anything
    -- else (upper case, e-mail addresses, long keys) gets a hash suffix so
    -- that two users never map to one slug.
    slugx := format($x$CASE WHEN u.%1$I::text ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$' AND length(%2$L || u.%1$I::text) <= 63
                          THEN %2$L || u.%1$I::text
                          ELSE left(%2$L || trim(both '-' FROM regexp_replace(lower(u.%1$I::text), '[^a-z0-9]+', '-', 'g')), 54)
                               || CASE WHEN trim(both '-' FROM regexp_replace(lower(u.%1$I::text), '[^a-z0-9]+', '-', 'g')) = '' AND %2$L = '' THEN '' ELSE '-' END
                               || left(md5(u.%1$I::text), 8) END$x$,
                    key_column, slug_prefix);

    EXECUTE format($q$
        WITH c AS (
            SELECT s.*, count(*) OVER (PARTITION BY s.slug) AS sharing
            FROM (SELECT u.%1$I::text AS user_key, coalesce(u.%2$I::text, u.%1$I::text) AS name, %3$s AS slug
                  FROM %4$s u
                  WHERE u.%1$I IS NOT NULL AND (%5$s)) s
        ),
        ins AS (
            INSERT INTO tenancy.tenants (id, slug, name)
            SELECT %6$s, c.slug, c.name FROM c
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
        $q$, key_column, name_column, slugx, users, owns, keygen)
        INTO users_with_resources, tenants_created, owners_added, conflicts;

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
    tenancy.has_routine(name),
    tenancy.tenant_accessor(),
    tenancy.column_list(regclass, smallint[]),
    tenancy.log_step(regclass, text, text, text),
    tenancy.verify(regclass, bigint),
    tenancy.enforce_not_null_plan(regclass),
    tenancy.enforce_not_null_sql(regclass),
    tenancy.scope_constraints_plan(regclass),
    tenancy.scope_constraints_sql(regclass),
    tenancy.rollback_table_sql(regclass),
    tenancy.rollback_table(regclass),
    tenancy.add_member(text, text, text),
    tenancy.remove_member(text, text),
    tenancy.create_personal_tenants(regclass, name, name, regclass[], name[], text)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE tenancy.enforce_not_null(regclass, interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.set_tenant_as(text, text, boolean) TO PUBLIC;
