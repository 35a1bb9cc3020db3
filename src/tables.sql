-- src/tables.sql: the registered tenant tables and their writers (C: tables_writer.c).

------------------------------------------------------------------------------
-- Registered tenant tables: the tables being migrated, their tenant column,
-- how their tenant is derived and where they stand in the migration.
------------------------------------------------------------------------------

CREATE TABLE tenancy.tables (
    relation      regclass PRIMARY KEY,
    column_name   name NOT NULL DEFAULT 'tenant_id',
    source        text,
    stage         text NOT NULL DEFAULT 'expand'
                  CONSTRAINT tables_stage_check
                  CHECK (stage OPERATOR(pg_catalog.=) ANY (ARRAY['expand', 'backfill', 'migrating', 'shadow', 'enforce', 'contract'])),
    registered_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.tables IS 'tables under migration: tenant column, tenant source, stage';
SELECT pg_catalog.pg_extension_config_dump('tenancy.tables', '');
REVOKE ALL ON TABLE tenancy.tables FROM PUBLIC;

-- The writers of tenancy.tables (src/tables_writer.c; the policy stages are
-- written by rls_record()).  No role may write it directly: it says which
-- column holds the tenant and what stage a table is in, and verify(),
-- enforce_not_null() and the contract phase act on it.  They run as the
-- caller and write as the table's owner: registering needs SELECT on the
-- table and UPDATE on the column; a stage change the privileges of the
-- table's owner, except expand to backfill (what registering needs).
CREATE FUNCTION tenancy.tables_register(tbl regclass, column_name name, source text DEFAULT NULL)
RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_tables_register'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.tables_register(regclass, name, text)
    IS 'register a table with its tenant column (or record the source of one that has none); true when a row was written';
CREATE FUNCTION tenancy.tables_set_stage(tbl regclass, stage text, from_stage text DEFAULT NULL)
RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_tables_set_stage'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.tables_set_stage(regclass, text, text)
    IS 'set the stage (expand, backfill, contract) of a registered table, only from from_stage if given; true when it changed';
REVOKE EXECUTE ON FUNCTION tenancy.tables_register(regclass, name, text),
                           tenancy.tables_set_stage(regclass, text, text) FROM PUBLIC;

-- Registry lookups, one of each.  A table that exists but is not in
-- tenancy.tables is not in the state these functions need: 55000
-- (object_not_in_prerequisite_state), as src/status.c raises it too;
-- 42704 (undefined_object) stays for names that do not exist at all.
CREATE FUNCTION tenancy.registered_table(tbl regclass) RETURNS tenancy.tables
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t tenancy.tables;
BEGIN
    SELECT * INTO t FROM tenancy.tables r WHERE r.relation = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not registered in tenancy.tables', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register it with tenancy.add_tenant_column().';
    END IF;
    RETURN t;
END
$$;
COMMENT ON FUNCTION tenancy.registered_table(regclass)
    IS 'the tenancy.tables row of a registered table; 55000 when it is not registered';

-- The tenant column of a table: its registered one, else the default name.
CREATE FUNCTION tenancy.tenant_column(tbl regclass) RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT t.column_name FROM tenancy.tables t WHERE t.relation = tbl), 'tenant_id'::name);
$$;
COMMENT ON FUNCTION tenancy.tenant_column(regclass)
    IS 'the registered tenant column of a table, tenant_id when it is not registered';
