-- src/path_stats.sql: what each code path sees (C: path_stats.c).  The
-- shadow-mode counts split by path (legacy: no tenant, or a tenant from a
-- default such as a role binding; new: set_tenant(), a token, SET), role and
-- tenant, and a bounded sample of recent divergences with their query ids.

CREATE FUNCTION tenancy.read_path_stats(
    OUT relation regclass, OUT path text, OUT role regrole, OUT xacts bigint,
    OUT reads bigint, OUT rows_read bigint, OUT rows_hidden bigint,
    OUT rows_written bigint, OUT writes_refused bigint, OUT last_divergence timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_path_stats'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.path_stats AS
    SELECT relation, path, role, xacts, reads, rows_read, rows_hidden,
           rows_written, writes_refused, last_divergence
      FROM tenancy.read_path_stats()
     WHERE relation IS NOT NULL;
COMMENT ON VIEW tenancy.path_stats IS 'shadow-mode counts per table, code path (legacy/new) and role of this database (needs shared_preload_libraries)';

CREATE VIEW tenancy.path_activity AS
    SELECT path, xacts, rows_read, rows_hidden, rows_written, writes_refused, last_divergence
      FROM tenancy.read_path_stats()
     WHERE relation IS NULL;
COMMENT ON VIEW tenancy.path_activity IS 'per code path (legacy/new) of this database: transactions, rows read and written, rows enforce mode would hide, writes it would refuse, over the tables in shadow mode (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.read_tenant_path_stats(
    OUT path text, OUT tenant text, OUT xacts bigint, OUT rows_read bigint, OUT rows_hidden bigint, OUT rows_written bigint,
    OUT writes_refused bigint, OUT score bigint, OUT last_divergence timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_tenant_path_stats'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.tenant_path_stats AS
    SELECT path, tenant, xacts, rows_read, rows_hidden, rows_written,
           writes_refused, score, last_divergence
      FROM tenancy.read_tenant_path_stats();
COMMENT ON VIEW tenancy.tenant_path_stats IS 'shadow-mode counts per code path and current tenant (NULL: none) of this database: the tenancy.path_stats_tenants highest scores (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.read_path_divergences(
    OUT seq bigint, OUT at timestamptz, OUT relation regclass, OUT operation text,
    OUT path text, OUT role regrole, OUT tenant text, OUT row_tenant text,
    OUT query_id bigint)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_path_divergences'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.path_divergences AS
    SELECT seq, at, relation, operation, path, role, tenant, row_tenant, query_id
      FROM tenancy.read_path_divergences();
COMMENT ON VIEW tenancy.path_divergences IS 'recent shadow-mode divergences of this database (the first of each statement per table, path, role and tenant), oldest first; query_id as in pg_stat_statements (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.path_stats_dropped(
    OUT rows_dropped bigint, OUT divergences_dropped bigint, OUT tenants_evicted bigint,
    OUT tenant_rows_evicted bigint, OUT tenant_divergences_evicted bigint,
    OUT samples_taken bigint, OUT samples_overwritten bigint)
    AS 'MODULE_PATHNAME', 'tenancy_path_stats_dropped'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.path_stats_dropped() IS 'cluster-wide: what the bounded path counters could not keep (rows and divergences of a full tenancy.path_stats_max hash, tenants evicted with their counts, divergence samples overwritten)';

CREATE FUNCTION tenancy.reset_path_stats() RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_reset_path_stats'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.reset_path_stats() IS 'reset the path counters, tenants and divergence samples of this database, and what path_stats_dropped() shows';

-- Tenant keys and role names: not for PUBLIC.  pg_read_all_stats (and so
-- pg_monitor) reads; resetting is for superusers and whom they grant it.
REVOKE ALL ON TABLE tenancy.path_stats, tenancy.path_activity,
    tenancy.tenant_path_stats, tenancy.path_divergences FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.read_path_stats(), tenancy.read_tenant_path_stats(),
    tenancy.read_path_divergences(), tenancy.path_stats_dropped(),
    tenancy.reset_path_stats() FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.path_stats, tenancy.path_activity,
    tenancy.tenant_path_stats, tenancy.path_divergences TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.read_path_stats(), tenancy.read_tenant_path_stats(),
    tenancy.read_path_divergences(), tenancy.path_stats_dropped() TO pg_read_all_stats;
