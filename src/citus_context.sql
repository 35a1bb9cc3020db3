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
