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
