-- src/rls.sql: row-level security: policies, modes, advisories, partition and inheritance coverage (C: rls.c, rls_guard.c).

------------------------------------------------------------------------------
-- Row-level security: policy generator and staged enforcement
-- (migrating, shadow, enforce).  One policy per table, named tenancy_policy;
-- its mode is tenancy.tables.stage.  What enable_rls() changed is kept in
-- tenancy.rls_tables, so disable_rls() can undo exactly that.
------------------------------------------------------------------------------

CREATE TABLE tenancy.rls_tables (
    relation    regclass PRIMARY KEY,
    root        regclass NOT NULL,
    column_name name NOT NULL,
    mode        text NOT NULL
                CONSTRAINT rls_tables_mode_check
                CHECK (mode OPERATOR(pg_catalog.=) ANY (ARRAY['migrating', 'shadow', 'enforce'])),
    prior_rls   boolean NOT NULL,
    prior_force boolean NOT NULL,
    prior_stage text,
    enabled_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    mode_changed_at timestamptz     -- the last set_mode() that changed mode; NULL: none since enable_rls()
);
COMMENT ON TABLE tenancy.rls_tables IS 'tables that carry tenancy_policy: the table enable_rls() was called on (root), its mode, and the row security state and stage to restore';
SELECT pg_catalog.pg_extension_config_dump('tenancy.rls_tables', '');
REVOKE ALL ON TABLE tenancy.rls_tables FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.rls_tables TO PUBLIC;

-- Bookkeeping, run as the extension owner by tenancy.rls_record() once it
-- has checked that the caller owns the table.
CREATE FUNCTION tenancy.rls_record_internal(op text, tbl regclass, root regclass,
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
        ON CONFLICT (relation) DO UPDATE
               SET mode = EXCLUDED.mode,
                   mode_changed_at = CASE WHEN t.mode IS DISTINCT FROM EXCLUDED.mode THEN pg_catalog.now()
                                          ELSE t.mode_changed_at END
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
REVOKE ALL ON FUNCTION tenancy.rls_record_internal(text, regclass, regclass, name, text) FROM PUBLIC;

-- Checks that the caller owns the table(s), then runs rls_record_internal()
-- as the extension owner.  The generated DDL calls it, so that running the
-- output of policy_sql() is equivalent to enable_rls().
CREATE FUNCTION tenancy.rls_record(op text, tbl regclass, root regclass DEFAULT NULL,
                                   column_name name DEFAULT NULL, mode text DEFAULT NULL)
RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_rls_record'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.rls_record(text, regclass, regclass, name, text) IS 'record (register/unregister) a table in tenancy.rls_tables; the caller must own it';

-- Validation shared by every generator: what the table is, that the caller
-- owns it, the tenant column and the accessor matching its type.
CREATE FUNCTION tenancy.rls_check(tbl regclass, column_name name, mode text,
                                  OUT qualified text, OUT accessor text, OUT is_partitioned boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
    coltype oid;
    basetype oid;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT cl.relkind, cl.relname, n.nspname, cl.relowner INTO c
      FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', tbl::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF c.relkind IN ('v', 'm') THEN
        RAISE EXCEPTION '"%" is a view', c.relname
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'Row level security applies to tables; a view is checked through its tables.',
                  HINT = 'Enable it on the tables under the view, and give the view security_invoker.';
    ELSIF c.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', c.relname USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT pg_has_role(c.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', c.relname
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF mode IS NULL OR mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
        RAISE EXCEPTION 'unknown row level security mode "%"', coalesce(mode, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The modes are shadow, migrating and enforce.';
    END IF;
    IF mode = 'shadow' THEN
        PERFORM tenancy.shadow_require_preload();
    END IF;
    SELECT a.atttypid INTO coltype
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', column_name, c.relname
            USING ERRCODE = 'undefined_column',
                  HINT = 'Add the tenant column first (tenancy.add_tenant_column()), or pass column_name.';
    END IF;
    basetype := coalesce((SELECT nullif(t.typbasetype, 0) FROM pg_type t WHERE t.oid = coltype), coltype);
    IF basetype <> tenancy.key_type() THEN
        RAISE EXCEPTION 'column "%" of relation "%" is of type %, but tenant keys are of type %',
                column_name, c.relname, format_type(coltype, NULL), format_type(tenancy.key_type(), NULL)
            USING ERRCODE = 'datatype_mismatch',
                  DETAIL = 'The policy compares the column with the current tenant without a cast, so that an index on the column stays usable.',
                  HINT = 'Change the column type, or tenancy.tenant_type.';
    END IF;
    qualified := format('%I.%I', c.nspname, c.relname);
    accessor := CASE format_type(basetype, NULL)
                    WHEN 'uuid' THEN 'tenancy.current_tenant()'
                    WHEN 'bigint' THEN 'tenancy.current_tenant_bigint()'
                    ELSE 'tenancy.current_tenant_text()' END;
    is_partitioned := c.relkind = 'p';
END
$$;

-- USING and WITH CHECK expressions of the policy for a mode.
CREATE FUNCTION tenancy.rls_quals(tbl regclass, column_name name, mode text,
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

-- Migrating mode adds, next to tenancy_policy (plain equality in every mode
-- but shadow), one policy per command for rows whose tenant is still NULL:
-- every tenant reads them, only the implicit tenant updates or deletes them
-- (nobody while no implicit tenant is set).  tenancy.is_implicit_tenant()
-- reads the registry when the statement runs, so set_implicit_tenant() needs
-- no set_mode() after it.
CREATE FUNCTION tenancy.rls_legacy_policies() RETURNS name[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY['tenancy_policy_legacy_delete', 'tenancy_policy_legacy_read',
                 'tenancy_policy_legacy_update']::name[];
$$;

-- On a Citus table the implicit-tenant test is a plain call: Citus cannot
-- propagate a policy holding a sub-select to the shards ("unexpected
-- non-SELECT command in SubLink"), and on each shard the call is as cheap,
-- being evaluated only for the rows whose tenant is NULL.
CREATE FUNCTION tenancy.rls_citus_distributed(tbl regclass) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rls_citus_distributed'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rls_citus_distributed(regclass) IS 'true when Citus lists the table in its metadata on this node (distributed, reference or Citus-local); false without Citus';

CREATE FUNCTION tenancy.rls_legacy_stmts(qualified text, column_name name, roles text, mode text)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- Citus cannot copy a SubLink in a policy to the shards: on a Citus
    -- table the legacy policies call the function directly
    imp text := CASE WHEN tenancy.rls_citus_distributed(qualified::regclass)
                     THEN 'tenancy.is_implicit_tenant()'
                     ELSE '(SELECT tenancy.is_implicit_tenant())' END;
BEGIN
    -- a table with a per-tenant rollout: see tenancy.rollout_legacy_stmts()
    RETURN CASE WHEN tenancy.rollout_active(tenancy.rollout_root(qualified::regclass))
                THEN tenancy.rollout_legacy_stmts(qualified, column_name, roles, mode)
                WHEN mode = 'migrating' THEN ARRAY[
        format('CREATE POLICY tenancy_policy_legacy_read ON %s AS PERMISSIVE FOR SELECT TO %s USING (%I IS NULL)',
               qualified, roles, column_name),
        format('CREATE POLICY tenancy_policy_legacy_update ON %s AS PERMISSIVE FOR UPDATE TO %s USING (%I IS NULL AND %s) WITH CHECK (%I IS NULL AND %s)',
               qualified, roles, column_name, imp, column_name, imp),
        format('CREATE POLICY tenancy_policy_legacy_delete ON %s AS PERMISSIVE FOR DELETE TO %s USING (%I IS NULL AND %s)',
               qualified, roles, column_name, imp)]
    ELSE '{}'::text[] END;
END
$$;

-- The table and everything below it, partitions and inheritance children
-- alike (both are rows of pg_inherits), at any depth.
CREATE FUNCTION tenancy.rls_tree(tbl regclass) RETURNS TABLE (relid regclass, level integer)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tree(relid, level) AS (
        SELECT tbl::oid, 0
        UNION
        SELECT i.inhrelid, tree.level + 1 FROM tree JOIN pg_inherits i ON i.inhparent = tree.relid
    )
    SELECT t.relid::regclass, min(t.level) FROM tree t GROUP BY t.relid;
$$;

-- The tables a policy goes on: the table and every partition and
-- inheritance child below it that can carry row security (foreign tables
-- cannot).  Children come first: see tenancy.rls_cover_partitions().
CREATE FUNCTION tenancy.rls_members(tbl regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.relid
      FROM tenancy.rls_tree(tbl) m
      JOIN pg_class c ON c.oid = m.relid
     WHERE c.relkind IN ('r', 'p')
     ORDER BY m.level DESC, c.relname, m.relid;
$$;

CREATE FUNCTION tenancy.rls_role_list(roles regrole[]) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN coalesce(cardinality(roles), 0) = 0 THEN 'PUBLIC'
                ELSE (SELECT string_agg(quote_ident(r.rolname), ', ' ORDER BY u.ord)
                        FROM unnest(roles) WITH ORDINALITY u(role, ord)
                        JOIN pg_roles r ON r.oid = u.role) END;
$$;

-- Statements that put the policy on one table (a member of root's tree).
CREATE FUNCTION tenancy.rls_cover_stmts(tbl regclass, root regclass, column_name name,
                                        roles text, mode text) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    q record := tenancy.rls_quals(tbl, column_name, mode);
BEGIN
    RETURN ARRAY[
        format('SELECT tenancy.rls_record(''register'', %L::regclass, %L::regclass, %L, %L)',
               chk.qualified, (tenancy.rls_check(root, column_name, mode)).qualified, column_name, mode),
        format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', chk.qualified),
        format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', chk.qualified),
        format('CREATE POLICY tenancy_policy ON %s AS PERMISSIVE FOR ALL TO %s USING (%s) WITH CHECK (%s)',
               chk.qualified, roles, q.using_expr, q.check_expr)]
        || tenancy.rls_legacy_stmts(chk.qualified, column_name, roles, mode)
        -- a table whose tenant is derived: see tenancy.derive_tenant()
        || CASE WHEN tenancy.derived_root(tbl) IS NOT NULL
                THEN ARRAY[tenancy.derive_policy_stmt(tbl, tenancy.derived_root(tbl), column_name, roles)]
                ELSE '{}'::text[] END;
END
$$;

CREATE FUNCTION tenancy.rls_enable_stmts(tbl regclass, column_name name, roles regrole[], mode text)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    rolelist text := tenancy.rls_role_list(roles);
    stmts text[] := '{}'::text[];
    m regclass;
BEGIN
    IF roles IS NOT NULL AND array_position(roles, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'roles must not contain NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass NULL instead of the array for PUBLIC.';
    END IF;
    FOR m IN SELECT tenancy.rls_members(tbl) LOOP
        IF EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = m)
           OR EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = m AND p.polname = 'tenancy_policy') THEN
            RAISE EXCEPTION 'table % already has a policy named tenancy_policy', m
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Change its mode with tenancy.set_mode(), or call tenancy.disable_rls() first.';
        END IF;
    END LOOP;
    IF chk.is_partitioned OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = tbl) THEN
        stmts := stmts || format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', chk.qualified);
    END IF;
    FOR m IN SELECT tenancy.rls_members(tbl) LOOP
        stmts := stmts || tenancy.rls_cover_stmts(m, tbl, column_name, rolelist, mode);
    END LOOP;
    RETURN stmts;
END
$$;

CREATE FUNCTION tenancy.rls_script(stmts text[]) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(s || ';', chr(10) ORDER BY o) FROM unnest(stmts) WITH ORDINALITY u(s, o);
$$;

CREATE FUNCTION tenancy.rls_run(stmts text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text;
BEGIN
    -- plpgsql_check: VOLATILE: the statements are DDL.
    FOREACH s IN ARRAY stmts LOOP
        -- plpgsql_check: built by rls_*_stmts(), every name through %I/%L.
        EXECUTE s;
    END LOOP;
    RETURN tenancy.rls_script(stmts);
END
$$;

CREATE FUNCTION tenancy.rls_advisories(tbl regclass, column_name name DEFAULT NULL)
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
COMMENT ON FUNCTION tenancy.rls_advisories(regclass, name) IS 'what would still leak or be slow with the tenant policy on this table';

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog (a rerun emits what is still to do); a transaction is the DBA's choice
CREATE FUNCTION tenancy.policy_sql(tbl regclass, column_name name DEFAULT 'tenant_id',
                                   roles regrole[] DEFAULT NULL, mode text DEFAULT 'enforce')
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(tenancy.rls_enable_stmts(tbl, column_name, roles, mode)));
$$;
COMMENT ON FUNCTION tenancy.policy_sql(regclass, name, regrole[], text) IS 'the DDL enable_rls() would run, for review or a migration file';

CREATE FUNCTION tenancy.enable_rls(tbl regclass, column_name name DEFAULT 'tenant_id',
                                   roles regrole[] DEFAULT NULL, mode text DEFAULT 'enforce')
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmts text[] := tenancy.rls_enable_stmts(tbl, column_name, roles, mode);
    a record;
BEGIN
    FOR a IN SELECT * FROM tenancy.rls_advisories(tbl, column_name) LOOP
        RAISE NOTICE 'tenancy: % %', replace(a.kind, '_', ' '), a.object USING DETAIL = a.detail;
    END LOOP;
    RETURN tenancy.rls_run(stmts);
END
$$;
COMMENT ON FUNCTION tenancy.enable_rls(regclass, name, regrole[], text) IS 'enable and force row level security with the tenant policy; returns the DDL it ran';

CREATE FUNCTION tenancy.rls_root_row(tbl regclass) RETURNS tenancy.rls_tables
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r tenancy.rls_tables;
BEGIN
    SELECT * INTO r FROM tenancy.rls_tables t WHERE t.relation = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % has no tenancy row level security', tbl
            USING ERRCODE = 'undefined_object',
                  HINT = 'Call tenancy.enable_rls() first.';
    END IF;
    IF r.root <> r.relation THEN
        RAISE EXCEPTION 'table % is % of %, whose tenancy row level security covers it', tbl,
                CASE WHEN (SELECT c.relispartition FROM pg_class c WHERE c.oid = tbl) THEN 'a partition'
                     ELSE 'an inheritance child' END, r.root
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Call the function on %s.', r.root);
    END IF;
    RETURN r;
END
$$;

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog (a rerun emits what is still to do); a transaction is the DBA's choice
CREATE FUNCTION tenancy.set_mode_sql(tbl regclass, mode text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tenancy.rls_root_row(tbl);     -- 55000 unless registered
    RETURN tenancy.preview_wrap(tenancy.rls_script(tenancy.rls_mode_stmts(tbl, mode)));
END
$$;

CREATE FUNCTION tenancy.rls_mode_stmts(tbl regclass, mode text) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r tenancy.rls_tables := tenancy.rls_root_row(tbl);
    chk record := tenancy.rls_check(tbl, r.column_name, mode);
    stmts text[] := '{}'::text[];
    m record;
    q record;
    qn text;
BEGIN
    IF chk.is_partitioned OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = tbl) THEN
        stmts := stmts || format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', chk.qualified);
    END IF;
    FOR m IN SELECT t.relation FROM tenancy.rls_tables t JOIN pg_class c ON c.oid = t.relation
              WHERE t.root = tbl ORDER BY t.relation = tbl DESC, c.relname, t.relation LOOP
        stmts := stmts || format('SELECT tenancy.rls_record(''register'', %L::regclass, %L::regclass, %L, %L)',
                                 (tenancy.rls_check(m.relation, r.column_name, mode)).qualified,
                                 chk.qualified, r.column_name, mode);
    END LOOP;
    FOR m IN SELECT t.relation,
                    (SELECT CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                                 ELSE (SELECT string_agg(quote_ident(o.rolname), ', ' ORDER BY o.rolname)
                                         FROM pg_roles o WHERE o.oid = ANY (p.polroles)) END
                       FROM pg_policy p WHERE p.polrelid = t.relation AND p.polname = 'tenancy_policy') AS rolelist
               FROM tenancy.rls_tables t JOIN pg_class c ON c.oid = t.relation
              WHERE t.root = tbl ORDER BY t.relation = tbl DESC, c.relname, t.relation LOOP
        q := tenancy.rls_quals(m.relation, r.column_name, mode);
        qn := (tenancy.rls_check(m.relation, r.column_name, mode)).qualified;
        -- migrating mode's own policies: dropped, then made again for that mode
        stmts := stmts || (SELECT array_agg(format('DROP POLICY %I ON %s', l.name, qn) ORDER BY l.name)
                             FROM unnest(tenancy.rls_legacy_policies()) l(name)
                            WHERE EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = m.relation AND p.polname = l.name))
                       || format('ALTER POLICY tenancy_policy ON %s USING (%s) WITH CHECK (%s)',
                                 qn, q.using_expr, q.check_expr)
                       || tenancy.rls_legacy_stmts(qn, r.column_name, coalesce(m.rolelist, 'PUBLIC'), mode);
    END LOOP;
    -- Members of the tree that miss the policy (a child created while the
    -- event trigger was disabled): covered as the event trigger would.
    FOR m IN SELECT tenancy.rls_members(tbl) AS relation LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = m.relation);
        stmts := stmts || tenancy.rls_cover_stmts(m.relation, tbl, r.column_name,
                                                  coalesce((SELECT CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                                                                   ELSE (SELECT string_agg(quote_ident(o.rolname), ', ' ORDER BY o.rolname)
                                                                           FROM pg_roles o WHERE o.oid = ANY (p.polroles)) END
                                                              FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = 'tenancy_policy'),
                                                           'PUBLIC'), mode);
    END LOOP;
    RETURN stmts;
END
$$;
COMMENT ON FUNCTION tenancy.set_mode_sql(regclass, text) IS 'the DDL set_mode() would run';

CREATE FUNCTION tenancy.set_mode(tbl regclass, mode text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rls_run(tenancy.rls_mode_stmts(tbl, mode));
$$;
COMMENT ON FUNCTION tenancy.set_mode(regclass, text) IS 'switch the tenant policy of a table to shadow, migrating or enforce, in one transaction; returns the DDL it ran';

CREATE FUNCTION tenancy.rls_disable_stmts(tbl regclass) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    root tenancy.rls_tables := tenancy.rls_root_row(tbl);
    chk record := tenancy.rls_check(tbl, root.column_name, root.mode);
    stmts text[] := '{}'::text[];
    r record;
BEGIN
    IF chk.is_partitioned OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = tbl) THEN
        stmts := stmts || format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', chk.qualified);
    END IF;
    -- The root first: once it is unregistered, new partitions are no longer covered.
    FOR r IN SELECT t.*, format('%I.%I', n.nspname, c.relname) AS qname
               FROM tenancy.rls_tables t JOIN pg_class c ON c.oid = t.relation
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.root = tbl ORDER BY t.relation = tbl DESC, c.relname, t.relation LOOP
        stmts := stmts || format('SELECT tenancy.rls_record(''unregister'', %L::regclass)', r.qname)
                       || format('DROP POLICY IF EXISTS tenancy_policy ON %s', r.qname)
                       || (SELECT array_agg(format('DROP POLICY IF EXISTS %I ON %s', l.name, r.qname) ORDER BY l.name)
                             FROM unnest(tenancy.rls_legacy_policies()) l(name)
                            WHERE EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = r.relation AND p.polname = l.name))
                       || CASE WHEN EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = r.relation
                                               AND p.polname = 'tenancy_policy_derived')
                               THEN ARRAY[format('DROP POLICY IF EXISTS tenancy_policy_derived ON %s', r.qname)]
                               ELSE '{}'::text[] END;
        IF NOT r.prior_force THEN
            stmts := stmts || format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', r.qname);
        END IF;
        IF NOT r.prior_rls THEN
            stmts := stmts || format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', r.qname);
        END IF;
    END LOOP;
    RETURN stmts;
END
$$;

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog (a rerun emits what is still to do); a transaction is the DBA's choice
CREATE FUNCTION tenancy.disable_rls_sql(tbl regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(tenancy.rls_disable_stmts(tbl)));
$$;
COMMENT ON FUNCTION tenancy.disable_rls_sql(regclass) IS 'the DDL disable_rls() would run';

CREATE FUNCTION tenancy.disable_rls(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rls_run(tenancy.rls_disable_stmts(tbl));
$$;
COMMENT ON FUNCTION tenancy.disable_rls(regclass) IS 'drop the tenant policy enable_rls() created and restore the earlier row security state; returns the DDL it ran';

-- New partitions and inheritance children of a covered table get the policy
-- as they are created or attached (PARTITION OF, ATTACH PARTITION, INHERITS,
-- ALTER TABLE ... INHERIT, at any depth): this event trigger puts it on every
-- member of a covered tree that does not carry it yet, in the mode and for
-- the roles of the root.
CREATE FUNCTION tenancy.rls_cover_partitions() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    obj record;
    root tenancy.rls_tables;
    rolelist text;
    m regclass;
    s text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenancy.rls_tables) THEN
        RETURN;
    END IF;
    FOR obj IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
                WHERE c.classid = 'pg_class'::regclass AND c.object_type = 'table' LOOP
        WITH RECURSIVE up(relid, level) AS (
            SELECT obj.objid, 0
            UNION
            SELECT i.inhparent, up.level + 1 FROM up JOIN pg_inherits i ON i.inhrelid = up.relid
        )
        SELECT t.* INTO root
          FROM up JOIN tenancy.rls_tables t ON t.relation = up.relid AND t.root = t.relation
         ORDER BY up.level
         LIMIT 1;
        CONTINUE WHEN NOT FOUND;
        SELECT CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                    ELSE (SELECT string_agg(quote_ident(r.rolname), ', ' ORDER BY r.rolname)
                            FROM pg_roles r WHERE r.oid = ANY (p.polroles)) END
          INTO rolelist
          FROM pg_policy p WHERE p.polrelid = root.relation AND p.polname = 'tenancy_policy';
        FOR m IN SELECT tenancy.rls_members(root.relation) LOOP
            CONTINUE WHEN EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = m);
            FOREACH s IN ARRAY tenancy.rls_cover_stmts(m, root.relation, root.column_name,
                                                       coalesce(rolelist, 'PUBLIC'), root.mode) LOOP
                EXECUTE s;
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER tenancy_rls_cover_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION tenancy.rls_cover_partitions();

-- Forget dropped tables.
CREATE FUNCTION tenancy.rls_forget_dropped() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() d
                JOIN tenancy.rls_tables t ON t.relation = d.objid
               WHERE d.classid = 'pg_class'::regclass) THEN
        PERFORM tenancy.rls_record('forget_dropped', NULL);
    END IF;
END
$$;

CREATE EVENT TRIGGER tenancy_rls_forget_dropped ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION tenancy.rls_forget_dropped();
