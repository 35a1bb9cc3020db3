-- src/derive.sql: derived tenants: a BEFORE INSERT trigger from a row expression or a parent (C: derive.c).

------------------------------------------------------------------------------
-- Derived tenants: tables whose every row's tenant follows from the row (an
-- expression over it) or from its parent (a foreign key to a table with a
-- tenant column).  A BEFORE INSERT trigger (src/derive.c) writes the
-- derived tenant into rows that legacy code writes with no tenant set, and
-- refuses rows written under another tenant than their own; the policy
-- tenancy_policy_derived lets the rows it derived through.
------------------------------------------------------------------------------

CREATE TABLE tenancy.derived_tenants (
    relation     regclass PRIMARY KEY,
    column_name  name NOT NULL,
    source_kind  text NOT NULL
                 CONSTRAINT derived_tenants_kind_check
                 CHECK (source_kind OPERATOR(pg_catalog.=) ANY (ARRAY['expression', 'foreign_key'])),
    source       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.derived_tenants IS 'tables whose tenant derive_tenant() derives on insert: from an expression over the row or a foreign key';
SELECT pg_catalog.pg_extension_config_dump('tenancy.derived_tenants', '');
REVOKE ALL ON TABLE tenancy.derived_tenants FROM PUBLIC;
-- Read by enable_rls() (as its caller) to put tenancy_policy_derived on
-- derived tables, as tenancy.rls_tables is.
GRANT SELECT ON TABLE tenancy.derived_tenants TO PUBLIC;

CREATE FUNCTION tenancy.derive_tenant_trigger() RETURNS trigger
    AS 'MODULE_PATHNAME', 'tenancy_derive_tenant_trigger'
    LANGUAGE C;
COMMENT ON FUNCTION tenancy.derive_tenant_trigger() IS 'BEFORE INSERT row trigger of derive_tenant(): writes or checks the derived tenant';

-- WITH CHECK of tenancy_policy_derived: true only for the row the trigger
-- has just derived in a legacy write (no tenant set, or a role bound to the
-- implicit tenant), with that tenant.  Executable by PUBLIC: policies run
-- as the querying role; it admits nothing the trigger did not derive.
CREATE FUNCTION tenancy.derived_write(rel regclass, tenant anyelement) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_derived_write'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.derived_write(regclass, anyelement) IS 'policy check: the new row''s tenant is the one the derive trigger derived for it';

-- A derivation's parts, validated: the column, the kind, the value over
-- the row (aliased t, as in backfill sources), and the table whose owner
-- computes it (the table itself for an expression, the parent for a
-- foreign key).
CREATE FUNCTION tenancy.derive_source(tbl regclass, source text, via name,
                                      OUT source_kind text, OUT source_text text,
                                      OUT value_sql text, OUT run_as regclass)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    keytype text := tenancy.type_sql(tenancy.key_type());
    con record;
    pcol name;
    pcoltype regtype;
BEGIN
    IF (source IS NULL) = (via IS NULL) THEN
        RAISE EXCEPTION 'pass exactly one of source and via'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'source => an expression over the row (aliased t), or via => a foreign key constraint name.';
    END IF;
    IF source IS NOT NULL THEN
        source_kind := 'expression';
        source_text := source;
        value_sql := format('CAST((%s) AS %s)', source, keytype);
        run_as := tbl;
        RETURN;
    END IF;
    SELECT c.confrelid::regclass AS parent, c.conkey, c.confkey, c.conpfeqop INTO con
      FROM pg_constraint c
     WHERE c.conrelid = tbl AND c.conname = via AND c.contype = 'f';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'foreign key "%" of relation "%" does not exist', via, tbl
            USING ERRCODE = 'undefined_object',
                  HINT = 'Name a foreign key constraint of the table (\d shows them).';
    END IF;
    pcol := tenancy.tenant_column(con.parent);
    SELECT a.atttypid::regtype INTO pcoltype FROM pg_attribute a
     WHERE a.attrelid = con.parent AND a.attname = pcol AND a.attnum > 0 AND NOT a.attisdropped;
    IF pcoltype IS DISTINCT FROM tenancy.key_type() THEN
        RAISE EXCEPTION 'parent table "%" has no tenant column "%"', con.parent, pcol
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Add the tenant column of the parent first (and derive or backfill it).';
    END IF;
    source_kind := 'foreign_key';
    source_text := via::text;
    run_as := con.parent;
    -- The foreign key's own equality operators, qualified.
    SELECT format('(SELECT p.%I FROM %I.%I p WHERE %s)', pcol, pn.nspname, pc.relname,
                  string_agg(format('p.%I OPERATOR(%I.%s) t.%I', pa.attname, opn.nspname, op.oprname, ca.attname),
                             ' AND ' ORDER BY k.i))
      INTO value_sql
      FROM unnest(con.conkey, con.confkey, con.conpfeqop) WITH ORDINALITY AS k(ck, pk, eqop, i)
      JOIN pg_attribute ca ON ca.attrelid = tbl AND ca.attnum = k.ck
      JOIN pg_attribute pa ON pa.attrelid = con.parent AND pa.attnum = k.pk
      JOIN pg_operator op ON op.oid = k.eqop
      JOIN pg_namespace opn ON opn.oid = op.oprnamespace
      JOIN pg_class pc ON pc.oid = con.parent
      JOIN pg_namespace pn ON pn.oid = pc.relnamespace
     GROUP BY pn.nspname, pc.relname;
END
$$;

-- The nearest table at or above rel (a partition) that has a derivation.
CREATE FUNCTION tenancy.derived_root(rel regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.relation
      FROM (SELECT rel::oid, 0::bigint
            UNION ALL
            SELECT a.relid, a.level FROM pg_partition_ancestors(rel) WITH ORDINALITY a(relid, level)) a(relid, level)
      JOIN tenancy.derived_tenants d ON d.relation = a.relid
     ORDER BY a.level
     LIMIT 1;
$$;

-- What the trigger on rel runs: the query over the new row ($1, of rel's
-- row type), and whose owner runs it.  Rebuilt from the registry and the
-- catalog, never stored.
CREATE FUNCTION tenancy.derive_lookup(rel regclass, OUT root regclass, OUT run_as regclass,
                                      OUT column_name name, OUT query text, OUT source text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d tenancy.derived_tenants;
    s record;
BEGIN
    SELECT * INTO d FROM tenancy.derived_tenants t WHERE t.relation = tenancy.derived_root(rel);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    s := tenancy.derive_source(d.relation,
                               CASE WHEN d.source_kind = 'expression' THEN d.source END,
                               CASE WHEN d.source_kind = 'foreign_key' THEN d.source::name END);
    root := d.relation;
    run_as := CASE WHEN s.source_kind = 'expression' THEN rel ELSE s.run_as END;
    column_name := d.column_name;
    query := format('SELECT %s FROM (SELECT ($1).*) t', s.value_sql);
    source := CASE WHEN s.source_kind = 'expression' THEN format('the expression %s', d.source)
                   ELSE format('foreign key %I to %s', d.source, s.run_as) END;
END
$$;

-- The policy that admits derived rows, on one member of a table's tree.
CREATE FUNCTION tenancy.derive_policy_stmt(m regclass, root regclass, column_name name, roles text)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('CREATE POLICY tenancy_policy_derived ON %s AS PERMISSIVE FOR INSERT TO %s WITH CHECK (tenancy.derived_write(%L::regclass, %I))',
                  (tenancy.rls_check(m, column_name, 'enforce')).qualified, roles,
                  (tenancy.rls_check(root, column_name, 'enforce')).qualified, column_name);
$$;

-- The statements derive_tenant() runs (empty: nothing to do).
CREATE FUNCTION tenancy.derive_tenant_stmts(tbl regclass, source text, via name, column_name name)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    col name;
    coltype oid;
    s record;
    cur tenancy.derived_tenants;
    m record;
    stmts text[] := '{}'::text[];
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl);
    IF NOT pg_has_role((SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    col := coalesce(column_name, tenancy.tenant_column(tbl));
    s := tenancy.derive_source(tbl, source, via);
    SELECT a.atttypid INTO coltype FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF FOUND AND coalesce((SELECT nullif(t.typbasetype, 0) FROM pg_type t WHERE t.oid = coltype), coltype)
                 <> tenancy.key_type() THEN
        RAISE EXCEPTION 'column "%" of relation "%" is of type %, but tenant keys are of type %',
                        col, tbl, format_type(coltype, NULL), format_type(tenancy.key_type(), NULL)
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Pass column_name => the tenant column.';
    END IF;
    -- The expression must compile over the row, as the caller; nothing runs.
    -- plpgsql_check: the source is the caller's own expression over its own table.
    EXECUTE format('SELECT %s FROM %s t LIMIT 0', s.value_sql, tbl);
    SELECT * INTO cur FROM tenancy.derived_tenants d WHERE d.relation = tbl;
    IF FOUND THEN
        IF (cur.column_name, cur.source_kind, cur.source) IS DISTINCT FROM (col, s.source_kind, s.source_text) THEN
            RAISE EXCEPTION 'table "%" already derives its tenant from %', tbl,
                            CASE cur.source_kind WHEN 'expression' THEN 'the expression ' || cur.source
                                 ELSE format('foreign key %I', cur.source) END
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Call tenancy.underive_tenant() first.';
        END IF;
    ELSE
        stmts := stmts || format('CREATE TRIGGER tenancy_derive_tenant BEFORE INSERT ON %I.%I FOR EACH ROW EXECUTE FUNCTION tenancy.derive_tenant_trigger()',
                                 (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl),
                                 (SELECT c.relname FROM pg_class c WHERE c.oid = tbl));
    END IF;
    -- Members already under tenancy_policy get the policy for derived rows,
    -- for the same roles.
    FOR m IN SELECT r.relid,
                    CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                         ELSE (SELECT string_agg(quote_ident(ro.rolname), ', ' ORDER BY ro.rolname)
                                 FROM pg_roles ro WHERE ro.oid = ANY (p.polroles)) END AS roles
               FROM tenancy.rls_members(tbl) r(relid)
               JOIN pg_policy p ON p.polrelid = r.relid AND p.polname = 'tenancy_policy'
              WHERE NOT EXISTS (SELECT 1 FROM pg_policy d WHERE d.polrelid = r.relid
                                   AND d.polname = 'tenancy_policy_derived') LOOP
        stmts := stmts || tenancy.derive_policy_stmt(m.relid, tbl, col, m.roles);
    END LOOP;
    RETURN stmts;
END
$$;

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog (a rerun emits what is still to do); a transaction is the DBA's choice
CREATE FUNCTION tenancy.derive_tenant_sql(tbl regclass, source text DEFAULT NULL, via name DEFAULT NULL,
                                          column_name name DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmts text[] := tenancy.derive_tenant_stmts(tbl, source, via, column_name);
BEGIN
    IF cardinality(stmts) = 0 THEN
        RETURN '';
    END IF;
    RETURN tenancy.preview_wrap(tenancy.rls_script(stmts)) || chr(10)
        || regexp_replace(format('-- undo: SELECT tenancy.underive_tenant(%L);', tbl::text),
                          '\r\n|[\r\n]', chr(10) || '-- ', 'g');
END
$$;
COMMENT ON FUNCTION tenancy.derive_tenant_sql(regclass, text, name, name) IS 'the DDL derive_tenant() would run, and how to undo it';

CREATE FUNCTION tenancy.derive_tenant(tbl regclass, source text DEFAULT NULL, via name DEFAULT NULL,
                                      column_name name DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    stmts text[];
    s record;
    col name;
BEGIN
    stmts := tenancy.derive_tenant_stmts(tbl, source, via, column_name);
    col := coalesce(column_name, tenancy.tenant_column(tbl));
    s := tenancy.derive_source(tbl, source, via);
    -- The trigger's DDL takes a SHARE ROW EXCLUSIVE lock: writers wait, readers do not.
    INSERT INTO tenancy.derived_tenants (relation, column_name, source_kind, source)
    VALUES (tbl, col, s.source_kind, s.source_text)
    ON CONFLICT (relation) DO NOTHING;
    IF cardinality(stmts) = 0 THEN
        RAISE NOTICE 'table "%" already derives its tenant this way, nothing to do', tbl;
        RETURN NULL;
    END IF;
    RETURN tenancy.rls_run(stmts);
END
$$;
COMMENT ON FUNCTION tenancy.derive_tenant(regclass, text, name, name) IS 'derive the tenant of new rows from an expression over the row or a foreign key to a parent; returns the DDL run, NULL when there was nothing to do';

CREATE FUNCTION tenancy.underive_tenant(tbl regclass) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmts text[] := '{}'::text[];
    m regclass;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl);
    IF NOT pg_has_role((SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = tbl AND g.tgname = 'tenancy_derive_tenant'
                                            AND g.tgparentid = 0) THEN
        stmts := stmts || format('DROP TRIGGER tenancy_derive_tenant ON %s',
                                 (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                                    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl));
    END IF;
    FOR m IN SELECT r FROM tenancy.rls_members(tbl) r
              WHERE EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = r AND p.polname = 'tenancy_policy_derived') LOOP
        stmts := stmts || format('DROP POLICY tenancy_policy_derived ON %s',
                                 (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                                    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = m));
    END LOOP;
    DELETE FROM tenancy.derived_tenants d WHERE d.relation = tbl;
    IF cardinality(stmts) = 0 THEN
        RETURN NULL;
    END IF;
    RETURN tenancy.rls_run(stmts);
END
$$;
COMMENT ON FUNCTION tenancy.underive_tenant(regclass) IS 'undo derive_tenant(): drop the trigger and the policy for derived rows; returns the DDL run, NULL when there was nothing to do';

-- derive_tenant_trigger() stays executable by PUBLIC: CREATE TRIGGER needs
-- EXECUTE on it (derive_tenant() runs as the table owner), and it runs only
-- as a trigger.
-- derive_source() too, as backfill_value_sql(): verify() calls it as its
-- caller.
REVOKE EXECUTE ON FUNCTION
    tenancy.derive_lookup(regclass),
    tenancy.derive_tenant_stmts(regclass, text, name, name),
    tenancy.derive_tenant_sql(regclass, text, name, name),
    tenancy.derive_tenant(regclass, text, name, name),
    tenancy.underive_tenant(regclass)
FROM PUBLIC;
