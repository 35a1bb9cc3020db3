-- src/rollout.sql: per-tenant rollout: a table's mode per tenant, by list and by a stable percentage (C: rollout.c).

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
-- table), retrying with the jittered backoff of tenancy.backoff_delay()
-- (50 ms doubling up to 1 s, 30 attempts: about 20 s) when the lock is not
-- granted in time.  A waiter of 100 ms never makes autovacuum yield (it
-- yields after deadlock_timeout), so a vacuum of the table outlasts a few
-- quick retries.
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
            IF attempt >= 30 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep_for(tenancy.backoff_delay(attempt, interval '50ms', interval '1s'));
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
