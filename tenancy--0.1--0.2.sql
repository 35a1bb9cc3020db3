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

-- issue 18: per-tenant rollout
-- The rollout's objects (src/rollout.sql).

------------------------------------------------------------------------------
-- A table under tenancy row level security has one mode (tenancy.rls_tables,
-- the base mode).  A rollout overrides it for some tenants: an explicit
-- list (tenancy.rollout_tenants), and a percentage of tenants chosen by the
-- bucket of their key (tenancy.rollout_bucket()), which get the percentage's
-- mode.  The policy of such a table holds markers,
-- tenancy.rollout_mode_is(root, mode), which the planner replaces by the
-- answer for the tenant current when the query is planned (rollout.c): an
-- enforced tenant gets the plain equality policy.  Every change is recorded
-- in tenancy.rollout_log and can be undone (undo_rollout()).
------------------------------------------------------------------------------

CREATE TABLE tenancy.rollouts (
    relation     regclass PRIMARY KEY,
    buckets      integer NOT NULL
                 CONSTRAINT rollouts_buckets_check CHECK (buckets BETWEEN 0 AND 10000),
    percent_mode text NOT NULL
                 CONSTRAINT rollouts_percent_mode_check
                 CHECK (percent_mode OPERATOR(pg_catalog.=) ANY (ARRAY['migrating', 'shadow', 'enforce'])),
    changed_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.rollouts IS 'per-tenant rollout: the tenants whose bucket (tenancy.rollout_bucket()) is below buckets (percent * 100) run the table in percent_mode';
SELECT pg_catalog.pg_extension_config_dump('tenancy.rollouts', '');
REVOKE ALL ON TABLE tenancy.rollouts FROM PUBLIC;

CREATE TABLE tenancy.rollout_tenants (
    relation   regclass NOT NULL,
    tenant     text NOT NULL,
    mode       text NOT NULL
               CONSTRAINT rollout_tenants_mode_check
               CHECK (mode OPERATOR(pg_catalog.=) ANY (ARRAY['migrating', 'shadow', 'enforce'])),
    changed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (relation, tenant)
);
COMMENT ON TABLE tenancy.rollout_tenants IS 'per-tenant rollout: tenants (canonical keys) whose mode on the table is set explicitly, whatever the percentage';
SELECT pg_catalog.pg_extension_config_dump('tenancy.rollout_tenants', '');
REVOKE ALL ON TABLE tenancy.rollout_tenants FROM PUBLIC;

CREATE TABLE tenancy.rollout_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relation         regclass NOT NULL,
    at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    by_role          name NOT NULL,
    op               text NOT NULL,
    tenants          text[],
    old_modes        text[],
    new_mode         text,
    old_percent      numeric(5,2) NOT NULL,
    old_percent_mode text,
    new_percent      numeric(5,2) NOT NULL,
    new_percent_mode text,
    undoes           bigint,
    undone_by        bigint
);
CREATE INDEX rollout_log_relation ON tenancy.rollout_log (relation, id);
COMMENT ON TABLE tenancy.rollout_log IS 'every rollout change: who, when, the tenants and their modes before, the percentage before and after; undo_rollout() reverts the latest one not undone';
SELECT pg_catalog.pg_extension_config_dump('tenancy.rollout_log', '');
REVOKE ALL ON TABLE tenancy.rollout_log FROM PUBLIC;

-- The marker and what the planner folds it into (rollout.c).
CREATE FUNCTION tenancy.rollout_mode_is(tbl regclass, mode text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_mode_is'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_mode_is(regclass, text) IS 'does the current tenant run the table in this mode (its rollout, else the table''s mode)? the policy marker the planner folds';
CREATE FUNCTION tenancy.rollout_const_true() RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_const_true'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_const_true() IS 'true: what the planner folds a marker into';
CREATE FUNCTION tenancy.rollout_const_false() RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_const_false'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_const_false() IS 'false: what the planner folds a marker into';

CREATE FUNCTION tenancy.rollout_bucket(tenant text) RETURNS integer
    AS 'MODULE_PATHNAME', 'tenancy_rollout_bucket'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_bucket(text) IS 'bucket 0..9999 of a canonical tenant key: first 32 bits of md5(key) mod 10000; a tenant is in a percentage p when its bucket < p * 100';

CREATE FUNCTION tenancy.rollout_current_mode(tbl regclass) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_rollout_current_mode'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_current_mode(regclass) IS 'the mode the table runs in for the current tenant';

CREATE FUNCTION tenancy.rollout_mode_of(tbl regclass, key text) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_rollout_mode_of'
    LANGUAGE C STABLE PARALLEL SAFE;
REVOKE ALL ON FUNCTION tenancy.rollout_mode_of(regclass, text) FROM PUBLIC;

-- The table a rollout is recorded for: the root whose tenancy row level
-- security covers tbl (itself, or a partitioned or parent table above it).
CREATE FUNCTION tenancy.rollout_root(tbl regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE up(relid, level) AS (
        SELECT tbl::oid, 0
        UNION
        SELECT i.inhparent, up.level + 1 FROM up JOIN pg_inherits i ON i.inhrelid = up.relid
    )
    SELECT coalesce((SELECT t.relation FROM up JOIN tenancy.rls_tables t ON t.relation = up.relid AND t.root = t.relation
                      ORDER BY up.level LIMIT 1), tbl);
$$;

-- Has the table a rollout?  Read with catalog scans (rollout.c): the
-- generators run as the table owner, who cannot read the lists.
CREATE FUNCTION tenancy.rollout_active(root regclass) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_active'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_active(regclass) IS 'has the table a per-tenant rollout (listed tenants, or a percentage)?';

-- Can some tenant run the table in this mode, with base mode base?
CREATE FUNCTION tenancy.rollout_may_be(root regclass, mode text, base text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_may_be'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_may_be(regclass, text, text) IS 'can some tenant run the table in this mode (the table''s mode base, the list, the percentage)?';

-- Are migrating mode's policies expected on the table (verify())?
CREATE FUNCTION tenancy.rollout_legacy_expected(root regclass, base text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN tenancy.rollout_active(root) THEN tenancy.rollout_may_be(root, 'migrating', base)
                ELSE base = 'migrating' END;
$$;

-- The policy's USING and WITH CHECK on a table with a rollout
-- (tenancy.rls_quals() asks): equality, unless some tenant is in shadow
-- mode, then a CASE on the marker.
CREATE FUNCTION tenancy.rollout_quals(tbl regclass, column_name name, mode text,
                                      OUT using_expr text, OUT check_expr text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    root regclass := tenancy.rollout_root(tbl);
    rootq text := (tenancy.rls_check(root, column_name, mode)).qualified;
    col text := quote_ident(column_name);
    eq text := format('%s OPERATOR(pg_catalog.=) %s', col, chk.accessor);
BEGIN
    IF tenancy.rollout_may_be(root, 'shadow', mode) THEN
        PERFORM tenancy.shadow_require_preload();
        using_expr := format('CASE WHEN tenancy.rollout_mode_is(%L::regclass, %L) THEN tenancy.shadow_read(%L::regclass, %s) ELSE %s END',
                             rootq, 'shadow', chk.qualified, col, eq);
        check_expr := format('CASE WHEN tenancy.rollout_mode_is(%L::regclass, %L) THEN tenancy.shadow_write(%L::regclass, %s) ELSE %s END',
                             rootq, 'shadow', chk.qualified, col, eq);
    ELSE
        using_expr := eq;
        check_expr := eq;
    END IF;
END
$$;

-- Migrating mode's policies on a table with a rollout: for the tenants in
-- migrating mode only (tenancy.rls_legacy_stmts() asks).
CREATE FUNCTION tenancy.rollout_legacy_stmts(qualified text, column_name name, roles text, mode text)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    root regclass := tenancy.rollout_root(qualified::regclass);
    m text;
BEGIN
    IF NOT tenancy.rollout_may_be(root, 'migrating', mode) THEN
        RETURN '{}'::text[];
    END IF;
    m := format('tenancy.rollout_mode_is(%L::regclass, %L)', (tenancy.rls_check(root, column_name, mode)).qualified, 'migrating');
    RETURN ARRAY[
        format('CREATE POLICY tenancy_policy_legacy_read ON %s AS PERMISSIVE FOR SELECT TO %s USING (%I IS NULL AND %s)',
               qualified, roles, column_name, m),
        format('CREATE POLICY tenancy_policy_legacy_update ON %s AS PERMISSIVE FOR UPDATE TO %s USING (%I IS NULL AND %s AND (SELECT tenancy.is_implicit_tenant())) WITH CHECK (%I IS NULL AND %s AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name, m, column_name, m),
        format('CREATE POLICY tenancy_policy_legacy_delete ON %s AS PERMISSIVE FOR DELETE TO %s USING (%I IS NULL AND %s AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name, m)];
END
$$;

-- Forget the rollout of a table (disable_rls()), or of dropped tables (NULL);
-- run by tenancy.rls_record_internal() as the extension owner.
CREATE FUNCTION tenancy.rollout_forget(tbl regclass) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM tenancy.rollout_tenants t
     WHERE t.relation = tbl OR (tbl IS NULL AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation));
    DELETE FROM tenancy.rollouts t
     WHERE t.relation = tbl OR (tbl IS NULL AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation));
$$;
REVOKE ALL ON FUNCTION tenancy.rollout_forget(regclass) FROM PUBLIC;

-- Bookkeeping, run as the extension owner by tenancy.rollout_record() once
-- it has checked that the caller owns the table.
CREATE FUNCTION tenancy.rollout_record_internal(op text, tbl regclass, tenants text[], mode text,
                                                percent numeric, undo_id bigint, by_role name)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keys text[];
    olds text[];
    cur tenancy.rollouts;
    old_pct numeric(5,2);
    new_pct numeric(5,2);
    new_pmode text;
    e tenancy.rollout_log;
    new_id bigint;
BEGIN
    -- Rows left behind by dropped tables must not claim a reused OID.
    DELETE FROM tenancy.rollout_tenants t WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);
    DELETE FROM tenancy.rollouts t WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);
    PERFORM tenancy.rls_root_row(tbl);     -- 42704 unless covered, 55000 for a partition
    SELECT * INTO cur FROM tenancy.rollouts r WHERE r.relation = tbl;
    old_pct := coalesce(cur.buckets, 0) / 100.0;
    new_pct := old_pct;
    new_pmode := cur.percent_mode;

    IF op = 'tenants' THEN
        IF tenants IS NULL OR cardinality(tenants) = 0 OR array_position(tenants, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'tenants must be a non-empty array without NULL'
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
        IF mode IS NOT NULL AND mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
            RAISE EXCEPTION 'unknown row level security mode "%"', mode
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The modes are shadow, migrating and enforce; NULL puts the tenants back on the percentage and the table''s mode.';
        END IF;
        SELECT array_agg(DISTINCT tenancy.tenant_key(u.t) ORDER BY tenancy.tenant_key(u.t)) INTO keys FROM unnest(tenants) u(t);
        SELECT array_agg(rt.mode ORDER BY k.ord) INTO olds
          FROM unnest(keys) WITH ORDINALITY k(key, ord)
          LEFT JOIN tenancy.rollout_tenants rt ON rt.relation = tbl AND rt.tenant = k.key;
        IF mode IS NULL THEN
            DELETE FROM tenancy.rollout_tenants rt WHERE rt.relation = tbl AND rt.tenant = ANY (keys);
        ELSE
            INSERT INTO tenancy.rollout_tenants AS rt (relation, tenant, mode)
            SELECT tbl, k, mode FROM unnest(keys) k
            ON CONFLICT (relation, tenant) DO UPDATE SET mode = EXCLUDED.mode, changed_at = pg_catalog.now();
        END IF;
        INSERT INTO tenancy.rollout_log (relation, by_role, op, tenants, old_modes, new_mode,
                                         old_percent, old_percent_mode, new_percent, new_percent_mode)
        VALUES (tbl, by_role, op, keys, olds, mode, old_pct, cur.percent_mode, new_pct, new_pmode);
    ELSIF op = 'percent' THEN
        IF percent IS NULL OR percent < 0 OR percent > 100 OR round(percent, 2) <> percent THEN
            RAISE EXCEPTION 'percent must be between 0 and 100, with at most two decimals, not %', coalesce(percent::text, 'NULL')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF mode IS NULL OR mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
            RAISE EXCEPTION 'unknown row level security mode "%"', coalesce(mode, 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The modes are shadow, migrating and enforce.';
        END IF;
        new_pct := percent;
        new_pmode := mode;
        IF percent = 0 THEN
            DELETE FROM tenancy.rollouts r WHERE r.relation = tbl;
        ELSE
            INSERT INTO tenancy.rollouts AS r (relation, buckets, percent_mode)
            VALUES (tbl, (percent * 100)::integer, mode)
            ON CONFLICT (relation) DO UPDATE SET buckets = EXCLUDED.buckets, percent_mode = EXCLUDED.percent_mode,
                                                 changed_at = pg_catalog.now();
        END IF;
        INSERT INTO tenancy.rollout_log (relation, by_role, op, old_percent, old_percent_mode, new_percent, new_percent_mode)
        VALUES (tbl, by_role, op, old_pct, cur.percent_mode, new_pct, new_pmode);
    ELSIF op = 'clear' THEN
        SELECT array_agg(rt.tenant ORDER BY rt.tenant), array_agg(rt.mode ORDER BY rt.tenant) INTO keys, olds
          FROM tenancy.rollout_tenants rt WHERE rt.relation = tbl;
        DELETE FROM tenancy.rollout_tenants rt WHERE rt.relation = tbl;
        DELETE FROM tenancy.rollouts r WHERE r.relation = tbl;
        INSERT INTO tenancy.rollout_log (relation, by_role, op, tenants, old_modes, old_percent, old_percent_mode,
                                         new_percent, new_percent_mode)
        VALUES (tbl, by_role, op, keys, olds, old_pct, cur.percent_mode, 0, NULL);
    ELSIF op = 'undo' THEN
        SELECT * INTO e FROM tenancy.rollout_log l
         WHERE l.relation = tbl AND l.op <> 'undo' AND l.undone_by IS NULL
           AND (undo_id IS NULL OR l.id = undo_id)
         ORDER BY l.id DESC LIMIT 1;
        IF NOT FOUND OR (undo_id IS NOT NULL AND EXISTS (SELECT 1 FROM tenancy.rollout_log l
                                                         WHERE l.relation = tbl AND l.op <> 'undo'
                                                           AND l.undone_by IS NULL AND l.id > undo_id)) THEN
            RAISE EXCEPTION 'table % has no rollout change to undo%', tbl,
                    CASE WHEN undo_id IS NOT NULL THEN format(' with id %s (or a later change is not undone)', undo_id) ELSE '' END
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'tenancy.rollout_log lists the changes; undo_rollout() reverts the latest one not undone.';
        END IF;
        SELECT array_agg(rt.mode ORDER BY k.ord) INTO olds
          FROM unnest(e.tenants) WITH ORDINALITY k(key, ord)
          LEFT JOIN tenancy.rollout_tenants rt ON rt.relation = tbl AND rt.tenant = k.key;
        FOR i IN 1 .. coalesce(cardinality(e.tenants), 0) LOOP
            IF e.old_modes[i] IS NULL THEN
                DELETE FROM tenancy.rollout_tenants rt WHERE rt.relation = tbl AND rt.tenant = e.tenants[i];
            ELSE
                INSERT INTO tenancy.rollout_tenants AS rt (relation, tenant, mode)
                VALUES (tbl, e.tenants[i], e.old_modes[i])
                ON CONFLICT (relation, tenant) DO UPDATE SET mode = EXCLUDED.mode, changed_at = pg_catalog.now();
            END IF;
        END LOOP;
        IF e.old_percent = 0 THEN
            DELETE FROM tenancy.rollouts r WHERE r.relation = tbl;
        ELSE
            INSERT INTO tenancy.rollouts AS r (relation, buckets, percent_mode)
            VALUES (tbl, (e.old_percent * 100)::integer, e.old_percent_mode)
            ON CONFLICT (relation) DO UPDATE SET buckets = EXCLUDED.buckets, percent_mode = EXCLUDED.percent_mode,
                                                 changed_at = pg_catalog.now();
        END IF;
        INSERT INTO tenancy.rollout_log (relation, by_role, op, tenants, old_modes, old_percent, old_percent_mode,
                                         new_percent, new_percent_mode, undoes)
        VALUES (tbl, by_role, op, e.tenants, olds, old_pct, cur.percent_mode, e.old_percent,
                CASE WHEN e.old_percent > 0 THEN e.old_percent_mode END, e.id)
        RETURNING id INTO new_id;
        UPDATE tenancy.rollout_log l SET undone_by = new_id WHERE l.id = e.id;
    ELSE
        RAISE EXCEPTION 'unknown operation "%"', op USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION tenancy.rollout_record_internal(text, regclass, text[], text, numeric, bigint, name) FROM PUBLIC;

-- Checks that the caller owns the table, then runs rollout_record_internal()
-- as the extension owner and invalidates the table's plans.
CREATE FUNCTION tenancy.rollout_record(op text, tbl regclass, tenants text[] DEFAULT NULL, mode text DEFAULT NULL,
                                       percent numeric DEFAULT NULL, undo_id bigint DEFAULT NULL)
RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_rollout_record'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.rollout_record(text, regclass, text[], text, numeric, bigint) IS 'record a rollout change (tenants, percent, clear, undo) in tenancy.rollouts, rollout_tenants and rollout_log; the caller must own the table';

-- The statements of a change: the record, then the policies as set_mode()
-- makes them for the state after it.  That state is computed by running the
-- record in a subtransaction that is rolled back.
CREATE FUNCTION tenancy.rollout_stmts(tbl regclass, record_stmt text) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r tenancy.rls_tables := tenancy.rls_root_row(tbl);
    stmts text[];
BEGIN
    -- plpgsql_check: VOLATILE: runs the record in a subtransaction, then rolls it back.
    BEGIN
        -- plpgsql_check: built by the rollout *_sql() functions, every value through %L.
        EXECUTE record_stmt;
        stmts := ARRAY[record_stmt] || tenancy.rls_mode_stmts(tbl, r.mode);
        RAISE EXCEPTION 'rolled back' USING ERRCODE = 'TNR01';
    EXCEPTION WHEN SQLSTATE 'TNR01' THEN
        NULL;
    END;
    RETURN stmts;
END
$$;

-- Run the statements under a short lock_timeout (ALTER POLICY locks the
-- table), retrying a few times when the lock is not granted in time.
CREATE FUNCTION tenancy.rollout_run(stmts text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prior text := current_setting('lock_timeout');
    attempt integer := 0;
    s text;
BEGIN
    LOOP
        attempt := attempt + 1;
        BEGIN
            PERFORM set_config('lock_timeout', '100ms', true);
            FOREACH s IN ARRAY stmts LOOP
                -- plpgsql_check: built by rollout_stmts(), every name through %I/%L.
                EXECUTE s;
            END LOOP;
            PERFORM set_config('lock_timeout', prior, true);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM set_config('lock_timeout', prior, true);
            IF attempt >= 5 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05 * attempt);
        END;
    END LOOP;
    RETURN tenancy.rls_script(stmts);
END
$$;

CREATE FUNCTION tenancy.rollout_tenants_stmt(tbl regclass, tenants text[], mode text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keys text[];
BEGIN
    IF tenants IS NULL OR cardinality(tenants) = 0 OR array_position(tenants, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'tenants must be a non-empty array without NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF mode IS NOT NULL AND mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
        RAISE EXCEPTION 'unknown row level security mode "%"', mode
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The modes are shadow, migrating and enforce; NULL puts the tenants back on the percentage and the table''s mode.';
    END IF;
    IF mode = 'shadow' THEN
        PERFORM tenancy.shadow_require_preload();
    END IF;
    -- The tenants as given: rollout_record_internal() resolves them (slugs
    -- and keys) in the registry, which the caller cannot read.
    SELECT array_agg(DISTINCT u.t ORDER BY u.t) INTO keys FROM unnest(tenants) u(t);
    RETURN format('SELECT tenancy.rollout_record(''tenants'', %L::regclass, %L::text[], %L)',
                  (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = tbl), keys, mode);
END
$$;

CREATE FUNCTION tenancy.rollout_percent_stmt(tbl regclass, percent numeric, mode text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF percent IS NULL OR percent < 0 OR percent > 100 OR round(percent, 2) <> percent THEN
        RAISE EXCEPTION 'percent must be between 0 and 100, with at most two decimals, not %', coalesce(percent::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF mode IS NULL OR mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
        RAISE EXCEPTION 'unknown row level security mode "%"', coalesce(mode, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The modes are shadow, migrating and enforce.';
    END IF;
    IF mode = 'shadow' THEN
        PERFORM tenancy.shadow_require_preload();
    END IF;
    RETURN format('SELECT tenancy.rollout_record(''percent'', %L::regclass, NULL, %L, %s)',
                  (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = tbl), mode, percent);
END
$$;

-- clear, or undo (the latest change not undone: rollout_record_internal()
-- finds it, as the caller cannot read the log).
CREATE FUNCTION tenancy.rollout_op_stmt(tbl regclass, op text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('SELECT tenancy.rollout_record(%L, %L::regclass)', op,
                  (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = tbl));
$$;

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog and the rollout (a rerun emits them again); a transaction is the DBA's choice
CREATE FUNCTION tenancy.set_tenant_mode_sql(tbl regclass, tenants text[], mode text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(
        tenancy.rollout_stmts(tbl, tenancy.rollout_tenants_stmt(tenancy.rls_root_row_relation(tbl), tenants, mode))));
$$;
COMMENT ON FUNCTION tenancy.set_tenant_mode_sql(regclass, text[], text) IS 'the statements set_tenant_mode() would run';

CREATE FUNCTION tenancy.set_tenant_mode(tbl regclass, tenants text[], mode text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rollout_run(
        tenancy.rollout_stmts(tbl, tenancy.rollout_tenants_stmt(tenancy.rls_root_row_relation(tbl), tenants, mode)));
$$;
COMMENT ON FUNCTION tenancy.set_tenant_mode(regclass, text[], text) IS 'run the table in this mode for these tenants (NULL: back to the percentage and the table''s mode), in one transaction; recorded; returns the statements it ran';

-- squawk: ignore prefer-robust-stmts: as set_tenant_mode_sql()
CREATE FUNCTION tenancy.set_rollout_percent_sql(tbl regclass, percent numeric, mode text DEFAULT 'enforce') RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(
        tenancy.rollout_stmts(tbl, tenancy.rollout_percent_stmt(tenancy.rls_root_row_relation(tbl), percent, mode))));
$$;
COMMENT ON FUNCTION tenancy.set_rollout_percent_sql(regclass, numeric, text) IS 'the statements set_rollout_percent() would run';

CREATE FUNCTION tenancy.set_rollout_percent(tbl regclass, percent numeric, mode text DEFAULT 'enforce') RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rollout_run(
        tenancy.rollout_stmts(tbl, tenancy.rollout_percent_stmt(tenancy.rls_root_row_relation(tbl), percent, mode)));
$$;
COMMENT ON FUNCTION tenancy.set_rollout_percent(regclass, numeric, text) IS 'run the table in this mode for a stable percentage of tenants (by tenancy.rollout_bucket()); recorded; returns the statements it ran';

-- squawk: ignore prefer-robust-stmts: as set_tenant_mode_sql()
CREATE FUNCTION tenancy.clear_rollout_sql(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(
        tenancy.rollout_stmts(tbl, tenancy.rollout_op_stmt(tenancy.rls_root_row_relation(tbl), 'clear'))));
$$;
COMMENT ON FUNCTION tenancy.clear_rollout_sql(regclass) IS 'the statements clear_rollout() would run';

CREATE FUNCTION tenancy.clear_rollout(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rollout_run(
        tenancy.rollout_stmts(tbl, tenancy.rollout_op_stmt(tenancy.rls_root_row_relation(tbl), 'clear')));
$$;
COMMENT ON FUNCTION tenancy.clear_rollout(regclass) IS 'end the rollout: every tenant runs the table in its mode again (the plain policy); recorded, undoable';

-- squawk: ignore prefer-robust-stmts: as set_tenant_mode_sql()
CREATE FUNCTION tenancy.undo_rollout_sql(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(
        tenancy.rollout_stmts(tbl, tenancy.rollout_op_stmt(tenancy.rls_root_row_relation(tbl), 'undo'))));
$$;
COMMENT ON FUNCTION tenancy.undo_rollout_sql(regclass) IS 'the statements undo_rollout() would run';

CREATE FUNCTION tenancy.undo_rollout(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rollout_run(
        tenancy.rollout_stmts(tbl, tenancy.rollout_op_stmt(tenancy.rls_root_row_relation(tbl), 'undo')));
$$;
COMMENT ON FUNCTION tenancy.undo_rollout(regclass) IS 'revert the latest rollout change of the table not undone yet (repeat to go further back); recorded';

-- tbl itself once checked to be a covered root (42704, 55000 otherwise).
CREATE FUNCTION tenancy.rls_root_row_relation(tbl regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (tenancy.rls_root_row(tbl)).relation;
$$;

CREATE FUNCTION tenancy.tenant_mode(tbl regclass, tenant text DEFAULT NULL) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN tenant IS NULL THEN tenancy.rollout_current_mode(tenancy.rls_root_row_relation(tbl))
                ELSE tenancy.rollout_mode_of(tenancy.rls_root_row_relation(tbl), tenancy.tenant_key(tenant)) END;
$$;
COMMENT ON FUNCTION tenancy.tenant_mode(regclass, text) IS 'the mode the table runs in for a tenant (by key or slug; NULL: the current tenant)';

CREATE VIEW tenancy.rollout_state AS
SELECT t.relation, t.mode AS base_mode,
       (coalesce(r.buckets, 0) / 100.0)::numeric(5,2) AS percent,
       CASE WHEN r.buckets > 0 THEN r.percent_mode END AS percent_mode,
       (SELECT count(*) FROM tenancy.rollout_tenants x WHERE x.relation = t.relation AND x.mode = 'enforce') AS enforce_tenants,
       (SELECT count(*) FROM tenancy.rollout_tenants x WHERE x.relation = t.relation AND x.mode = 'shadow') AS shadow_tenants,
       (SELECT count(*) FROM tenancy.rollout_tenants x WHERE x.relation = t.relation AND x.mode = 'migrating') AS migrating_tenants,
       (SELECT max(l.at) FROM tenancy.rollout_log l WHERE l.relation = t.relation) AS last_change
  FROM tenancy.rls_tables t
  LEFT JOIN tenancy.rollouts r ON r.relation = t.relation
 WHERE t.relation = t.root AND tenancy.rollout_active(t.relation);
COMMENT ON VIEW tenancy.rollout_state IS 'tables with a per-tenant rollout: the table''s mode, the percentage and its mode, how many tenants are listed per mode';
REVOKE ALL ON TABLE tenancy.rollout_state FROM PUBLIC;

-- verify() check rollout: one row per table with a rollout.
CREATE FUNCTION tenancy.verify_rollout(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    s record;
BEGIN
    -- No rollout: no row, and no privilege needed (catalog scans, rollout.c);
    -- a role verify() is delegated to needs SELECT on tenancy.rollout_state
    -- for a table with one.
    IF NOT tenancy.rollout_active(rel) THEN
        RETURN;
    END IF;
    SELECT * INTO s FROM tenancy.rollout_state rs WHERE rs.relation = rel;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    check_name := 'rollout'; relation := rel;
    rows_affected := s.enforce_tenants + s.shadow_tenants + s.migrating_tenants;
    status := 'warning';
    detail := format('per-tenant rollout: table mode %s; %s%% of tenants in %s; listed: %s enforce, %s shadow, %s migrating; finish with clear_rollout() and set_mode(enforce) once every tenant is enforced',
                     s.base_mode, s.percent, coalesce(s.percent_mode, '-'),
                     s.enforce_tenants, s.shadow_tenants, s.migrating_tenants);
    fix := format('SELECT tenancy.clear_rollout(%L); SELECT tenancy.set_mode(%L, %L);', rel::text, rel::text, 'enforce');
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_rollout(regclass) IS 'verify() check rollout: its report row, for a table with a per-tenant rollout';

-- The change functions are executable by every role: they run as the
-- caller, and rollout_record() and set_mode()'s statements check that the
-- caller owns the table.  tenant_mode() tells any tenant's mode: not PUBLIC.
REVOKE EXECUTE ON FUNCTION
    tenancy.verify_rollout(regclass),
    tenancy.tenant_mode(regclass, text)
FROM PUBLIC;

-- Tables with a rollout in the policy generators and checks (src/rls.sql, src/verify.sql).
CREATE OR REPLACE FUNCTION tenancy.rls_record_internal(op text, tbl regclass, root regclass,
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
        PERFORM tenancy.rollout_forget(NULL);
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
            PERFORM tenancy.rollout_forget(tbl);     -- the rollout goes with the policy
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

CREATE OR REPLACE FUNCTION tenancy.rls_quals(tbl regclass, column_name name, mode text,
                                  OUT using_expr text, OUT check_expr text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    col text := quote_ident(column_name);
BEGIN
    -- a table with a per-tenant rollout: see tenancy.rollout_quals()
    IF tenancy.rollout_active(tenancy.rollout_root(tbl)) THEN
        SELECT q.using_expr, q.check_expr INTO using_expr, check_expr
          FROM tenancy.rollout_quals(tbl, column_name, mode) q;
        RETURN;
    END IF;
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

CREATE OR REPLACE FUNCTION tenancy.rls_legacy_stmts(qualified text, column_name name, roles text, mode text)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- a table with a per-tenant rollout: see tenancy.rollout_legacy_stmts()
    RETURN CASE WHEN tenancy.rollout_active(tenancy.rollout_root(qualified::regclass))
                THEN tenancy.rollout_legacy_stmts(qualified, column_name, roles, mode)
                WHEN mode = 'migrating' THEN ARRAY[
        format('CREATE POLICY tenancy_policy_legacy_read ON %s AS PERMISSIVE FOR SELECT TO %s USING (%I IS NULL)',
               qualified, roles, column_name),
        format('CREATE POLICY tenancy_policy_legacy_update ON %s AS PERMISSIVE FOR UPDATE TO %s USING (%I IS NULL AND (SELECT tenancy.is_implicit_tenant())) WITH CHECK (%I IS NULL AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name, column_name),
        format('CREATE POLICY tenancy_policy_legacy_delete ON %s AS PERMISSIVE FOR DELETE TO %s USING (%I IS NULL AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name)]
    ELSE '{}'::text[] END;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.rls_advisories(tbl regclass, column_name name DEFAULT NULL)
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
                AND EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = tbl
                               AND tenancy.rollout_legacy_expected(t.root, t.mode)))
     ORDER BY p.polname;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.verify_row_security(rel regclass, tenant_col name, rel_stage text)
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
                       IS DISTINCT FROM coalesce(tenancy.rollout_legacy_expected(rel, rmode), false)) AS legacy_wrong
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

-- squawk: ignore require-lock-timeout: each fix is one statement for a DBA to run by itself; its index fixes are CONCURRENTLY (no lock blocking reads or writes)
-- squawk: ignore require-statement-timeout: as above: a statement_timeout would cancel the concurrent build
CREATE OR REPLACE FUNCTION tenancy.verify(tbl regclass DEFAULT NULL, max_rows bigint DEFAULT NULL)
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
        RETURN QUERY SELECT * FROM tenancy.verify_rollout(r.rel);
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

