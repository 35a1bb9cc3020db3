-- src/citus_context.sql: the tenant context on a Citus cluster (C: citus_context.c).

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
-- The implicit tenant on every node
------------------------------------------------------------------------------

-- Migrating mode's legacy update and delete policies let the implicit
-- tenant change rows whose tenant is NULL; on a Citus table they run on the
-- workers' shards, whose registry is empty.  So the coordinator copies the
-- implicit tenant's key to tenancy.citus_implicit_tenant on every worker as
-- the transaction that changed it commits (deferred, as role_bindings_citus,
-- by the role that changed it), and tenancy.is_implicit_tenant() reads the
-- copy where the registry names no implicit tenant.  Only the table's owner
-- (the extension's) and the superuser write it: a client that reaches a
-- worker cannot name itself the implicit tenant, and the copy makes nobody
-- a tenant (the tenant is admitted as before: forwarded by the coordinator,
-- a role binding, or a token).  Empty on the coordinator and on one node.
CREATE TABLE tenancy.citus_implicit_tenant (
    tenant text NOT NULL,
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
COMMENT ON TABLE tenancy.citus_implicit_tenant IS 'Citus worker: the key of the coordinator''s implicit tenant (copied from the coordinator), read by is_implicit_tenant()';
REVOKE ALL ON TABLE tenancy.citus_implicit_tenant FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.citus_implicit_tenant', '');
CREATE TRIGGER citus_implicit_tenant_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.citus_implicit_tenant
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.registry_changed();

CREATE FUNCTION tenancy.citus_forward_implicit() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    coordinator boolean;
    k text;
    stmt text;
    r record;
BEGIN
    IF NOT ((TG_OP <> 'INSERT' AND OLD.is_implicit) OR (TG_OP <> 'DELETE' AND NEW.is_implicit))
       OR NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN NULL;
    END IF;
    -- Citus's functions by name: they exist only where Citus is installed.
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO coordinator;
    IF NOT coordinator THEN
        RETURN NULL;
    END IF;
    -- the implicit tenant as the transaction commits
    k := (SELECT t.id::text FROM tenancy.tenants t WHERE t.is_implicit);
    stmt := 'DELETE FROM tenancy.citus_implicit_tenant'
        || CASE WHEN k IS NULL THEN ''
                ELSE format('; INSERT INTO tenancy.citus_implicit_tenant (tenant) VALUES (%L)', k) END;
    FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)'
             USING stmt LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'could not copy the implicit tenant to the Citus worker %:%', r.nodename, r.nodeport
                USING ERRCODE = 'connection_failure', DETAIL = r.result,
                      HINT = 'Set the implicit tenant again once every worker is reachable.';
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION tenancy.citus_forward_implicit() FROM PUBLIC;

CREATE CONSTRAINT TRIGGER tenants_citus_implicit
    AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenants
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION tenancy.citus_forward_implicit();

------------------------------------------------------------------------------
-- What the forwarding relies on, node by node
------------------------------------------------------------------------------

-- The tenant forwarded to a worker is parsed and checked there, under the
-- worker's settings: every node must have the extension at the same
-- version, preloaded after citus, with the same key type and context
-- source (a worker in mode "any" behind a coordinator in mode "token" would
-- take a bare key from a client that reaches it directly), a keys file in
-- token mode, and the coordinator's role bindings and implicit tenant.  One row per problem;
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
                       FROM tenancy.role_bindings b),
        'implicit', coalesce((SELECT t.id::pg_catalog.text FROM tenancy.tenants t WHERE t.is_implicit),
                             (SELECT c.tenant FROM tenancy.citus_implicit_tenant c)))::text$q$;
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
        IF (v->>'implicit') IS DISTINCT FROM (here->>'implicit') THEN
            check_name := 'implicit_tenant';
            detail := format('the implicit tenant is %s on the worker, %s on the coordinator (copy it again: UPDATE tenancy.tenants SET is_implicit = true WHERE is_implicit)',
                             coalesce(v->>'implicit', 'none'), coalesce(here->>'implicit', 'none'));
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.citus_context_problems() IS 'Citus coordinator: the workers whose tenancy version, preload, key type, context source, keys file, role bindings or implicit tenant differ from what forwarding the tenant relies on';
REVOKE EXECUTE ON FUNCTION tenancy.citus_context_problems() FROM PUBLIC;

-- verify()'s check citus_context: on a Citus coordinator, every worker
-- checks the forwarded tenant as this node does (citus_context_problems()).
-- Without Citus, and on a worker, no row.  The probe connects to the
-- workers and reads their role bindings: a caller without EXECUTE on
-- citus_context_problems() gets a warning, not the workers' settings.
CREATE FUNCTION tenancy.verify_citus_context()
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
    n integer := 0;
    coordinator boolean;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- plpgsql_check: Citus's functions exist only where Citus is installed: named at run time.
    EXECUTE format('SELECT pg_catalog.%I()', 'citus_is_coordinator') INTO coordinator;
    IF NOT coordinator THEN
        RETURN;
    END IF;
    check_name := 'citus_context';
    relation := NULL;
    fix := NULL;
    IF NOT has_function_privilege('tenancy.citus_context_problems()', 'EXECUTE') THEN
        status := 'warning';
        rows_affected := NULL;
        detail := 'not checked: the workers'' settings are read by tenancy.citus_context_problems(), which this role may not run';
        RETURN NEXT;
        RETURN;
    END IF;
    FOR p IN SELECT * FROM tenancy.citus_context_problems() LOOP
        n := n + 1;
        status := 'failure';
        rows_affected := NULL;
        detail := format('worker %s, %s: %s', p.node, p.check_name, p.detail);
        RETURN NEXT;
    END LOOP;
    IF n = 0 THEN
        status := 'ok';
        rows_affected := 0;
        detail := 'every worker runs this version of tenancy after citus, with the same tenant type, context source and role bindings, and a keys file in token mode';
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_citus_context() IS 'verify() check citus_context: on a Citus coordinator, the workers that would check a forwarded tenant differently (citus_context_problems()); no row without Citus';
REVOKE EXECUTE ON FUNCTION tenancy.verify_citus_context() FROM PUBLIC;
