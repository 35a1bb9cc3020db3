-- src/deprecation.sql: retiring the legacy path: deprecate a bound legacy role, watch it run, retire it (C: deprecation.c).

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
        || chr(10) || tenancy.sql_comment(format('undo: SELECT tenancy.undeprecate_role(%L);', role::text));
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
                THEN tenancy.sql_comment('refused now: ' || refusal.message || ' (force => true overrides)') || chr(10)
                ELSE '' END
        || tenancy.preview_wrap(steps) || chr(10)
        || tenancy.sql_comment('undo: SELECT tenancy.unretire_role(' || quote_literal(role::text) || '), which runs:' || chr(10) || undo);
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
