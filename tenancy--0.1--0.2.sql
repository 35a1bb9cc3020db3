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

-- issue 18: ro-paths (what each path sees, dashboards): src/path_stats.sql and src/report.sql
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

-- src/report.sql: the migration's state on one screen: a view for the
-- dashboards (monitoring/postgres_exporter.yml) and tenancy.report() for
-- psql users.  Divergences come from the path counters (path_stats.sql).

-- Per registered table: stage, row security mode, rollout, what is left to
-- migrate, the backfill, and the shadow divergences by path.  The rollout
-- column stays NULL until per-tenant rollout records one.
CREATE VIEW tenancy.migration_overview AS
SELECT t.relation,
       t.stage,
       r.mode,
       NULL::text AS rollout,
       s.unmigrated,
       s.total_rows,
       s.percent_migrated,
       s.rate_per_s AS migrated_per_s,
       b.state AS backfill_state,
       b.percent AS backfill_percent,
       b.rows_done AS backfill_rows_done,
       b.rows_per_s AS backfill_rows_per_s,
       coalesce(d.legacy_hidden, 0) AS legacy_rows_hidden,
       coalesce(d.legacy_refused, 0) AS legacy_writes_refused,
       coalesce(d.new_hidden, 0) AS new_rows_hidden,
       coalesce(d.new_refused, 0) AS new_writes_refused,
       GREATEST(t.registered_at, r.enabled_at, c.last_step) AS last_change
  FROM tenancy.tables t
  LEFT JOIN tenancy.rls_tables r ON r.relation OPERATOR(pg_catalog.=) t.relation
  LEFT JOIN tenancy.migration_status s ON s.relation OPERATOR(pg_catalog.=) t.relation
  LEFT JOIN LATERAL (
        SELECT p.state, p.percent, p.rows_done, p.rows_per_s
          FROM tenancy.backfill_progress p
         WHERE p.relation OPERATOR(pg_catalog.=) t.relation
         ORDER BY p.id DESC LIMIT 1) b ON true
  LEFT JOIN LATERAL (
        SELECT max(GREATEST(l.done_at, l.undone_at)) AS last_step
          FROM tenancy.contract_log l
         WHERE l.relation OPERATOR(pg_catalog.=) t.relation) c ON true
  LEFT JOIN LATERAL (
        SELECT sum(p.rows_hidden) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'legacy')::bigint AS legacy_hidden,
               sum(p.writes_refused) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'legacy')::bigint AS legacy_refused,
               sum(p.rows_hidden) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'new')::bigint AS new_hidden,
               sum(p.writes_refused) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'new')::bigint AS new_refused
          FROM tenancy.read_path_stats() p
         WHERE p.relation OPERATOR(pg_catalog.=) t.relation) d ON true;
COMMENT ON VIEW tenancy.migration_overview IS 'per registered table: stage, mode, rollout, unmigrated rows, backfill, shadow divergences by path, last change (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.report()
RETURNS TABLE (relation regclass, stage text, mode text, rollout text,
               unmigrated bigint, backfill text, legacy_divergences bigint,
               new_divergences bigint, last_change timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.relation, o.stage, o.mode, o.rollout, o.unmigrated,
           CASE WHEN o.backfill_state IS NULL THEN NULL
                ELSE o.backfill_state || coalesce(' ' || o.backfill_percent || '%', '') END,
           o.legacy_rows_hidden + o.legacy_writes_refused,
           o.new_rows_hidden + o.new_writes_refused,
           o.last_change
      FROM tenancy.migration_overview o
     ORDER BY o.relation::text COLLATE "C"
$$;
COMMENT ON FUNCTION tenancy.report() IS 'the whole migration on one screen: per table stage, mode, rollout, unmigrated rows, backfill, divergences by path (rows hidden + writes refused), last change';

REVOKE ALL ON TABLE tenancy.migration_overview FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.report() FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.migration_overview TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.report() TO pg_read_all_stats;
