-- src/shared.sql: shared (reference) tables.

------------------------------------------------------------------------------
-- Shared tables: reference data every tenant reads (films, countries, ...).
-- Marked so that the advisories stop asking for the tenant in foreign keys
-- that point at them, and verify() checks that only their owner writes them.
-- A table is either a tenant table (tenancy.tables) or shared, not both.
------------------------------------------------------------------------------

CREATE TABLE tenancy.shared_tables (
    relation  regclass PRIMARY KEY,
    marked_by name NOT NULL DEFAULT session_user,
    marked_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.shared_tables IS 'tables shared by every tenant (reference data): no tenant column, written only by their owner';
SELECT pg_catalog.pg_extension_config_dump('tenancy.shared_tables', '');
REVOKE ALL ON TABLE tenancy.shared_tables FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.shared_tables TO PUBLIC;   -- the advisories read it as the table owner

CREATE FUNCTION tenancy.mark_shared(tbl regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.check_tenant_table(tbl);
    IF EXISTS (SELECT 1 FROM tenancy.tables t WHERE t.relation = tbl)
       OR EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = tbl) THEN
        RAISE EXCEPTION 'table % is registered as a tenant table', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'A table is either a tenant table, with a tenant column and a policy, or shared by every tenant.',
                  HINT = format('Undo its migration first: SELECT * FROM tenancy.rollback_table_sql(%L);', tbl::text);
    END IF;
    INSERT INTO tenancy.shared_tables (relation) VALUES (tbl) ON CONFLICT (relation) DO NOTHING;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION tenancy.mark_shared(regclass) IS 'mark a table shared by every tenant (reference data); false when it already is';
REVOKE ALL ON FUNCTION tenancy.mark_shared(regclass) FROM PUBLIC;

CREATE FUNCTION tenancy.unmark_shared(tbl regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM tenancy.shared_tables s WHERE s.relation = tbl;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION tenancy.unmark_shared(regclass) IS 'undo mark_shared(); false when the table was not marked';
REVOKE ALL ON FUNCTION tenancy.unmark_shared(regclass) FROM PUBLIC;

-- A shared table (or a partition of one) cannot be registered.
CREATE FUNCTION tenancy.tables_not_shared() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    shared regclass;
BEGIN
    SELECT s.relation INTO shared FROM tenancy.shared_tables s
     WHERE s.relation = NEW.relation
        OR s.relation IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors(NEW.relation) a)
     LIMIT 1;
    IF shared IS NOT NULL THEN
        RAISE EXCEPTION 'table % is marked shared', NEW.relation
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('%s holds data every tenant reads: it has no tenant column.', shared),
                  HINT = format('If it is tenant data after all: SELECT tenancy.unmark_shared(%L);', shared::text);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER tables_not_shared BEFORE INSERT OR UPDATE OF relation ON tenancy.tables
    FOR EACH ROW EXECUTE FUNCTION tenancy.tables_not_shared();
