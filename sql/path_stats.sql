-- What each code path sees (issue 18): shadow-mode counts split by path
-- (legacy: no tenant, or a tenant from a role binding; new: set_tenant(),
-- SET), role and tenant, a sample of recent divergences with their query
-- ids, per-path activity, reset and privileges.  A scripted workload of a
-- legacy role bound to the implicit tenant and an application role.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT current_user AS su \gset
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('acme') IS NOT NULL AS implicit;
CREATE ROLE pth_legacy LOGIN;
CREATE ROLE pth_app LOGIN;
CREATE ROLE pth_monitor LOGIN IN ROLE pg_monitor;
-- Query ids as pg_stat_statements shows them (compute_query_id = on).
ALTER ROLE pth_legacy SET compute_query_id = on;
ALTER ROLE pth_app SET compute_query_id = on;
CREATE TABLE pth_notes (id int PRIMARY KEY, tenant_id uuid, body text);
INSERT INTO pth_notes VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'a'),
                             (2, '00000000-0000-0000-0000-0000000000a1', 'a'),
                             (3, '00000000-0000-0000-0000-0000000000b2', 'b'),
                             (4, NULL, 'legacy');
GRANT SELECT, INSERT ON pth_notes TO pth_legacy, pth_app;
-- A table not in shadow mode is not counted.
CREATE TABLE pth_plain (id int, tenant_id uuid);
INSERT INTO pth_plain VALUES (1, '00000000-0000-0000-0000-0000000000b2');
GRANT SELECT ON pth_plain TO pth_legacy, pth_app;
SELECT tenancy.enable_rls('pth_notes', mode => 'shadow') IS NOT NULL AS enabled;
SELECT tenancy.enable_rls('pth_plain', mode => 'enforce') IS NOT NULL AS enabled;
SELECT tenancy.bind_role('pth_legacy') IS NOT NULL AS bound;
SELECT tenancy.reset_path_stats();
SELECT * FROM tenancy.path_stats;
SELECT * FROM tenancy.tenant_path_stats;
SELECT * FROM tenancy.path_divergences;

-- The legacy role, bound to acme: one read of the four rows (two would be
-- hidden: bolt's and the NULL one), in one transaction; then a write of
-- its own tenant and one of bolt's (refused by enforce mode), two more.
\c - pth_legacy
SELECT tenancy.current_tenant_text() AS bound_tenant;
SELECT count(*) AS visible, max(a.query_id) AS legacy_qid
  FROM pth_notes, pg_stat_activity a WHERE a.pid = pg_backend_pid() \gset
\echo :visible
INSERT INTO pth_notes VALUES (10, '00000000-0000-0000-0000-0000000000a1', 'legacy write');
INSERT INTO pth_notes VALUES (11, '00000000-0000-0000-0000-0000000000b2', 'legacy stray write');
SELECT count(*) AS plain_visible FROM pth_plain;

-- The application role: with set_tenant('bolt'), two reads of the six
-- rows (four would be hidden each time) in one transaction; one write of
-- acme's key (refused); then without a tenant (the legacy path again, and
-- another role): one read, all six hidden.
\c - pth_app
BEGIN;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
SELECT count(*) AS visible, max(a.query_id) AS app_qid
  FROM pth_notes, pg_stat_activity a WHERE a.pid = pg_backend_pid() AND pth_notes.id > 0 \gset
\echo :visible
SELECT count(*) AS visible FROM pth_notes WHERE body <> '';
INSERT INTO pth_notes VALUES (12, '00000000-0000-0000-0000-0000000000a1', 'app stray write');
COMMIT;
SELECT count(*) AS visible FROM pth_notes;
-- SET, too, is the new path (the client chose the tenant).
SET tenancy.tenant_id = '00000000-0000-0000-0000-0000000000a1';
SELECT count(*) AS visible FROM pth_notes WHERE id < 3;
RESET tenancy.tenant_id;
\c - :su
SELECT relation, unmigrated FROM tenancy.refresh_status() ORDER BY relation::text;
\c - pth_app

-- Not readable by the application: tenant keys and role names.
SELECT * FROM tenancy.path_stats;
SELECT * FROM tenancy.tenant_path_stats;
SELECT * FROM tenancy.path_divergences;
SELECT * FROM tenancy.path_activity;
SELECT * FROM tenancy.path_stats_dropped();
SELECT tenancy.reset_path_stats();
SELECT * FROM tenancy.report();

-- pg_monitor reads them (through pg_read_all_stats), and cannot reset.
\c - pth_monitor
SELECT relation, path, role, xacts, reads, rows_read, rows_hidden, rows_written,
       writes_refused, last_divergence IS NOT NULL AS diverged
  FROM tenancy.path_stats ORDER BY relation::text, path, role::text;
SELECT path, xacts, rows_read, rows_hidden, rows_written, writes_refused,
       last_divergence IS NOT NULL AS diverged
  FROM tenancy.path_activity ORDER BY path;
SELECT path, tenant, xacts, rows_read, rows_hidden, rows_written,
       writes_refused, score, last_divergence IS NOT NULL AS diverged
  FROM tenancy.tenant_path_stats;
-- One sample per statement (not per row), oldest first; the query ids are
-- those the statements ran with.
SELECT relation, operation, path, role, tenant, row_tenant, query_id IS NOT NULL AS has_qid,
       at <= now() AS at_ok
  FROM tenancy.path_divergences ORDER BY seq;
-- Query ids identify the statement's shape (constants normalised): the two
-- roles' INSERTs share one, hence five distinct ids for six samples.
SELECT count(*) FILTER (WHERE query_id = :legacy_qid) AS legacy_read_samples,
       count(*) FILTER (WHERE query_id = :app_qid) AS app_read_samples,
       count(DISTINCT query_id) AS distinct_ids
  FROM tenancy.path_divergences;
-- (samples_taken is cluster-wide since start: see test/path_stats_bounds.sh)
SELECT rows_dropped, divergences_dropped, tenants_evicted, tenant_rows_evicted,
       tenant_divergences_evicted FROM tenancy.path_stats_dropped();
SELECT relation, stage, mode, rollout, unmigrated, backfill, legacy_divergences, new_divergences,
       last_change IS NOT NULL AS has_last_change
  FROM tenancy.report();
SELECT relation, stage, mode, rollout, unmigrated, legacy_rows_hidden, legacy_writes_refused,
       new_rows_hidden, new_writes_refused, last_change IS NOT NULL AS has_last_change
  FROM tenancy.migration_overview ORDER BY relation::text;
SELECT tenancy.reset_path_stats();

-- The superuser resets; the counts of an open transaction show before it
-- ends, and a transaction is counted once however many flushes it takes.
\c - :su
SELECT tenancy.reset_path_stats();
SELECT count(*) FROM tenancy.path_stats;
SELECT count(*) FROM tenancy.tenant_path_stats;
SELECT count(*) FROM tenancy.path_divergences;
-- (samples_taken is cluster-wide since start: see test/path_stats_bounds.sh)
SELECT rows_dropped, divergences_dropped, tenants_evicted, tenant_rows_evicted,
       tenant_divergences_evicted FROM tenancy.path_stats_dropped();
SET ROLE pth_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT count(*) AS visible FROM pth_notes;
RESET ROLE;
SELECT path, role, xacts, reads, rows_read, rows_hidden FROM tenancy.path_stats;
SET ROLE pth_app;
SELECT count(*) AS visible FROM pth_notes;
COMMIT;
RESET ROLE;
SELECT path, role, xacts, reads, rows_read, rows_hidden FROM tenancy.path_stats;
SELECT path, tenant, xacts, rows_read, rows_hidden FROM tenancy.tenant_path_stats;
-- A superuser bypasses row security: nothing counted.
SELECT count(*) FROM pth_notes;
SELECT sum(rows_read) FROM tenancy.path_stats;
-- A grant lets another role reset.
GRANT EXECUTE ON FUNCTION tenancy.reset_path_stats() TO pth_monitor;
SET ROLE pth_monitor;
SELECT tenancy.reset_path_stats();
RESET ROLE;
SELECT count(*) FROM tenancy.path_stats;

-- tenancy.path_stats = off: shadow mode counts per table only, as before
-- the path counters.  A superuser setting.
SET ROLE pth_app;
SET tenancy.path_stats = off;
RESET ROLE;
SELECT tenancy.reset_shadow_stats();
SET tenancy.path_stats = off;
SET ROLE pth_app;
SELECT count(*) AS visible FROM pth_notes;
RESET ROLE;
RESET tenancy.path_stats;
SELECT count(*) AS path_entries FROM tenancy.path_stats;
SELECT rows_checked FROM tenancy.shadow_stats WHERE relation = 'pth_notes'::regclass;

-- The report's rollout column (src/rollout.sql): per mode, the tenants
-- listed and the percentage that run the table in it; NULL for a table
-- without a rollout (pth_plain), and again once it is cleared.  pg_monitor
-- reads it too: counts, no tenant key.
SELECT tenancy.create_tenant('cora', 'Cora') IS NOT NULL AS created;
SELECT tenancy.set_tenant_mode('pth_notes', ARRAY['bolt'], 'enforce') IS NOT NULL AS listed;
SELECT relation, mode, rollout, rollout IS NULL AS no_rollout FROM tenancy.report();
SELECT tenancy.set_rollout_percent('pth_notes', 25) IS NOT NULL AS percent;
SELECT relation, mode, rollout FROM tenancy.report();
SELECT tenancy.set_tenant_mode('pth_notes', ARRAY['acme', 'cora'], 'migrating') IS NOT NULL AS listed;
SELECT tenancy.set_rollout_percent('pth_notes', 12.5, 'shadow') IS NOT NULL AS percent;
\c - pth_monitor
SELECT relation, mode, rollout FROM tenancy.migration_overview ORDER BY relation::text;
SELECT relation, mode, rollout FROM tenancy.report();
\c - :su
-- The list alone, then the percentage alone.
SELECT tenancy.set_rollout_percent('pth_notes', 0) IS NOT NULL AS percent;
SELECT relation, rollout FROM tenancy.report();
SELECT tenancy.set_tenant_mode('pth_notes', ARRAY['acme', 'bolt', 'cora'], NULL) IS NOT NULL AS unlisted;
SELECT tenancy.set_rollout_percent('pth_notes', 100, 'enforce') IS NOT NULL AS percent;
SELECT relation, rollout FROM tenancy.report();
SELECT tenancy.clear_rollout('pth_notes') IS NOT NULL AS cleared;
SELECT relation, mode, rollout IS NULL AS no_rollout FROM tenancy.report();
-- The rollout's changes are the table's last change (set_mode() keeps none).
SELECT relation, last_change = (SELECT max(at) FROM tenancy.rollout_log l WHERE l.relation = r.relation) AS rollout_last
  FROM tenancy.report() r;

SELECT tenancy.unbind_role('pth_legacy') IS NOT NULL AS unbound;
DROP TABLE pth_notes, pth_plain;
DROP EXTENSION tenancy;
DROP ROLE pth_legacy, pth_app, pth_monitor;
