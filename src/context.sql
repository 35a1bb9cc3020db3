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

-- The bindings, recorded by the extension: a bound role's sessions get
-- this tenant and no other (context.c refuses any other, and clearing, for
-- the role itself), whatever the role does to its own settings.
CREATE TABLE tenancy.role_bindings (
    role regrole PRIMARY KEY,
    tenant text NOT NULL
);
COMMENT ON TABLE tenancy.role_bindings IS 'roles bound to a tenant in this database (bind_role()); read by the tenant_id check';
REVOKE ALL ON TABLE tenancy.role_bindings FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.role_bindings', '');
CREATE TRIGGER role_bindings_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.role_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.registry_changed();

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
    -- The binding first: the ALTER ROLE below is then checked against it.
    RETURN format('INSERT INTO tenancy.role_bindings (role, tenant) VALUES (%L, %L)'
                  ' ON CONFLICT (role) DO UPDATE SET tenant = excluded.tenant;' || chr(10),
                  role::text, k)
        || stmt || format('ALTER ROLE %I IN DATABASE %I SET tenancy.tenant_id = %L;',
                          rolname, current_database(), k);
END
$$;
COMMENT ON FUNCTION tenancy.bind_role_sql(regrole, text) IS 'the statements bind_role() would run (the binding, then the ALTER ROLE defaults)';

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
    stmt text := format('DELETE FROM tenancy.role_bindings WHERE role = %L::pg_catalog.regrole;' || chr(10)
                        || 'ALTER ROLE %I IN DATABASE %I RESET tenancy.tenant_id;',
                        role::text,
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
