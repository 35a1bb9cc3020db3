-- src/rollback.sql: rollback_table(): undo what the extension added for a table.

------------------------------------------------------------------------------
-- Rollback: undo what the extension added for a table, keep the data
------------------------------------------------------------------------------

-- squawk: ignore prefer-robust-stmts: computed from contract_log and the catalog: rerun after a failure, it holds only what is still to undo
-- squawk: ignore require-concurrent-index-deletion: rollback_table() runs these in one transaction, where DROP INDEX CONCURRENTLY is not allowed
-- squawk: ignore ban-drop-not-null: the rollback restores the schema from before the migration, nullable tenant column included
CREATE FUNCTION tenancy.rollback_table_sql(tbl regclass) RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    l   record;
    st  text;
    pn  name;
BEGIN
    st := (tenancy.registered_table(tbl)).stage;
    -- the preview's timeouts (rollback_table() runs the rest in one transaction);
    -- no statement_timeout: undoing a scoped key validates the original again
    RETURN QUERY SELECT u.s || ';' FROM unnest(tenancy.preview_set(true)) u(s);
    -- contract steps, newest first (those of its partitions too)
    FOR l IN
        SELECT c.undo_sql FROM tenancy.contract_log c
        WHERE (c.relation = tbl OR c.relation IN (SELECT t.relid FROM pg_partition_tree(tbl) t WHERE t.level > 0))
          AND c.undone_at IS NULL AND c.undo_sql IS NOT NULL
        ORDER BY c.id DESC
    LOOP
        RETURN NEXT l.undo_sql || ';';
    END LOOP;
    -- the derived tenant's trigger (and its policy)
    IF EXISTS (SELECT 1 FROM tenancy.derived_tenants d WHERE d.relation = tbl) THEN
        RETURN NEXT format('SELECT tenancy.underive_tenant(%L);', tbl::text);
    END IF;
    -- column defaults that call the extension's functions
    FOR l IN
        SELECT DISTINCT a.attname
        FROM pg_attrdef ad
        JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
        JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                        AND d.refclassid = 'pg_proc'::regclass
        JOIN pg_proc pr ON pr.oid = d.refobjid AND pr.pronamespace = 'tenancy'::regnamespace
        WHERE ad.adrelid = tbl
        ORDER BY a.attname
    LOOP
        RETURN NEXT format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT;', tbl, l.attname);
    END LOOP;
    -- the policy: through the RLS feature when it is installed
    IF EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = 'tenancy_policy') THEN
        IF EXISTS (SELECT 1 FROM tenancy.rls_tables r WHERE r.relation = tbl AND r.root = tbl) THEN
            -- made by enable_rls(): undo exactly what it did
            RETURN NEXT format('SELECT tenancy.disable_rls(%L);', tbl::text);
        ELSE
            FOR l IN
                SELECT c.oid::regclass AS rel,
                       NOT EXISTS (SELECT 1 FROM pg_policy p2 WHERE p2.polrelid = c.oid
                                   AND p2.polname <> 'tenancy_policy'
                                   AND p2.polname <> ALL (tenancy.rls_legacy_policies())) AS only_policy
                FROM (SELECT tbl::oid AS relid, 0 AS level
                      UNION ALL
                      SELECT pt.relid, pt.level FROM tenancy.rls_tree(tbl) pt WHERE pt.level > 0) tree
                JOIN pg_class c ON c.oid = tree.relid
                WHERE EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenancy_policy')
                ORDER BY tree.level, c.oid::regclass::text
            LOOP
                RETURN NEXT format('DROP POLICY tenancy_policy ON %s;', l.rel);
                FOR pn IN SELECT p.polname FROM pg_policy p
                            WHERE p.polrelid = l.rel AND p.polname = ANY (tenancy.rls_legacy_policies())
                            ORDER BY p.polname LOOP
                    RETURN NEXT format('DROP POLICY %I ON %s;', pn, l.rel);
                END LOOP;
                IF l.only_policy THEN
                    RETURN NEXT format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;', l.rel);
                END IF;
            END LOOP;
        END IF;
    END IF;
    IF st IN ('migrating', 'shadow', 'enforce', 'contract') THEN
        RETURN NEXT format('SELECT tenancy.tables_set_stage(%L, %L);', tbl::text, 'backfill');
    END IF;
    RETURN NEXT format('UPDATE tenancy.contract_log SET undone_at = pg_catalog.now() WHERE relation = %L::regclass AND undone_at IS NULL;',
                       tbl::text);
    IF EXISTS (SELECT 1 FROM tenancy.contract_log c JOIN pg_partition_tree(tbl) t ON t.relid = c.relation
                WHERE t.level > 0 AND c.undone_at IS NULL) THEN
        RETURN NEXT format('UPDATE tenancy.contract_log SET undone_at = pg_catalog.now() WHERE relation IN (SELECT relid FROM pg_catalog.pg_partition_tree(%L) WHERE level > 0) AND undone_at IS NULL;',
                           tbl::text);
    END IF;
    RETURN QUERY SELECT u.s || ';' FROM unnest(tenancy.preview_reset()) u(s);
END
$$;
COMMENT ON FUNCTION tenancy.rollback_table_sql(regclass) IS 'preview of rollback_table(): the statements, newest step first';

CREATE FUNCTION tenancy.rollback_table(tbl regclass) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmt text;
BEGIN
    -- plpgsql_check: VOLATILE: the statements are DDL.
    FOR stmt IN SELECT s FROM tenancy.rollback_table_sql(tbl) s LOOP
        -- the preview's SET/RESET of its timeouts: not for one transaction
        CONTINUE WHEN stmt ~ '^(SET|RESET) (lock|statement)_timeout';
        -- plpgsql_check: from rollback_table_sql(): names through %I, literals through %L.
        EXECUTE stmt;
        RETURN NEXT stmt;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.rollback_table(regclass) IS 'undo the contract steps, the tenancy defaults and the policy of a table in one transaction; the data stays';
REVOKE EXECUTE ON FUNCTION
    tenancy.rollback_table_sql(regclass),
    tenancy.rollback_table(regclass)
FROM PUBLIC;
