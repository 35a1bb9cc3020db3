-- src/shadow.sql: shadow-mode policy functions and counters (C: shadow.c).

CREATE FUNCTION tenancy.shadow_require_preload() RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_shadow_require_preload'
    LANGUAGE C VOLATILE;

-- Shadow-mode policy functions: always true, count what enforce would do.
CREATE FUNCTION tenancy.shadow_read(rel regclass, tenant uuid) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_read_uuid' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_read(rel regclass, tenant bigint) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_read_bigint' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_read(rel regclass, tenant text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_read_text' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_write(rel regclass, tenant uuid) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_write_uuid' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_write(rel regclass, tenant bigint) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_write_bigint' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
CREATE FUNCTION tenancy.shadow_write(rel regclass, tenant text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_shadow_write_text' LANGUAGE C VOLATILE PARALLEL SAFE COST 10;
COMMENT ON FUNCTION tenancy.shadow_read(regclass, uuid) IS 'shadow-mode USING: true; counts the rows enforce mode would hide';
COMMENT ON FUNCTION tenancy.shadow_write(regclass, uuid) IS 'shadow-mode WITH CHECK: true; counts the writes enforce mode would refuse';

CREATE FUNCTION tenancy.read_shadow_stats(
    OUT relation regclass, OUT rows_checked bigint, OUT rows_hidden bigint,
    OUT writes_refused bigint, OUT last_divergence timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_shadow_stats'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.shadow_stats AS
    SELECT relation, rows_checked, rows_hidden, writes_refused, last_divergence
      FROM tenancy.read_shadow_stats();
COMMENT ON VIEW tenancy.shadow_stats IS 'per table in this database: rows and writes checked by shadow-mode policies, and how many enforce mode would hide or refuse (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.reset_shadow_stats(tbl regclass DEFAULT NULL) RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_reset_shadow_stats'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.reset_shadow_stats(regclass) IS 'reset the shadow counters of a table, or of every table of this database';

CREATE FUNCTION tenancy.shadow_stats_dropped(OUT rows_dropped bigint, OUT divergences_dropped bigint)
    AS 'MODULE_PATHNAME', 'tenancy_shadow_stats_dropped'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.shadow_stats_dropped() IS 'cluster-wide: rows, and divergences among them, that shadow mode could not count because tenancy.shadow_max_tables tables were counted already (since reset_shadow_stats() of every table)';

REVOKE ALL ON TABLE tenancy.shadow_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.read_shadow_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.reset_shadow_stats(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.shadow_stats_dropped() FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.shadow_stats TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.read_shadow_stats() TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.shadow_stats_dropped() TO pg_read_all_stats;
