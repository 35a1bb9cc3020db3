-- tenancy--0.1--0.2.sql: upgrade from the released 0.1 to 0.2 (unreleased,
-- editable until 0.2 is released).  Every change to the SQL sources
-- (src/*.sql) since v0.1 is written here as well, so that ALTER EXTENSION
-- tenancy UPDATE gives what a fresh install of 0.2 gives (test/upgrade.sh
-- compares the two).  Read the database's key type from the registry
-- (pg_attribute of tenancy.tenants.id), never from tenancy.tenant_type.

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.2'" to load this file. \quit

------------------------------------------------------------------------------
-- Bindings a role cannot override (src/context.sql)
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
CREATE OR REPLACE FUNCTION tenancy.bind_role_sql(role regrole, tenant text DEFAULT NULL) RETURNS text
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

CREATE OR REPLACE FUNCTION tenancy.unbind_role(role regrole) RETURNS text
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

-- Signed tenant tokens (src/token.sql).
CREATE FUNCTION tenancy.set_tenant_token(token text, is_local boolean DEFAULT true) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_set_tenant_token'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION tenancy.set_tenant_token(text, boolean) IS 'verify a signed tenant token (JWT) and set the tenant from its claim, for the transaction (default) or the session; returns the key';

CREATE FUNCTION tenancy.current_user_key() RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_current_user_key'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.current_user_key() IS 'sub claim of the tenant token that set the current tenant; NULL otherwise';

-- issue 17: citus_context

------------------------------------------------------------------------------
-- Role bindings on every node
------------------------------------------------------------------------------

-- Citus propagates ALTER ROLE ... IN DATABASE ... SET (the role default that
-- bind_role() writes), so a bound role's connections to the workers get its
-- tenant; tenancy.role_bindings is a table of each node, and the workers
-- need it too, to refuse any other tenant to a bound role that connects to
-- them directly (and to admit the default under context_source = token).
-- On the coordinator of a Citus cluster each change of a binding is copied
-- to the workers as the transaction commits (deferred), by the superuser
-- who changed it; a worker that cannot be reached fails the commit.
CREATE FUNCTION tenancy.citus_forward_binding() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    coordinator boolean;
    stmt text;
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN NULL;
    END IF;
    -- Citus's functions by name: they exist only where Citus is installed.
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO coordinator;
    IF NOT coordinator THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        stmt := format('DELETE FROM tenancy.role_bindings WHERE role = %L::pg_catalog.regrole',
                       OLD.role::text);
    ELSE
        stmt := format('INSERT INTO tenancy.role_bindings (role, tenant) VALUES (%L::pg_catalog.regrole, %L)'
                       ' ON CONFLICT (role) DO UPDATE SET tenant = excluded.tenant',
                       NEW.role::text, NEW.tenant);
        IF TG_OP = 'UPDATE' AND OLD.role <> NEW.role THEN
            stmt := format('DELETE FROM tenancy.role_bindings WHERE role = %L::pg_catalog.regrole; ',
                           OLD.role::text) || stmt;
        END IF;
    END IF;
    FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)'
             USING stmt LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'could not copy the role binding to the Citus worker %:%', r.nodename, r.nodeport
                USING ERRCODE = 'connection_failure', DETAIL = r.result,
                      HINT = 'Bind the role again once every worker is reachable.';
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION tenancy.citus_forward_binding() FROM PUBLIC;

CREATE CONSTRAINT TRIGGER role_bindings_citus
    AFTER INSERT OR UPDATE OR DELETE ON tenancy.role_bindings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION tenancy.citus_forward_binding();

------------------------------------------------------------------------------
-- What the forwarding relies on, node by node
------------------------------------------------------------------------------

-- The tenant forwarded to a worker is parsed and checked there, under the
-- worker's settings: every node must have the extension at the same
-- version, preloaded after citus, with the same key type and context
-- source (a worker in mode "any" behind a coordinator in mode "token" would
-- take a bare key from a client that reaches it directly), a keys file in
-- token mode, and the coordinator's role bindings.  One row per problem;
-- none on a database without Citus.  verify() may report these rows.
CREATE FUNCTION tenancy.citus_context_problems(OUT check_name text, OUT node text, OUT detail text)
RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    probe constant text := $q$SELECT pg_catalog.json_build_object(
        'version', (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'tenancy'),
        'preload', pg_catalog.current_setting('shared_preload_libraries'),
        'tenant_type', pg_catalog.current_setting('tenancy.tenant_type', true),
        'context_source', pg_catalog.current_setting('tenancy.context_source', true),
        'keys_file', coalesce(pg_catalog.current_setting('tenancy.token_keys_file', true), '') <> '',
        'bindings', (SELECT pg_catalog.string_agg(b.role::text || '=' || b.tenant, ',' ORDER BY b.role::text)
                       FROM tenancy.role_bindings b))::text$q$;
    here json;
    ok boolean;
    result text;
    v json;
    coordinator boolean;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- plpgsql_check: Citus's functions exist only where Citus is installed: named at run time.
    EXECUTE format('SELECT pg_catalog.%I()', 'citus_is_coordinator') INTO coordinator;
    IF NOT coordinator THEN
        RAISE EXCEPTION 'tenancy.citus_context_problems() runs on the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- plpgsql_check: the probe is a constant.
    EXECUTE probe INTO here;
    -- plpgsql_check: VOLATILE: run_command_on_workers() opens connections to the workers.
    -- plpgsql_check: Citus's functions by name, as above; the probe is a constant.
    FOR node, ok, result IN EXECUTE format('SELECT n.nodename || '':'' || n.nodeport AS node, x.success, x.result
                               FROM pg_catalog.%I($1) x
                               JOIN pg_catalog.%I n ON n.nodename = x.nodename AND n.nodeport = x.nodeport
                              ORDER BY 1', 'run_command_on_workers', 'pg_dist_node') USING probe LOOP
        IF NOT ok THEN
            check_name := 'unreachable'; detail := result;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v := result::json;
        IF (v->>'version') IS DISTINCT FROM (here->>'version') THEN
            check_name := 'version';
            detail := format('tenancy %s on the worker, %s on the coordinator', coalesce(v->>'version', 'absent'), here->>'version');
            RETURN NEXT;
        END IF;
        IF (v->>'preload') !~ '(^|,)\s*citus\s*,(.*,)?\s*tenancy\s*(,|$)' THEN
            check_name := 'preload';
            detail := format('shared_preload_libraries is %L: it must name citus, then tenancy', v->>'preload');
            RETURN NEXT;
        END IF;
        IF (v->>'tenant_type') IS DISTINCT FROM (here->>'tenant_type') THEN
            check_name := 'tenant_type';
            detail := format('tenancy.tenant_type is %s on the worker, %s on the coordinator', v->>'tenant_type', here->>'tenant_type');
            RETURN NEXT;
        END IF;
        IF (v->>'context_source') IS DISTINCT FROM (here->>'context_source') THEN
            check_name := 'context_source';
            detail := format('tenancy.context_source is %s on the worker, %s on the coordinator', v->>'context_source', here->>'context_source');
            RETURN NEXT;
        END IF;
        IF (v->>'context_source') = 'token' AND NOT (v->>'keys_file')::boolean THEN
            check_name := 'token_keys_file';
            detail := 'tenancy.context_source is token but no tenancy.token_keys_file is set: the worker refuses every forwarded token';
            RETURN NEXT;
        END IF;
        IF (v->>'bindings') IS DISTINCT FROM (here->>'bindings') THEN
            check_name := 'role_bindings';
            detail := format('tenancy.role_bindings holds %s on the worker, %s on the coordinator',
                             coalesce(v->>'bindings', 'nothing'), coalesce(here->>'bindings', 'nothing'));
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.citus_context_problems() IS 'Citus coordinator: the workers whose tenancy version, preload, key type, context source, keys file or role bindings differ from what forwarding the tenant relies on';
REVOKE EXECUTE ON FUNCTION tenancy.citus_context_problems() FROM PUBLIC;
