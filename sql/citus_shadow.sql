-- Citus helpers on an instance without Citus: nothing is a Citus table,
-- the shard-by-shard counts refuse plain tables, and the cluster-wide
-- shadow counters are this node's own (test/citus_modes.sh runs them on a
-- Citus cluster).
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
CREATE ROLE citus_shadow_app;
CREATE ROLE citus_shadow_reader IN ROLE pg_read_all_stats;
CREATE TABLE "cs %1$s ""notes""" (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO "cs %1$s ""notes""" VALUES (1, '00000000-0000-0000-0000-0000000000a1'), (2, NULL),
                                        (3, '00000000-0000-0000-0000-0000000000b2');
GRANT SELECT ON "cs %1$s ""notes""" TO citus_shadow_app;

-- Not a Citus table (false), NULL for NULL.
SELECT tenancy.rls_citus_distributed('"cs %1$s ""notes"""') AS distributed,
       tenancy.rls_citus_distributed(NULL) IS NULL AS strict;

-- The shard-by-shard counts refuse a table that has no shards (42809).
\set VERBOSITY default
SELECT tenancy.citus_shard_sums('"cs %1$s ""notes"""', 'SELECT count(*) FROM %1$s');
SELECT tenancy.citus_null_tenants('"cs %1$s ""notes"""', 'tenant_id', 'ALL', NULL);
SELECT tenancy.citus_cross_tenant_references('"cs %1$s ""notes"""', '"cs %1$s ""notes"""', 'x.id = p.id', 'true', 'ALL', NULL);
\set VERBOSITY terse

-- verify() counts a plain table as before.
INSERT INTO tenancy.tables (relation) VALUES ('"cs %1$s ""notes"""');
SELECT status, rows_affected FROM tenancy.verify('"cs %1$s ""notes"""') WHERE check_name = 'null_tenant';

-- Without Citus the cluster view is this node's tenancy.shadow_stats.
SELECT tenancy.enable_rls('"cs %1$s ""notes"""', mode => 'shadow') IS NOT NULL AS enabled;
SELECT tenancy.reset_cluster_shadow_stats();
SET ROLE citus_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT count(*) AS visible FROM "cs %1$s ""notes""";
COMMIT;
RESET ROLE;
SELECT relation, rows_checked, rows_hidden, writes_refused, last_divergence IS NOT NULL AS diverged, nodes
  FROM tenancy.cluster_shadow_stats;
SELECT (SELECT array_agg(s ORDER BY s::text) FROM tenancy.shadow_stats s)::text
     = (SELECT array_agg(ROW(c.relation, c.rows_checked, c.rows_hidden, c.writes_refused, c.last_divergence)
                         ORDER BY c::text) FROM tenancy.cluster_shadow_stats c)::text AS same_as_shadow_stats;

-- Who reads and resets it: pg_read_all_stats reads; the application role
-- neither reads nor resets.
SET ROLE citus_shadow_reader;
SELECT rows_checked FROM tenancy.cluster_shadow_stats;
RESET ROLE;
SET ROLE citus_shadow_app;
SELECT rows_checked FROM tenancy.cluster_shadow_stats;
SELECT tenancy.reset_cluster_shadow_stats();
RESET ROLE;

-- Reset one table, then all.
SELECT tenancy.reset_cluster_shadow_stats('"cs %1$s ""notes"""');
SELECT count(*) AS tables_counted FROM tenancy.cluster_shadow_stats;
SELECT tenancy.reset_cluster_shadow_stats();

-- Without Citus the dropped counts are this node's shadow_stats_dropped(),
-- with the one node when it dropped any; pg_read_all_stats only.
SELECT rows_dropped, divergences_dropped, nodes FROM tenancy.cluster_shadow_stats_dropped();
SELECT (SELECT ROW(d.rows_dropped, d.divergences_dropped) FROM tenancy.shadow_stats_dropped() d)::text
     = (SELECT ROW(c.rows_dropped, c.divergences_dropped) FROM tenancy.cluster_shadow_stats_dropped() c)::text
       AS same_as_shadow_stats_dropped;
SET ROLE citus_shadow_reader;
SELECT nodes FROM tenancy.cluster_shadow_stats_dropped();
RESET ROLE;
SET ROLE citus_shadow_app;
SELECT nodes FROM tenancy.cluster_shadow_stats_dropped();
RESET ROLE;

-- The implicit tenant's copy (a Citus worker's; empty elsewhere): nobody
-- but its owner writes it, is_implicit_tenant() reads it when the registry
-- names no implicit tenant, and forgets it when it changes.
SET ROLE citus_shadow_app;
INSERT INTO tenancy.citus_implicit_tenant (tenant) VALUES ('00000000-0000-0000-0000-0000000000a1');
SELECT * FROM tenancy.citus_implicit_tenant;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT tenancy.is_implicit_tenant() AS implicit_without_copy;
COMMIT;
RESET ROLE;
INSERT INTO tenancy.citus_implicit_tenant (tenant) VALUES ('00000000-0000-0000-0000-0000000000a1');
INSERT INTO tenancy.citus_implicit_tenant (tenant) VALUES ('00000000-0000-0000-0000-0000000000b2');
SET ROLE citus_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT tenancy.is_implicit_tenant() AS implicit_by_copy;
COMMIT;
RESET ROLE;
UPDATE tenancy.citus_implicit_tenant SET tenant = '00000000-0000-0000-0000-0000000000b2';
SET ROLE citus_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT tenancy.is_implicit_tenant() AS implicit_after_change;
COMMIT;
RESET ROLE;
DELETE FROM tenancy.citus_implicit_tenant;
-- without Citus, set_implicit_tenant() copies nothing
SELECT tenancy.set_implicit_tenant('acme') IS NOT NULL AS implicit_set;
SELECT count(*) AS copies FROM tenancy.citus_implicit_tenant;

SELECT tenancy.disable_rls('"cs %1$s ""notes"""') IS NOT NULL AS disabled;
DROP TABLE "cs %1$s ""notes""";
DROP ROLE citus_shadow_app;
DROP ROLE citus_shadow_reader;
DROP EXTENSION tenancy;
