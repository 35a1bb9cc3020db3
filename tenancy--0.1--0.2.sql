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

------------------------------------------------------------------------------
-- issue 17: staged modes and shadow counters on Citus (src/rls.sql,
-- src/verify.sql, src/citus_shadow.sql)
------------------------------------------------------------------------------

-- On a Citus table the implicit-tenant test is a plain call: Citus cannot
-- propagate a policy holding a sub-select to the shards ("unexpected
-- non-SELECT command in SubLink"), and on each shard the call is as cheap,
-- being evaluated only for the rows whose tenant is NULL.
CREATE FUNCTION tenancy.rls_citus_distributed(tbl regclass) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rls_citus_distributed'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rls_citus_distributed(regclass) IS 'true when Citus lists the table in its metadata on this node (distributed, reference or Citus-local); false without Citus';

CREATE OR REPLACE FUNCTION tenancy.rls_legacy_stmts(qualified text, column_name name, roles text, mode text)
RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN mode = 'migrating' THEN ARRAY[
        format('CREATE POLICY tenancy_policy_legacy_read ON %s AS PERMISSIVE FOR SELECT TO %s USING (%I IS NULL)',
               qualified, roles, column_name),
        format('CREATE POLICY tenancy_policy_legacy_update ON %s AS PERMISSIVE FOR UPDATE TO %s USING (%I IS NULL AND %s) WITH CHECK (%I IS NULL AND %s)',
               qualified, roles, column_name, imp, column_name, imp),
        format('CREATE POLICY tenancy_policy_legacy_delete ON %s AS PERMISSIVE FOR DELETE TO %s USING (%I IS NULL AND %s)',
               qualified, roles, column_name, imp)]
    ELSE '{}'::text[] END
      FROM (SELECT CASE WHEN tenancy.rls_citus_distributed(qualified::regclass)
                        THEN 'tenancy.is_implicit_tenant()'
                        ELSE '(SELECT tenancy.is_implicit_tenant())' END AS imp) i;
$$;

-- verify(): null_tenant and cross_tenant_reference counted shard by shard on Citus.
CREATE OR REPLACE FUNCTION tenancy.verify_null_tenant(rel regclass, tenant_col name, max_rows bigint)
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
    n := CASE WHEN tenancy.rls_citus_distributed(rel)   -- on Citus: shard by shard (citus_shadow.sql)
              THEN tenancy.citus_null_tenants(rel, tenant_col, lim, max_rows)
              ELSE (tenancy.table_query(rel, NULL,
                        format('SELECT count(*) FROM (SELECT 1 FROM %s WHERE %I IS NULL LIMIT %s) s', rel, tenant_col, lim)))[1]::bigint END;
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

CREATE OR REPLACE FUNCTION tenancy.verify_cross_tenant_reference(rel regclass, tenant_col name, tenant_type oid, max_rows bigint, conflicted text[])
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
            IF tenancy.rls_citus_distributed(f.child) THEN
                -- on Citus: each shard of the child joined with the shard
                -- of the parent beside it (colocated, or a reference table)
                n := tenancy.citus_cross_tenant_references(f.child, f.parent, f.joincond, cond, lim, max_rows);
            ELSE
                n := (tenancy.table_query(f.child, NULL, txt2))[1]::bigint;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            BEGIN
                IF tenancy.rls_citus_distributed(f.child) THEN
                    -- the shard counts ran as the least privileged already
                    RAISE;
                END IF;
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

-- verify(): shadow_divergence reads every node's counters on Citus.
CREATE OR REPLACE FUNCTION tenancy.verify_shadow_divergence(rel regclass)
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
        IF tenancy.rls_citus_distributed(rel) THEN
            -- on Citus the workers count the shards (citus_shadow.sql)
            SELECT coalesce(sum(s.rows_hidden), 0)::bigint, coalesce(sum(s.writes_refused), 0)::bigint
              INTO n, m FROM tenancy.cluster_shadow_stats s WHERE s.relation = rel;
        END IF;
        rows_affected := n + m;
        IF n + m > 0 THEN
            status := 'failure';
            detail := format('shadow mode counted %s rows the policy would hide and %s writes it would refuse: find the code path that runs without the right tenant, fix it, then reset the counters',
                             n, m);
            fix := format('SELECT tenancy.%s(%L);',
                          CASE WHEN tenancy.rls_citus_distributed(rel) THEN 'reset_cluster_shadow_stats'
                               ELSE 'reset_shadow_stats' END, rel::text);
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
        WHEN object_not_in_prerequisite_state      -- not preloaded: no counters
          OR external_routine_exception THEN          -- a Citus worker did not answer
            status := 'warning'; rows_affected := NULL;
            detail := format('shadow counters unavailable: %s', SQLERRM);
            fix := NULL;
    END;
-- issue 18: deprecation (src/deprecation.sql, all new objects)

------------------------------------------------------------------------------
-- Deprecation of the legacy path.  A legacy role (bound with bind_role() to
-- the implicit tenant) is first deprecated: each of its transactions is
-- counted in shared memory and writes a WARNING to the server log (never to
-- its client) at most once per tenancy.deprecation_warning_interval.  Once it
-- has not run for tenancy.retire_after it is retired: its binding goes, its
-- sessions must name their tenant (tenancy.require_tenant), and when it was
-- the last role bound to the implicit tenant the tenant columns lose the
-- implicit default (and derived tables their derivation, except those the
-- DBA keeps).  Each step is previewable, recorded in tenancy.contract_log
-- with its undo, and undone by undeprecate_role() / unretire_role().
------------------------------------------------------------------------------

CREATE TABLE tenancy.role_deprecations (
    role           regrole PRIMARY KEY,
    tenant         text NOT NULL,
    deprecated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    deprecated_by  name NOT NULL DEFAULT session_user,
    deprecate_log  bigint,
    retired_at     timestamptz,
    retired_by     name,
    retire_forced  boolean,
    retire_log     bigint[]
);
COMMENT ON TABLE tenancy.role_deprecations IS 'legacy roles deprecated (deprecate_role()) and retired (retire_role()); read by deprecation.c';
REVOKE ALL ON TABLE tenancy.role_deprecations FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.role_deprecations', '');
CREATE TRIGGER role_deprecations_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.role_deprecations
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.registry_changed();

-- A retired role gets no binding again until unretire_role().
CREATE FUNCTION tenancy.role_bindings_check_retired() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
BEGIN
    SELECT r.retired_at, r.retired_by INTO d FROM tenancy.role_deprecations r
     WHERE r.role = NEW.role AND r.retired_at IS NOT NULL;
    IF FOUND THEN
        RAISE EXCEPTION 'role "%" is retired from the legacy path', NEW.role
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('It was retired at %s by %s: its tenant binding is refused.', d.retired_at, d.retired_by),
                  HINT = 'Set the tenant per request with tenancy.set_tenant(), or undo the retirement with tenancy.unretire_role().';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER role_bindings_check_retired
    BEFORE INSERT OR UPDATE ON tenancy.role_bindings
    FOR EACH ROW EXECUTE FUNCTION tenancy.role_bindings_check_retired();

-- Counters of this database's deprecated roles (shared memory; empty when
-- tenancy is not preloaded), and since when they count.
CREATE FUNCTION tenancy.deprecation_activity(
    OUT role oid, OUT transactions bigint, OUT warnings bigint,
    OUT last_run timestamptz, OUT last_application_name text,
    OUT last_warning timestamptz, OUT counting_since timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_deprecation_activity'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.deprecation_activity() IS 'transactions of deprecated roles in this database since the server started (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.deprecation_watch(OUT counting_since timestamptz, OUT retire_after interval)
    AS 'MODULE_PATHNAME', 'tenancy_deprecation_watch'
    LANGUAGE C STABLE;
COMMENT ON FUNCTION tenancy.deprecation_watch() IS 'since when deprecated roles are counted (NULL when not preloaded), and tenancy.retire_after';

CREATE VIEW tenancy.deprecated_roles AS
SELECT d.role, d.tenant, d.deprecated_at, d.deprecated_by,
       coalesce(a.transactions, 0) AS transactions,
       coalesce(a.warnings, 0) AS warnings,
       a.last_run, a.last_application_name, a.last_warning,
       GREATEST(d.deprecated_at, w.counting_since) AS watched_since,
       pg_catalog.now() OPERATOR(pg_catalog.-)
           coalesce(a.last_run, GREATEST(d.deprecated_at, w.counting_since)) AS quiet_for,
       w.retire_after,
       d.retired_at IS NULL AND w.counting_since IS NOT NULL
           AND pg_catalog.now() OPERATOR(pg_catalog.-)
               coalesce(a.last_run, GREATEST(d.deprecated_at, w.counting_since))
               OPERATOR(pg_catalog.>=) w.retire_after AS retirable,
       d.retired_at, d.retired_by, d.retire_forced
  FROM tenancy.role_deprecations d
  CROSS JOIN tenancy.deprecation_watch() w
  LEFT JOIN tenancy.deprecation_activity() a ON a.role OPERATOR(pg_catalog.=) d.role::oid;
COMMENT ON VIEW tenancy.deprecated_roles IS 'deprecated legacy roles: when each last ran, from which application, and whether it may be retired';
REVOKE ALL ON TABLE tenancy.deprecated_roles FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.deprecated_roles TO pg_read_all_stats;

-- The default of a tenant column once the legacy path is retired: the
-- current tenant, and an error for a write that names none.  Executable by
-- PUBLIC: it runs in the writers' INSERTs, and reads nothing.
CREATE FUNCTION tenancy.tenant_required() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- plpgsql_check: STABLE, not IMMUTABLE: an INSERT's planner would fold an IMMUTABLE call, and raise for every row.
    RAISE EXCEPTION 'no tenant is set'
        USING ERRCODE = 'not_null_violation',
              DETAIL = 'The legacy path is retired: the tenant column no longer defaults to the implicit tenant.',
              HINT = 'Set the tenant of the transaction with tenancy.set_tenant(), or write the tenant column.';
END
$$;
COMMENT ON FUNCTION tenancy.tenant_required() IS 'raises: the default of tenant columns after retire_role() refuses a write without a tenant';

-- A comment that stays one: each line of text after '-- '.
CREATE FUNCTION tenancy.deprecation_comment(text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '-- ' || regexp_replace($1, '\r\n|[\r\n]', chr(10) || '-- ', 'g');
$$;

-- The role's deprecation, checked: a role bound to the implicit tenant.
CREATE FUNCTION tenancy.deprecation_check(role regrole) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    bound text;
    k text := tenancy.implicit_tenant();
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT b.tenant INTO bound FROM tenancy.role_bindings b WHERE b.role = role;
    IF bound IS NULL THEN
        RAISE EXCEPTION 'role "%" is not bound to a tenant', role
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Only a legacy role, bound with tenancy.bind_role() to the implicit tenant, can be deprecated.',
                  HINT = 'Roles that set their tenant per request are on the new path already.';
    END IF;
    IF k IS NULL OR bound <> k THEN
        RAISE EXCEPTION 'role "%" is bound to tenant "%", not to the implicit tenant', role, bound
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The legacy path is the implicit tenant''s: a role bound to another tenant is a tenant''s own role.',
                  HINT = 'Call tenancy.unbind_role() when that role is no longer needed.';
    END IF;
    RETURN bound;
END
$$;

CREATE FUNCTION tenancy.deprecate_role_sql(role regrole) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    bound text := tenancy.deprecation_check(role);
BEGIN
    IF EXISTS (SELECT 1 FROM tenancy.role_deprecations d WHERE d.role = role) THEN
        RETURN '';
    END IF;
    RETURN format('INSERT INTO tenancy.role_deprecations (role, tenant) VALUES (%L, %L);', role::text, bound)
        || chr(10) || tenancy.deprecation_comment(format('undo: SELECT tenancy.undeprecate_role(%L);', role::text));
END
$$;
COMMENT ON FUNCTION tenancy.deprecate_role_sql(regrole) IS 'what deprecate_role() would do, and how to undo it (empty: already deprecated)';

CREATE FUNCTION tenancy.deprecate_role(role regrole) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    stmt text := tenancy.deprecate_role_sql(role);
    bound text := tenancy.deprecation_check(role);
    id bigint;
BEGIN
    IF stmt = '' THEN
        RAISE NOTICE 'role "%" is already deprecated, nothing to do', role;
        RETURN NULL;
    END IF;
    id := tenancy.log_step('tenancy.role_deprecations'::regclass, 'deprecate_role',
                           format('INSERT INTO tenancy.role_deprecations (role, tenant) VALUES (%L, %L)', role::text, bound),
                           format('SELECT tenancy.undeprecate_role(%L)', role::text));
    INSERT INTO tenancy.role_deprecations (role, tenant, deprecate_log) VALUES (role, bound, id);
    RETURN stmt;
END
$$;
COMMENT ON FUNCTION tenancy.deprecate_role(regrole) IS 'deprecate a legacy role bound to the implicit tenant: its transactions are counted and logged (server log only); returns what it did';

CREATE FUNCTION tenancy.undeprecate_role(role regrole) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    d tenancy.role_deprecations;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO d FROM tenancy.role_deprecations r WHERE r.role = role;
    IF NOT FOUND THEN
        RAISE NOTICE 'role "%" is not deprecated, nothing to do', role;
        RETURN NULL;
    END IF;
    IF d.retired_at IS NOT NULL THEN
        RAISE EXCEPTION 'role "%" is retired', role
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('It was retired at %s by %s.', d.retired_at, d.retired_by),
                  HINT = 'Call tenancy.unretire_role() first.';
    END IF;
    DELETE FROM tenancy.role_deprecations r WHERE r.role = role;
    UPDATE tenancy.contract_log l SET undone_at = now() WHERE l.id = d.deprecate_log AND l.undone_at IS NULL;
    RETURN format('DELETE FROM tenancy.role_deprecations WHERE role = %L::pg_catalog.regrole;', role::text);
END
$$;
COMMENT ON FUNCTION tenancy.undeprecate_role(regrole) IS 'undo deprecate_role() (not once retired: unretire_role() first)';

-- The retirement's steps, in order, each with its undo.  The table steps
-- come only when no other role is still bound to the implicit tenant: they
-- end the legacy path for every table.
CREATE FUNCTION tenancy.retire_role_steps(role regrole, keep_derived regclass[] DEFAULT '{}')
RETURNS TABLE (relation regclass, step text, sql text, undo_sql text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text := tenancy.implicit_tenant();
    rolname name := (SELECT r.rolname FROM pg_roles r WHERE r.oid = role);
    db name := current_database();
    bound text;
    t record;
    kept regclass;
    implicit_default text;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenancy.role_deprecations d WHERE d.role = role) THEN
        RAISE EXCEPTION 'role "%" is not deprecated', role
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'A role is retired only after it has been deprecated and watched.',
                  HINT = 'Call tenancy.deprecate_role() first.';
    END IF;
    FOREACH kept IN ARRAY coalesce(keep_derived, '{}') LOOP
        IF NOT EXISTS (SELECT 1 FROM tenancy.derived_tenants d WHERE d.relation = kept) THEN
            RAISE EXCEPTION 'table "%" has no derived tenant', kept
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'keep_derived names tables of tenancy.derived_tenants whose derivation stays.';
        END IF;
    END LOOP;
    SELECT b.tenant INTO bound FROM tenancy.role_bindings b WHERE b.role = role;
    IF bound IS NOT NULL THEN
        relation := 'tenancy.role_bindings'; step := 'retire_role_unbind';
        sql := format('ALTER ROLE %I IN DATABASE %I RESET tenancy.tenant_id', rolname, db);
        undo_sql := format('ALTER ROLE %I IN DATABASE %I SET tenancy.tenant_id = %L', rolname, db, bound);
        RETURN NEXT;
        sql := format('DELETE FROM tenancy.role_bindings WHERE role = %L::pg_catalog.regrole', role::text);
        undo_sql := format('INSERT INTO tenancy.role_bindings (role, tenant) VALUES (%L, %L)', role::text, bound);
        RETURN NEXT;
    END IF;
    relation := 'tenancy.role_bindings'; step := 'retire_role_require_tenant';
    sql := format('ALTER ROLE %I IN DATABASE %I SET tenancy.require_tenant = on', rolname, db);
    undo_sql := format('ALTER ROLE %I IN DATABASE %I RESET tenancy.require_tenant', rolname, db);
    RETURN NEXT;
    IF k IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.role_bindings b
                                      WHERE b.tenant = k AND b.role <> role) THEN
        -- The implicit default: what add_tenant_column() set.
        implicit_default := tenancy.tenant_default_sql();
        FOR t IN
            SELECT tt.relation AS rel, tt.column_name AS col, pg_get_expr(ad.adbin, ad.adrelid) AS dflt
              FROM tenancy.tables tt
              JOIN pg_attribute a ON a.attrelid = tt.relation AND a.attname = tt.column_name AND NOT a.attisdropped
              JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
             WHERE pg_get_expr(ad.adbin, ad.adrelid) = implicit_default
             ORDER BY tt.relation::text
        LOOP
            relation := t.rel; step := 'retire_role_default';
            -- A derived table the DBA keeps gets the accessor alone: its
            -- trigger, which runs after the default, derives the tenant.
            sql := format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', t.rel, t.col,
                          CASE WHEN t.rel = ANY (coalesce(keep_derived, '{}')) THEN tenancy.tenant_accessor()
                               ELSE format('COALESCE(%s, (tenancy.tenant_required())::%s)', tenancy.tenant_accessor(),
                                           tenancy.type_sql(tenancy.key_type())) END);
            undo_sql := format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', t.rel, t.col, t.dflt);
            RETURN NEXT;
        END LOOP;
        FOR t IN
            SELECT d.relation AS rel, d.column_name AS col, d.source_kind, d.source
              FROM tenancy.derived_tenants d
             WHERE d.relation <> ALL (coalesce(keep_derived, '{}'))
             ORDER BY d.relation::text
        LOOP
            relation := t.rel; step := 'retire_role_underive';
            sql := format('SELECT tenancy.underive_tenant(%L::pg_catalog.regclass)', t.rel::text);
            undo_sql := format('SELECT tenancy.derive_tenant(%L::pg_catalog.regclass, %s => %L, column_name => %L)',
                               t.rel::text, CASE t.source_kind WHEN 'expression' THEN 'source' ELSE 'via' END,
                               t.source, t.col);
            RETURN NEXT;
        END LOOP;
    END IF;
    relation := 'tenancy.role_deprecations'; step := 'retire_role';
    sql := format('UPDATE tenancy.role_deprecations SET retired_at = pg_catalog.now(), retired_by = session_user'
                  ' WHERE role = %L::pg_catalog.regrole', role::text);
    undo_sql := format('UPDATE tenancy.role_deprecations SET retired_at = NULL, retired_by = NULL, retire_forced = NULL,'
                       ' retire_log = NULL WHERE role = %L::pg_catalog.regrole', role::text);
    RETURN NEXT;
END
$$;

------------------------------------------------------------------------------
-- On a Citus cluster, the shards of a distributed table live on the
-- workers: what a query on the coordinator reads of them went through each
-- worker's copy of the policy, as the connecting role.  Counts that must
-- see every row (unmigrated rows, cross-tenant references) therefore run on
-- each shard through tenancy.table_query() on its worker (as the owner,
-- without FORCE ROW LEVEL SECURITY, as on one node), and are summed here.
-- Shadow-mode divergences are counted by the workers (citus_shadow.c) and
-- gathered here per table.  Citus's functions are called through dynamic
-- SQL: they do not exist where Citus is not installed.
------------------------------------------------------------------------------

-- Sums, over the shards of rel, of the bigint columns of the one-row query
-- tpl run on each shard.  tpl is a format() string: %1$s is rel's shard,
-- %2$s the colocated shard of other (a literal % is written %%).  Each
-- shard is counted once, on its first active placement.  Runs as the
-- caller, and table_query() on the worker as the less privileged of the
-- caller and the shards' owners: executable by PUBLIC (as are the verify()
-- helpers below, which only count), like table_query() itself.
CREATE FUNCTION tenancy.citus_shard_sums(rel regclass, tpl text, other regclass DEFAULT NULL)
RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd text;
    sums bigint[];
    v bigint[];
    shard bigint;
    ok boolean;
    res text;
    host text;
    port integer;
BEGIN
    IF NOT tenancy.rls_citus_distributed(rel) THEN
        RAISE EXCEPTION 'table % is not a Citus table', rel
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Count it with an ordinary query.';
    END IF;
    -- Citus formats cmd with the shard names (%1$L, %2$L); the worker then
    -- formats tpl with them as regclass.
    cmd := 'SELECT pg_catalog.array_to_string(tenancy.table_query(%1$L::pg_catalog.regclass, NULL, '
        || 'pg_catalog.format(' || replace(quote_literal(tpl), '%', '%%') || ', %1$L::pg_catalog.regclass, '
        || CASE WHEN other IS NULL THEN '%1$L' ELSE '%2$L' END || '::pg_catalog.regclass)), '','')';
    -- plpgsql_check: dynamic: Citus's functions are absent where Citus is not installed; only names go in, through %I.
    -- plpgsql_check: VOLATILE: the commands run on the workers.
    FOR shard, ok, res, host, port IN EXECUTE CASE WHEN other IS NULL THEN
        format('SELECT DISTINCT ON (p.shardid) p.shardid, p.success, p.result, p.nodename, p.nodeport
                  FROM pg_catalog.%I($1, $3) p ORDER BY p.shardid, p.nodename, p.nodeport',
               'run_command_on_placements')
      ELSE
        format('SELECT DISTINCT ON (p.shardid1) p.shardid1, p.success, p.result, p.nodename, p.nodeport
                  FROM pg_catalog.%I($1, $2, $3) p ORDER BY p.shardid1, p.nodename, p.nodeport',
               'run_command_on_colocated_placements')
      END USING rel, other, cmd
    LOOP
        IF NOT ok THEN
            RAISE EXCEPTION 'cannot count shard % of % on %:%', shard, rel, host, port
                USING ERRCODE = 'external_routine_exception',
                      DETAIL = res;
        END IF;
        v := string_to_array(res, ',')::bigint[];
        sums := CASE WHEN sums IS NULL THEN v
                     ELSE ARRAY(SELECT a + b FROM unnest(sums, v) u(a, b)) END;
    END LOOP;
    RETURN sums;
END
$$;
COMMENT ON FUNCTION tenancy.citus_shard_sums(regclass, text, regclass) IS 'sums over the shards of a Citus table of a one-row counting query run on each shard as its owner (tenancy.table_query() on the worker)';

-- The shadow counters of every node, per table: on the coordinator, the
-- workers' counts of the shards (under the distributed table each worker's
-- copy of the policy names) added to its own.
CREATE FUNCTION tenancy.read_cluster_shadow_stats(
    OUT relation regclass, OUT rows_checked bigint, OUT rows_hidden bigint,
    OUT writes_refused bigint, OUT last_divergence timestamptz, OUT nodes integer)
RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean;
    res text;
    host text;
    port integer;
    stats jsonb;
BEGIN
    stats := (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'rel', format('%I.%I', n.nspname, c.relname), 'checked', s.rows_checked,
                      'hidden', s.rows_hidden, 'refused', s.writes_refused, 'last', s.last_divergence)), '[]'::jsonb)
                FROM tenancy.read_shadow_stats() s
                JOIN pg_class c ON c.oid = s.relation JOIN pg_namespace n ON n.oid = c.relnamespace);
    IF to_regclass('pg_catalog.pg_dist_node') IS NOT NULL THEN
        -- plpgsql_check: dynamic: Citus's function is absent where Citus is not installed; a constant command.
        FOR host, port, ok, res IN EXECUTE format('SELECT nodename, nodeport, success, result FROM pg_catalog.%I($1)',
                                                  'run_command_on_workers') USING
                    $q$SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                          'rel', pg_catalog.format('%I.%I', n.nspname, c.relname), 'checked', s.rows_checked,
                          'hidden', s.rows_hidden, 'refused', s.writes_refused, 'last', s.last_divergence)), '[]')
                        FROM tenancy.read_shadow_stats() s
                        JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s.relation
                        JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace$q$ LOOP
            IF NOT ok THEN
                RAISE EXCEPTION 'cannot read the shadow counters of worker %:%', host, port
                    USING ERRCODE = 'external_routine_exception',
                          DETAIL = res;
            END IF;
            stats := stats || res::jsonb;
        END LOOP;
    END IF;
    RETURN QUERY
    SELECT to_regclass(e->>'rel'), sum((e->>'checked')::bigint)::bigint, sum((e->>'hidden')::bigint)::bigint,
           sum((e->>'refused')::bigint)::bigint, max((e->>'last')::timestamptz), count(*)::integer
      FROM jsonb_array_elements(stats) e
     WHERE to_regclass(e->>'rel') IS NOT NULL
     GROUP BY 1;
END
$$;

CREATE VIEW tenancy.cluster_shadow_stats AS
    SELECT relation, rows_checked, rows_hidden, writes_refused, last_divergence, nodes
      FROM tenancy.read_cluster_shadow_stats();
COMMENT ON VIEW tenancy.cluster_shadow_stats IS 'tenancy.shadow_stats of every node of a Citus cluster (this node and its workers), summed per table: distributed tables count on the workers that hold their shards';

CREATE FUNCTION tenancy.reset_cluster_shadow_stats(tbl regclass DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean;
    res text;
    host text;
    port integer;
BEGIN
    PERFORM tenancy.reset_shadow_stats(tbl);
    IF to_regclass('pg_catalog.pg_dist_node') IS NOT NULL THEN
        -- plpgsql_check: dynamic: Citus's function is absent where Citus is not installed; the name goes through %I/%L.
        FOR host, port, ok, res IN EXECUTE format('SELECT nodename, nodeport, success, result FROM pg_catalog.%I($1)',
                                                  'run_command_on_workers') USING
                    format('SELECT tenancy.reset_shadow_stats(%s)',
                           CASE WHEN tbl IS NULL THEN 'NULL'
                                ELSE format('%L::pg_catalog.regclass',
                                            (SELECT format('%I.%I', n.nspname, c.relname)
                                               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                              WHERE c.oid = tbl)) END) LOOP
            IF NOT ok THEN
                RAISE EXCEPTION 'cannot reset the shadow counters of worker %:%', host, port
                    USING ERRCODE = 'external_routine_exception',
                          DETAIL = res;
            END IF;
        END LOOP;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.reset_cluster_shadow_stats(regclass) IS 'reset the shadow counters of a table, or of every table, on this node and every Citus worker';

-- verify()'s null_tenant on a Citus table: rows whose tenant is NULL, at
-- most lim ('ALL' or a number) per shard, at most max_rows in all.
CREATE FUNCTION tenancy.citus_null_tenants(rel regclass, tenant_col name, lim text, max_rows bigint)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT least((tenancy.citus_shard_sums(rel,
                     format('SELECT count(*) FROM (SELECT 1 FROM %%1$s WHERE %s IS NULL LIMIT %s) s',
                            replace(quote_ident(tenant_col), '%', '%%'), lim)))[1], max_rows);
$$;
COMMENT ON FUNCTION tenancy.citus_null_tenants(regclass, name, text, bigint) IS 'verify() check null_tenant on a Citus table: rows without a tenant, counted on each shard';

-- verify()'s cross_tenant_reference on a Citus child table: its references
-- through one foreign key (joincond, with x the child and p the parent)
-- whose tenants differ (cond), counted shard by shard.  Citus allows a
-- foreign key of a distributed table only to a colocated distributed table
-- (then each child shard is joined with the parent shard beside it) or to
-- a reference table (then with the parent's shard on the same node).
CREATE FUNCTION tenancy.citus_cross_tenant_references(child regclass, parent regclass, joincond text,
                                                      cond text, lim text, max_rows bigint)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    colocated boolean;
    refshard text;
    body text := replace(format(' p ON %s WHERE %s LIMIT %s) s', joincond, cond, lim), '%', '%%');
BEGIN
    IF NOT tenancy.rls_citus_distributed(child) OR NOT tenancy.rls_citus_distributed(parent) THEN
        RAISE EXCEPTION 'tables % and % are not both Citus tables', child, parent
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Count the references with an ordinary query.';
    END IF;
    -- plpgsql_check: dynamic: Citus's catalog and functions are absent where Citus is not installed; only names go in, through %I.
    EXECUTE format('SELECT pg_catalog.%I($1, $2)', 'distributed_tables_colocated') INTO colocated USING child, parent;
    IF colocated THEN
        RETURN least((tenancy.citus_shard_sums(child,
                        'SELECT count(*) FROM (SELECT 1 FROM %1$s x JOIN %2$s' || body, parent))[1], max_rows);
    END IF;
    -- plpgsql_check: as above; the shard name is quoted by Citus's shard_name().
    EXECUTE format($f$SELECT pg_catalog.shard_name(d.logicalrelid, s.shardid)
                        FROM pg_catalog.%I d JOIN pg_catalog.%I s USING (logicalrelid)
                       WHERE d.logicalrelid = $1 AND d.partmethod = 'n' AND d.repmodel = 't'$f$,
                   'pg_dist_partition', 'pg_dist_shard')
        INTO refshard USING parent;
    IF refshard IS NULL THEN
        RAISE EXCEPTION 'table % references %, which is neither colocated with it nor a reference table', child, parent
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Citus allows such a foreign key only to a colocated distributed table or a reference table.';
    END IF;
    RETURN least((tenancy.citus_shard_sums(child,
                    'SELECT count(*) FROM (SELECT 1 FROM %1$s x JOIN ' || replace(refshard, '%', '%%') || body))[1],
                 max_rows);
END
$$;
COMMENT ON FUNCTION tenancy.citus_cross_tenant_references(regclass, regclass, text, text, text, bigint) IS 'verify() check cross_tenant_reference on a Citus table: the references of one foreign key between tenants, counted on each shard';

REVOKE ALL ON TABLE tenancy.cluster_shadow_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.read_cluster_shadow_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.reset_cluster_shadow_stats(regclass) FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.cluster_shadow_stats TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.read_cluster_shadow_stats() TO pg_read_all_stats;
-- issue 18: ro-paths (what each path sees, dashboards): src/path_stats.sql and src/report.sql
-- src/path_stats.sql: what each code path sees (C: path_stats.c).  The
-- shadow-mode counts split by path (legacy: no tenant, or a tenant from a
-- default such as a role binding; new: set_tenant(), a token, SET), role and
-- tenant, and a bounded sample of recent divergences with their query ids.

CREATE FUNCTION tenancy.read_path_stats(
    OUT relation regclass, OUT path text, OUT role regrole, OUT xacts bigint,
    OUT reads bigint, OUT rows_read bigint, OUT rows_hidden bigint,
    OUT rows_written bigint, OUT writes_refused bigint, OUT last_divergence timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_path_stats'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.path_stats AS
    SELECT relation, path, role, xacts, reads, rows_read, rows_hidden,
           rows_written, writes_refused, last_divergence
      FROM tenancy.read_path_stats()
     WHERE relation IS NOT NULL;
COMMENT ON VIEW tenancy.path_stats IS 'shadow-mode counts per table, code path (legacy/new) and role of this database (needs shared_preload_libraries)';

CREATE VIEW tenancy.path_activity AS
    SELECT path, xacts, rows_read, rows_hidden, rows_written, writes_refused, last_divergence
      FROM tenancy.read_path_stats()
     WHERE relation IS NULL;
COMMENT ON VIEW tenancy.path_activity IS 'per code path (legacy/new) of this database: transactions, rows read and written, rows enforce mode would hide, writes it would refuse, over the tables in shadow mode (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.read_tenant_path_stats(
    OUT path text, OUT tenant text, OUT xacts bigint, OUT rows_read bigint, OUT rows_hidden bigint, OUT rows_written bigint,
    OUT writes_refused bigint, OUT score bigint, OUT last_divergence timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_tenant_path_stats'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.tenant_path_stats AS
    SELECT path, tenant, xacts, rows_read, rows_hidden, rows_written,
           writes_refused, score, last_divergence
      FROM tenancy.read_tenant_path_stats();
COMMENT ON VIEW tenancy.tenant_path_stats IS 'shadow-mode counts per code path and current tenant (NULL: none) of this database: the tenancy.path_stats_tenants highest scores (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.read_path_divergences(
    OUT seq bigint, OUT at timestamptz, OUT relation regclass, OUT operation text,
    OUT path text, OUT role regrole, OUT tenant text, OUT row_tenant text,
    OUT query_id bigint)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_path_divergences'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.path_divergences AS
    SELECT seq, at, relation, operation, path, role, tenant, row_tenant, query_id
      FROM tenancy.read_path_divergences();
COMMENT ON VIEW tenancy.path_divergences IS 'recent shadow-mode divergences of this database (the first of each statement per table, path, role and tenant), oldest first; query_id as in pg_stat_statements (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.path_stats_dropped(
    OUT rows_dropped bigint, OUT divergences_dropped bigint, OUT tenants_evicted bigint,
    OUT tenant_rows_evicted bigint, OUT tenant_divergences_evicted bigint,
    OUT samples_taken bigint, OUT samples_overwritten bigint)
    AS 'MODULE_PATHNAME', 'tenancy_path_stats_dropped'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.path_stats_dropped() IS 'cluster-wide: what the bounded path counters could not keep (rows and divergences of a full tenancy.path_stats_max hash, tenants evicted with their counts, divergence samples overwritten)';

CREATE FUNCTION tenancy.reset_path_stats() RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_reset_path_stats'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.reset_path_stats() IS 'reset the path counters, tenants and divergence samples of this database, and what path_stats_dropped() shows';

-- Tenant keys and role names: not for PUBLIC.  pg_read_all_stats (and so
-- pg_monitor) reads; resetting is for superusers and whom they grant it.
REVOKE ALL ON TABLE tenancy.path_stats, tenancy.path_activity,
    tenancy.tenant_path_stats, tenancy.path_divergences FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.read_path_stats(), tenancy.read_tenant_path_stats(),
    tenancy.read_path_divergences(), tenancy.path_stats_dropped(),
    tenancy.reset_path_stats() FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.path_stats, tenancy.path_activity,
    tenancy.tenant_path_stats, tenancy.path_divergences TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.read_path_stats(), tenancy.read_tenant_path_stats(),
    tenancy.read_path_divergences(), tenancy.path_stats_dropped() TO pg_read_all_stats;

-- src/report.sql: the migration's state on one screen: a view for the
-- dashboards (monitoring/postgres_exporter.yml) and tenancy.report() for
-- psql users.  Divergences come from the path counters (path_stats.sql).

-- Per registered table: stage, row security mode, rollout, what is left to
-- migrate, the backfill, and the shadow divergences by path.  The rollout
-- column stays NULL until per-tenant rollout records one.
CREATE VIEW tenancy.migration_overview AS
SELECT t.relation,
       t.stage,
       r.mode,
       NULL::text AS rollout,
       s.unmigrated,
       s.total_rows,
       s.percent_migrated,
       s.rate_per_s AS migrated_per_s,
       b.state AS backfill_state,
       b.percent AS backfill_percent,
       b.rows_done AS backfill_rows_done,
       b.rows_per_s AS backfill_rows_per_s,
       coalesce(d.legacy_hidden, 0) AS legacy_rows_hidden,
       coalesce(d.legacy_refused, 0) AS legacy_writes_refused,
       coalesce(d.new_hidden, 0) AS new_rows_hidden,
       coalesce(d.new_refused, 0) AS new_writes_refused,
       GREATEST(t.registered_at, r.enabled_at, c.last_step) AS last_change
  FROM tenancy.tables t
  LEFT JOIN tenancy.rls_tables r ON r.relation OPERATOR(pg_catalog.=) t.relation
  LEFT JOIN tenancy.migration_status s ON s.relation OPERATOR(pg_catalog.=) t.relation
  LEFT JOIN LATERAL (
        SELECT p.state, p.percent, p.rows_done, p.rows_per_s
          FROM tenancy.backfill_progress p
         WHERE p.relation OPERATOR(pg_catalog.=) t.relation
         ORDER BY p.id DESC LIMIT 1) b ON true
  LEFT JOIN LATERAL (
        SELECT max(GREATEST(l.done_at, l.undone_at)) AS last_step
          FROM tenancy.contract_log l
         WHERE l.relation OPERATOR(pg_catalog.=) t.relation) c ON true
  LEFT JOIN LATERAL (
        SELECT sum(p.rows_hidden) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'legacy')::bigint AS legacy_hidden,
               sum(p.writes_refused) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'legacy')::bigint AS legacy_refused,
               sum(p.rows_hidden) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'new')::bigint AS new_hidden,
               sum(p.writes_refused) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'new')::bigint AS new_refused
          FROM tenancy.read_path_stats() p
         WHERE p.relation OPERATOR(pg_catalog.=) t.relation) d ON true;
COMMENT ON VIEW tenancy.migration_overview IS 'per registered table: stage, mode, rollout, unmigrated rows, backfill, shadow divergences by path, last change (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.report()
RETURNS TABLE (relation regclass, stage text, mode text, rollout text,
               unmigrated bigint, backfill text, legacy_divergences bigint,
               new_divergences bigint, last_change timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.relation, o.stage, o.mode, o.rollout, o.unmigrated,
           CASE WHEN o.backfill_state IS NULL THEN NULL
                ELSE o.backfill_state || coalesce(' ' || o.backfill_percent || '%', '') END,
           o.legacy_rows_hidden + o.legacy_writes_refused,
           o.new_rows_hidden + o.new_writes_refused,
           o.last_change
      FROM tenancy.migration_overview o
     ORDER BY o.relation::text COLLATE "C"
$$;
COMMENT ON FUNCTION tenancy.report() IS 'the whole migration on one screen: per table stage, mode, rollout, unmigrated rows, backfill, divergences by path (rows hidden + writes refused), last change';

REVOKE ALL ON TABLE tenancy.migration_overview FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.report() FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.migration_overview TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.report() TO pg_read_all_stats;
-- Why the role may not be retired yet (NULL: it may).
CREATE FUNCTION tenancy.retire_refusal(role regrole, OUT errcode text, OUT message text, OUT detail text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    r tenancy.deprecated_roles;
BEGIN
    SELECT * INTO r FROM tenancy.deprecated_roles d WHERE d.role = role;
    IF r.watched_since IS NULL THEN
        errcode := '55000';
        message := 'retiring a role requires tenancy to be loaded via shared_preload_libraries';
        detail := 'Without it no transaction of the role is counted, so nothing shows that it has stopped.';
    ELSIF r.last_run IS NOT NULL AND r.quiet_for < r.retire_after THEN
        errcode := '55006';
        message := format('role "%s" ran a transaction within tenancy.retire_after', role);
        detail := format('Its last transaction was at %s (%s ago) from application_name "%s"; tenancy.retire_after is %s.',
                         r.last_run, date_trunc('second', r.quiet_for), r.last_application_name, r.retire_after);
    ELSIF r.quiet_for < r.retire_after THEN
        errcode := '55000';
        message := format('role "%s" has not been watched for tenancy.retire_after yet', role);
        detail := format('It has not run since %s (its deprecation or the server''s start, whichever is later), %s ago; tenancy.retire_after is %s.',
                         r.watched_since, date_trunc('second', r.quiet_for), r.retire_after);
    END IF;
END
$$;

-- squawk: ignore require-lock-timeout: each ALTER TABLE runs under lock_timeout when retire_role() runs it; a preview run with \gexec gets it from preview_wrap()
CREATE FUNCTION tenancy.retire_role_sql(role regrole, keep_derived regclass[] DEFAULT '{}') RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    steps text;
    undo text;
    refusal record;
BEGIN
    IF EXISTS (SELECT 1 FROM tenancy.role_deprecations d WHERE d.role = role AND d.retired_at IS NOT NULL) THEN
        RETURN '';
    END IF;
    SELECT string_agg(s.sql || ';', chr(10) ORDER BY s.n), string_agg(s.undo_sql || ';', chr(10) ORDER BY s.n DESC)
      INTO steps, undo
      FROM tenancy.retire_role_steps(role, keep_derived) WITH ORDINALITY s(relation, step, sql, undo_sql, n);
    refusal := tenancy.retire_refusal(role);
    RETURN CASE WHEN refusal.message IS NOT NULL
                THEN tenancy.deprecation_comment('refused now: ' || refusal.message || ' (force => true overrides)') || chr(10)
                ELSE '' END
        || tenancy.preview_wrap(steps) || chr(10)
        || tenancy.deprecation_comment('undo: SELECT tenancy.unretire_role(' || quote_literal(role::text) || '), which runs:' || chr(10) || undo);
END
$$;
COMMENT ON FUNCTION tenancy.retire_role_sql(regrole, regclass[]) IS 'what retire_role() would run, and how to undo it (empty: already retired)';

-- One recorded step, under a short lock_timeout with retries.
CREATE FUNCTION tenancy.deprecation_run(relation regclass, step text, sql text, undo_sql text,
                                        lock_timeout interval, max_attempts integer) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    saved text := current_setting('lock_timeout');
BEGIN
    FOR attempt IN 1 .. max_attempts LOOP
        BEGIN
            PERFORM set_config('lock_timeout', ceil(extract(epoch FROM lock_timeout) * 1000)::text || 'ms', true);
            -- plpgsql_check: VOLATILE: DDL from retire_role_steps()/the log, names through %I/%s of regclass, values through %L.
            EXECUTE sql;
            PERFORM set_config('lock_timeout', saved, true);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = max_attempts THEN
                RAISE EXCEPTION 'could not lock "%" after % attempts', relation, max_attempts
                    USING ERRCODE = 'lock_not_available',
                          DETAIL = format('Step %s did not run; nothing of this call was kept.', step),
                          HINT = 'Long transactions on the table hold it; retry later or raise lock_timeout.';
            END IF;
            PERFORM pg_sleep_for(tenancy.backoff_delay(attempt, '10ms', '2s'));
        END;
    END LOOP;
    IF undo_sql IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN tenancy.log_step(relation, step, sql, undo_sql);
END
$$;

CREATE FUNCTION tenancy.retire_role(role regrole, keep_derived regclass[] DEFAULT '{}', force boolean DEFAULT false,
                                    lock_timeout interval DEFAULT '100ms', max_attempts integer DEFAULT 50)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    s record;
    refusal record;
    ids bigint[] := '{}'::bigint[];
    script text := '';
BEGIN
    IF force IS NULL OR lock_timeout IS NULL OR lock_timeout <= interval '0' OR max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'force must not be null, lock_timeout must be positive and max_attempts at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM tenancy.role_deprecations d WHERE d.role = role AND d.retired_at IS NOT NULL) THEN
        RAISE NOTICE 'role "%" is already retired, nothing to do', role;
        RETURN NULL;
    END IF;
    -- Checks role and keep_derived first.
    PERFORM count(*) FROM tenancy.retire_role_steps(role, keep_derived);
    -- The deprecation row, locked: two retirements of one role serialise.
    PERFORM 1 FROM tenancy.role_deprecations d WHERE d.role = role FOR UPDATE;
    refusal := tenancy.retire_refusal(role);
    IF refusal.message IS NOT NULL THEN
        IF NOT force THEN
            RAISE EXCEPTION '%', refusal.message
                USING ERRCODE = refusal.errcode, DETAIL = refusal.detail,
                      HINT = 'Wait until the role has been quiet for tenancy.retire_after (tenancy.deprecated_roles shows it), or pass force => true (recorded).';
        END IF;
        RAISE WARNING 'retiring role "%" by force: %', role, refusal.message USING DETAIL = refusal.detail;
    END IF;
    FOR s IN SELECT * FROM tenancy.retire_role_steps(role, keep_derived) LOOP
        ids := ids || tenancy.deprecation_run(s.relation, s.step, s.sql, s.undo_sql, lock_timeout, max_attempts);
        script := script || s.sql || ';' || chr(10);
    END LOOP;
    UPDATE tenancy.role_deprecations d SET retire_log = ids, retire_forced = refusal.message IS NOT NULL
     WHERE d.role = role;
    RETURN script;
END
$$;
COMMENT ON FUNCTION tenancy.retire_role(regrole, regclass[], boolean, interval, integer) IS 'retire a deprecated legacy role once it has not run for tenancy.retire_after: unbind it, make its sessions name a tenant, and (last one) drop the implicit defaults; returns the DDL run';

CREATE FUNCTION tenancy.unretire_role(role regrole, lock_timeout interval DEFAULT '100ms', max_attempts integer DEFAULT 50)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    l record;
    ids bigint[];
    script text := '';
BEGIN
    IF role IS NULL OR lock_timeout IS NULL OR lock_timeout <= interval '0' OR max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'role must not be null, lock_timeout must be positive and max_attempts at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT d.retire_log INTO ids FROM tenancy.role_deprecations d
     WHERE d.role = role AND d.retired_at IS NOT NULL FOR UPDATE;
    IF NOT FOUND THEN
        RAISE NOTICE 'role "%" is not retired, nothing to do', role;
        RETURN NULL;
    END IF;
    -- Newest first; a step a table's rollback has undone already is skipped.
    FOR l IN SELECT c.id, c.relation, c.step, c.undo_sql FROM tenancy.contract_log c
              WHERE c.id = ANY (ids) AND c.undone_at IS NULL ORDER BY c.id DESC LOOP
        PERFORM tenancy.deprecation_run(l.relation, 'undo ' || l.step, l.undo_sql, NULL, lock_timeout, max_attempts);
        UPDATE tenancy.contract_log c SET undone_at = now() WHERE c.id = l.id;
        script := script || l.undo_sql || ';' || chr(10);
    END LOOP;
    RETURN script;
END
$$;
COMMENT ON FUNCTION tenancy.unretire_role(regrole, interval, integer) IS 'undo retire_role(): the binding, the defaults and derivations it removed; the role stays deprecated';

REVOKE EXECUTE ON FUNCTION
    tenancy.deprecation_activity(),
    tenancy.deprecate_role_sql(regrole),
    tenancy.deprecate_role(regrole),
    tenancy.undeprecate_role(regrole),
    tenancy.retire_role_steps(regrole, regclass[]),
    tenancy.retire_refusal(regrole),
    tenancy.retire_role_sql(regrole, regclass[]),
    tenancy.deprecation_run(regclass, text, text, text, interval, integer),
    tenancy.retire_role(regrole, regclass[], boolean, interval, integer),
    tenancy.unretire_role(regrole, interval, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.deprecation_activity() TO pg_read_all_stats;

-- issue 19: erase (src/erase.sql, all new objects)

------------------------------------------------------------------------------
-- Erasing a tenant.  CALL tenancy.erase_tenant(tenant) deletes the tenant's
-- rows from every registered table, children before parents (the foreign
-- keys between registered tables), in small batches each committed on its
-- own, sized by the backfill's batch engine (tenancy.backfill_next_size():
-- a target duration per batch, backing off on lock timeouts), throttled by
-- a pause between batches, with its progress in tenancy.tenant_erasures /
-- tenancy.erase_progress.  Interrupted, it resumes where it stopped (a
-- batch deletes whatever of the tenant's rows are left).  It ends with a
-- count check: no row of the tenant may remain.  Refused while the tenant
-- is active (suspend it first: nothing new arrives through set_tenant()),
-- for the implicit tenant, and while a publication's row filter on one of
-- the tables names the tenant (a move in progress: the deletes would
-- replicate and empty the target).
------------------------------------------------------------------------------

-- The erasures: when and by whom, recorded with the tenant registry.
CREATE TABLE tenancy.tenant_erasures (
    tenant        text PRIMARY KEY,
    slug          text NOT NULL,
    state         text NOT NULL
                  CONSTRAINT tenant_erasures_state_check
                  CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'done'])),
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_by    name NOT NULL DEFAULT session_user,
    resumed_at    timestamptz,
    finished_at   timestamptz,
    finished_by   name,
    pid           integer,
    rows_deleted  bigint NOT NULL DEFAULT 0,
    batches       bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE tenancy.tenant_erasures IS 'tenants erased with erase_tenant(): state, who started and finished it, when, rows deleted';
REVOKE ALL ON TABLE tenancy.tenant_erasures FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_erasures', '');

CREATE TABLE tenancy.tenant_erasure_tables (
    tenant        text NOT NULL REFERENCES tenancy.tenant_erasures (tenant) ON DELETE CASCADE,
    relation      regclass NOT NULL,
    ord           integer NOT NULL,
    rows_deleted  bigint NOT NULL DEFAULT 0,
    batches       bigint NOT NULL DEFAULT 0,
    batch_size    integer,
    last_batch_ms numeric,
    done_at       timestamptz,
    PRIMARY KEY (tenant, relation)
);
COMMENT ON TABLE tenancy.tenant_erasure_tables IS 'per table of an erasure: its place in the order, rows deleted, when it was done';
REVOKE ALL ON TABLE tenancy.tenant_erasure_tables FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_erasure_tables', '');

CREATE VIEW tenancy.erase_progress AS
SELECT e.tenant, e.slug, e.state, t.ord, t.relation, t.rows_deleted, t.batches, t.batch_size,
       t.last_batch_ms, t.done_at, e.started_at, e.started_by, e.finished_at, e.finished_by,
       e.state OPERATOR(pg_catalog.=) 'running'
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid OPERATOR(pg_catalog.=) e.pid)
           AS interrupted
  FROM tenancy.tenant_erasures e
  JOIN tenancy.tenant_erasure_tables t ON t.tenant OPERATOR(pg_catalog.=) e.tenant;
COMMENT ON VIEW tenancy.erase_progress IS 'erasures per table, in erase order; interrupted: left running by a backend that is gone';
REVOKE ALL ON TABLE tenancy.erase_progress FROM PUBLIC;

-- Registered tables (not partitions, not shared), children before parents:
-- a table's level is the longest chain of registered tables referencing it.
CREATE FUNCTION tenancy.erase_order()
RETURNS TABLE (ord integer, relation regclass, column_name name)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE t AS (
        SELECT r.relation, r.column_name FROM tenancy.tables r
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.shared_tables s WHERE s.relation = r.relation)
    ), edge AS (          -- child references parent, both registered
        SELECT DISTINCT c.conrelid AS child, c.confrelid AS parent
          FROM pg_constraint c
         WHERE c.contype = 'f' AND c.conrelid <> c.confrelid AND c.conparentid = 0
           AND c.conrelid IN (SELECT t.relation FROM t) AND c.confrelid IN (SELECT t.relation FROM t)
    ), lvl (rel, level) AS (
        SELECT t.relation::oid, 0 FROM t
        UNION ALL
        SELECT e.parent, l.level + 1 FROM lvl l JOIN edge e ON e.child = l.rel
         WHERE l.level < (SELECT count(*) FROM t)      -- a cycle stops here
    )
    SELECT (row_number() OVER (ORDER BY max(l.level), t.relation::text))::integer, t.relation, t.column_name
      FROM t JOIN lvl l ON l.rel = t.relation
     GROUP BY t.relation, t.column_name
     ORDER BY 1;
$$;
COMMENT ON FUNCTION tenancy.erase_order() IS 'registered tables in the order erase_tenant() deletes from them: children before parents';

-- Publications whose row filter on a registered table (or a partition of
-- one) names the tenant's key: a move of that tenant (issue 19) in
-- progress.  Read from the catalog alone, so it holds without the move's
-- own bookkeeping.
CREATE FUNCTION tenancy.erase_blockers(tenant text)
RETURNS TABLE (publication name, relation regclass, row_filter text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.pubname, pr.prrelid::regclass, pg_get_expr(pr.prqual, pr.prrelid)
      FROM pg_publication_rel pr
      JOIN pg_publication p ON p.oid = pr.prpubid
     WHERE pr.prqual IS NOT NULL
       AND strpos(pg_get_expr(pr.prqual, pr.prrelid), tenancy.tenant_key(tenant)) > 0
       AND (pr.prrelid IN (SELECT t.relation FROM tenancy.tables t)
            OR pr.prrelid IN (SELECT a.relid FROM tenancy.tables t,
                                     LATERAL pg_partition_tree(t.relation) a WHERE a.level > 0))
     ORDER BY 1, 2::text;
$$;
COMMENT ON FUNCTION tenancy.erase_blockers(text) IS 'publications whose row filter names the tenant: erase_tenant() refuses while any exists';

-- One batch's statement for a table that holds rows (a leaf: partitioned
-- tables are erased partition by partition): deletes at most $2 of the
-- tenant's rows ($1), found first (by the tenant column's index, where the
-- contract phase built one), then deleted by a TID scan.
CREATE FUNCTION tenancy.erase_batch_sql(rel regclass, column_name name) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('DELETE FROM ONLY %1$s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
                  'SELECT t.ctid FROM ONLY %1$s t WHERE t.%2$I OPERATOR(pg_catalog.=) CAST($1 AS %3$s) LIMIT $2))',
                  rel, column_name, tenancy.type_sql(tenancy.key_type()));
$$;

-- The tables that hold a registered table's rows: itself, or the leaf
-- partitions of a partitioned one.
CREATE FUNCTION tenancy.erase_leaves(rel regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.relid FROM (
        SELECT p.relid::regclass AS relid, p.level FROM pg_partition_tree(rel) p WHERE p.isleaf
        UNION ALL
        SELECT rel, 0 WHERE NOT EXISTS (SELECT 1 FROM pg_partition_tree(rel))) x
     ORDER BY x.level, x.relid::text;
$$;

-- The tenant's rows left in a table.
CREATE FUNCTION tenancy.erase_remaining(rel regclass, column_name name, k text) RETURNS bigint
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (tenancy.table_query(rel, NULL,
                format('SELECT count(*) FROM %s t WHERE t.%I OPERATOR(pg_catalog.=) CAST($1 AS %s)',
                       rel, column_name, tenancy.type_sql(tenancy.key_type())), k))[1]::bigint;
$$;

-- Checks of erase_tenant(): the tenant's key, or an error.
CREATE FUNCTION tenancy.erase_check(tenant text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text;
    t record;
    b record;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    k := tenancy.tenant_key(tenant);
    SELECT r.status, r.is_implicit, r.slug INTO t FROM tenancy.tenants r WHERE r.id::text = k;
    IF t.is_implicit THEN
        RAISE EXCEPTION 'tenant "%" is the implicit tenant', t.slug
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The implicit tenant owns the single-tenant data and the legacy path''s writes.',
                  HINT = 'Make another tenant the implicit one first (tenancy.set_implicit_tenant()).';
    END IF;
    IF t.status <> 'suspended' THEN
        RAISE EXCEPTION 'tenant "%" is %', t.slug, t.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Erasing an active tenant would race with its new writes.',
                  HINT = format('Suspend it first: SELECT tenancy.suspend_tenant(%L);', t.slug);
    END IF;
    SELECT * INTO b FROM tenancy.erase_blockers(k) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'publication "%" replicates tenant "%"', b.publication, t.slug
            USING ERRCODE = 'object_in_use',
                  DETAIL = format('Its row filter on %s is %s: the deletes would replicate and empty the tenant''s copy.',
                                  b.relation, b.row_filter),
                  HINT = 'Finish or roll back the move (drop the subscription and the publication) first.';
    END IF;
    RETURN k;
END
$$;

CREATE FUNCTION tenancy.erase_tenant_sql(tenant text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text := tenancy.erase_check(tenant);
    t record;
    out text := format('-- erase tenant %s: each table in turn, in batches of at most $2 rows, each committed', k);
BEGIN
    FOR t IN SELECT o.ord, o.relation, o.column_name, l.leaf
               FROM tenancy.erase_order() o, LATERAL tenancy.erase_leaves(o.relation) WITH ORDINALITY l(leaf, n)
              ORDER BY o.ord, l.n LOOP
        out := out || chr(10) || format('-- %s. %s (%s rows now)', t.ord, t.leaf::regclass,
                                        tenancy.erase_remaining(t.leaf, t.column_name, k))
            || chr(10) || tenancy.erase_batch_sql(t.leaf, t.column_name) || ';';
    END LOOP;
    RETURN out || chr(10) || '-- undo: none (restore the tenant from a backup or an export: scripts/tenancy-export)';
END
$$;
COMMENT ON FUNCTION tenancy.erase_tenant_sql(text) IS 'what erase_tenant() would do: the tables in order with the tenant''s row counts and the batch statement';

-- squawk: ignore prefer-robust-stmts: a batch deletes whatever of the tenant's rows are left: a rerun resumes
CREATE PROCEDURE tenancy.erase_tenant(tenant text, batch_size integer DEFAULT 1000,
                                      min_batch_size integer DEFAULT 10, max_batch_size integer DEFAULT 10000,
                                      batch_time interval DEFAULT '200ms', pause interval DEFAULT '0',
                                      lock_timeout interval DEFAULT '100ms', max_retries integer DEFAULT 50,
                                      max_batches integer DEFAULT NULL)
-- No SET clause (a procedure with one cannot COMMIT): the search_path is
-- pinned at the start and again after each COMMIT, which ends it.
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    k text;
    slug text;
    t record;
    n integer;
    per_row numeric;
    nx record;
    leaf regclass;
    deleted bigint;
    t0 timestamptz;
    ms numeric;
    failures integer;
    done_batches integer := 0;
    remaining bigint;
    other integer;
    stmt text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'tenancy.erase_tenant() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  DETAIL = 'It commits after each batch.',
                  HINT = 'CALL it on its own, outside BEGIN ... COMMIT.';
    END IF;
    IF batch_size IS NULL OR min_batch_size IS NULL OR max_batch_size IS NULL
       OR NOT (1 <= min_batch_size AND min_batch_size <= batch_size AND batch_size <= max_batch_size)
       OR batch_time IS NULL OR batch_time <= interval '0' OR pause IS NULL OR pause < interval '0'
       OR lock_timeout IS NULL OR lock_timeout <= interval '0' OR max_retries IS NULL OR max_retries < 0
       OR max_batches < 1 THEN
        RAISE EXCEPTION 'invalid erase options'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Need 1 <= min_batch_size <= batch_size <= max_batch_size, positive batch_time and lock_timeout, pause >= 0, max_retries >= 0, max_batches NULL or >= 1.';
    END IF;
    k := tenancy.erase_check(tenant);
    slug := (SELECT r.slug FROM tenancy.tenants r WHERE r.id::text = k);
    -- One erasure of a tenant at a time: a running one whose backend lives.
    SELECT e.pid INTO other FROM tenancy.tenant_erasures e
     WHERE e.tenant = k AND e.state = 'running' AND e.pid <> pg_backend_pid()
       AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = e.pid)
       FOR UPDATE;
    IF FOUND THEN
        RAISE EXCEPTION 'tenant "%" is being erased by process %', slug, other
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (tenancy.erase_progress), or stop it with pg_cancel_backend() and CALL again to resume.';
    END IF;
    INSERT INTO tenancy.tenant_erasures AS e (tenant, slug, state, pid)
    VALUES (k, slug, 'running', pg_backend_pid())
    ON CONFLICT ON CONSTRAINT tenant_erasures_pkey DO UPDATE
       SET state = 'running', pid = pg_backend_pid(), resumed_at = now(), finished_at = NULL, finished_by = NULL;
    INSERT INTO tenancy.tenant_erasure_tables (tenant, relation, ord)
    SELECT k, o.relation, o.ord FROM tenancy.erase_order() o
    ON CONFLICT ON CONSTRAINT tenant_erasure_tables_pkey DO UPDATE SET ord = excluded.ord;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    FOR t IN SELECT o.ord, o.relation, o.column_name, et.batch_size
               FROM tenancy.erase_order() o
               JOIN tenancy.tenant_erasure_tables et ON et.tenant = k AND et.relation = o.relation
              ORDER BY o.ord LOOP
        n := coalesce(t.batch_size, batch_size);
        SELECT n AS next_batch, NULL::numeric AS next_per_row, NULL::interval AS sleep INTO nx;
        per_row := NULL;
        failures := 0;
        FOR leaf IN SELECT l FROM tenancy.erase_leaves(t.relation) l LOOP
        stmt := tenancy.erase_batch_sql(leaf, t.column_name);
        LOOP
            IF max_batches IS NOT NULL AND done_batches >= max_batches THEN
                UPDATE tenancy.tenant_erasures e SET pid = NULL WHERE e.tenant = k;
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                RAISE NOTICE 'erase of tenant "%" stopped after % batches at table %', slug, done_batches, leaf
                    USING HINT = 'CALL tenancy.erase_tenant() again to resume.';
                RETURN;
            END IF;
            t0 := clock_timestamp();
            deleted := NULL;
            BEGIN
                PERFORM set_config('lock_timeout', ceil(extract(epoch FROM lock_timeout) * 1000)::text || 'ms', true);
                deleted := tenancy.table_exec(leaf, NULL, stmt, k, n);
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                failures := failures + 1;
                IF failures > max_retries THEN
                    RAISE EXCEPTION 'could not lock "%" in % attempts', leaf, failures
                        USING ERRCODE = 'lock_not_available',
                              DETAIL = 'The batches before are committed.',
                              HINT = 'CALL tenancy.erase_tenant() again when the table is less busy: it resumes.';
                END IF;
            END;
            ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
            IF deleted IS NULL THEN
                SELECT * INTO nx FROM tenancy.backfill_next_size('retry', n, min_batch_size, max_batch_size,
                                                                  ms, extract(epoch FROM batch_time) * 1000, per_row,
                                                                  failures, false);
                n := nx.next_batch;
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                PERFORM pg_sleep_for(nx.sleep);
                CONTINUE;
            END IF;
            failures := 0;
            done_batches := done_batches + 1;
            IF deleted > 0 THEN
                SELECT * INTO nx FROM tenancy.backfill_next_size('ok', n, min_batch_size, max_batch_size,
                                                                  ms, extract(epoch FROM batch_time) * 1000, per_row,
                                                                  0, false);
                per_row := nx.next_per_row;
            END IF;
            UPDATE tenancy.tenant_erasure_tables et
               SET rows_deleted = et.rows_deleted + deleted, batches = et.batches + 1,
                   batch_size = CASE WHEN deleted > 0 THEN nx.next_batch ELSE et.batch_size END,
                   last_batch_ms = round(ms, 1)
             WHERE et.tenant = k AND et.relation = t.relation;
            UPDATE tenancy.tenant_erasures e
               SET rows_deleted = e.rows_deleted + deleted, batches = e.batches + 1
             WHERE e.tenant = k;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            EXIT WHEN deleted < n;
            IF deleted > 0 THEN
                n := nx.next_batch;
            END IF;
            IF pause > interval '0' THEN
                PERFORM pg_sleep_for(pause);
            END IF;
        END LOOP;
        END LOOP;
        UPDATE tenancy.tenant_erasure_tables et SET done_at = now()
         WHERE et.tenant = k AND et.relation = t.relation AND et.done_at IS NULL;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END LOOP;

    -- The count check: nothing of the tenant may remain in any table.
    FOR t IN SELECT * FROM tenancy.erase_order() LOOP
        remaining := tenancy.erase_remaining(t.relation, t.column_name, k);
        IF remaining > 0 THEN
            UPDATE tenancy.tenant_erasures e SET pid = NULL WHERE e.tenant = k;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            RAISE EXCEPTION '% rows of tenant "%" remain in %', remaining, slug, t.relation
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'They were written while the erasure ran (a bound role or a session-level tenant, which suspension does not stop).',
                      HINT = 'Stop those writers and CALL tenancy.erase_tenant() again.';
        END IF;
    END LOOP;
    UPDATE tenancy.tenant_erasures e
       SET state = 'done', pid = NULL, finished_at = now(), finished_by = session_user
     WHERE e.tenant = k;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
END
$$;
COMMENT ON PROCEDURE tenancy.erase_tenant(text, integer, integer, integer, interval, interval, interval, integer, integer)
    IS 'delete a suspended tenant''s rows from every registered table, children first, in committed batches; resumable; ends with a count check';

-- Per registered table: the tenant's rows and a checksum of them (md5 of
-- the rows' text, in the text's order), to compare two copies (an export
-- loaded elsewhere, a moved tenant).  As the table owner.
CREATE FUNCTION tenancy.tenant_checksums(tenant text)
RETURNS TABLE (relation regclass, row_count bigint, checksum text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text := tenancy.tenant_key(tenant);
    t record;
    r text[];
BEGIN
    FOR t IN SELECT o.relation, o.column_name FROM tenancy.erase_order() o ORDER BY o.relation::text LOOP
        r := tenancy.table_query(t.relation, NULL,
                 format('SELECT count(*), md5(coalesce(string_agg(x.r, chr(10) ORDER BY x.r COLLATE "C"), '''')) '
                        'FROM (SELECT t::text AS r FROM %s t WHERE t.%I OPERATOR(pg_catalog.=) CAST($1 AS %s)) x',
                        t.relation, t.column_name, tenancy.type_sql(tenancy.key_type())), k);
        relation := t.relation;
        row_count := r[1]::bigint;
        checksum := r[2];
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.tenant_checksums(text) IS 'per registered table: the tenant''s row count and an md5 of its rows, to compare two copies';

REVOKE EXECUTE ON FUNCTION
    tenancy.erase_order(),
    tenancy.erase_blockers(text),
    tenancy.erase_batch_sql(regclass, name),
    tenancy.erase_leaves(regclass),
    tenancy.erase_remaining(regclass, name, text),
    tenancy.erase_check(text),
    tenancy.erase_tenant_sql(text),
    tenancy.tenant_checksums(text)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE
    tenancy.erase_tenant(text, integer, integer, integer, interval, interval, interval, integer, integer)
FROM PUBLIC;
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
