-- src/report.sql: the migration's state on one screen: a view for the
-- dashboards (monitoring/postgres_exporter.yml) and tenancy.report() for
-- psql users.  Divergences come from the path counters (path_stats.sql).

-- Per registered table: stage, row security mode, rollout, what is left to
-- migrate, the backfill, and the shadow divergences by path.  The rollout
-- column (src/rollout.sql) is NULL for a table without a per-tenant
-- rollout, else per mode the tenants listed and the percentage that run the
-- table in it: 'enforce: 1 tenant + 25%; shadow: 2 tenants'.  Counts only:
-- the view's readers (pg_read_all_stats) learn no tenant key.  last_change
-- counts the rollout's changes (tenancy.rollout_log) too.
CREATE VIEW tenancy.migration_overview AS
SELECT t.relation,
       t.stage,
       r.mode,
       ro.rollout,
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
       GREATEST(t.registered_at, r.enabled_at, r.mode_changed_at, ro.rollout_changed, c.last_step) AS last_change
  FROM tenancy.tables t
  LEFT JOIN tenancy.rls_tables r ON r.relation OPERATOR(pg_catalog.=) t.relation
  LEFT JOIN LATERAL (
        SELECT string_agg(m.mode OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) concat_ws(' + ',
                   CASE WHEN n.listed OPERATOR(pg_catalog.>) 0
                        THEN n.listed OPERATOR(pg_catalog.||) CASE WHEN n.listed OPERATOR(pg_catalog.=) 1 THEN ' tenant' ELSE ' tenants' END END,
                   CASE WHEN p.relation IS NOT NULL
                        THEN trim_scale(p.buckets OPERATOR(pg_catalog./) 100.0) OPERATOR(pg_catalog.||) '%' END),
                          '; ' ORDER BY m.ord) AS rollout,
               (SELECT max(l.at) FROM tenancy.rollout_log l
                 WHERE l.relation OPERATOR(pg_catalog.=) r.root) AS rollout_changed
          FROM unnest(ARRAY['enforce', 'migrating', 'shadow']) WITH ORDINALITY AS m(mode, ord)
          LEFT JOIN tenancy.rollouts p ON p.relation OPERATOR(pg_catalog.=) r.root
                AND p.buckets OPERATOR(pg_catalog.>) 0 AND p.percent_mode OPERATOR(pg_catalog.=) m.mode
          CROSS JOIN LATERAL (
                SELECT count(*) AS listed FROM tenancy.rollout_tenants x
                 WHERE x.relation OPERATOR(pg_catalog.=) r.root AND x.mode OPERATOR(pg_catalog.=) m.mode) n
         WHERE n.listed OPERATOR(pg_catalog.>) 0 OR p.relation IS NOT NULL) ro ON true
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
