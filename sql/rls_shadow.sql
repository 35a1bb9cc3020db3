-- Shadow mode: nothing is hidden or refused; what enforce mode would hide
-- or refuse is counted per table in shared memory and can be sampled into
-- the log.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
CREATE ROLE rls_shadow_app;
CREATE ROLE rls_shadow_reader IN ROLE pg_read_all_stats;
CREATE TABLE notes (id int PRIMARY KEY, tenant_id uuid, body text);
CREATE INDEX ON notes (tenant_id);
CREATE TABLE "Other Notes" (id int, tenant_id uuid);
CREATE INDEX ON "Other Notes" (tenant_id);
INSERT INTO notes VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'a'),
                         (2, '00000000-0000-0000-0000-0000000000a1', 'a'),
                         (3, '00000000-0000-0000-0000-0000000000b2', 'b'),
                         (4, NULL, 'legacy');
INSERT INTO "Other Notes" VALUES (1, '00000000-0000-0000-0000-0000000000b2');
GRANT SELECT, INSERT, UPDATE, DELETE ON notes, "Other Notes" TO rls_shadow_app, rls_shadow_reader;
SELECT tenancy.enable_rls('notes', mode => 'shadow') IS NOT NULL AS enabled;
SELECT tenancy.enable_rls('"Other Notes"', mode => 'shadow') IS NOT NULL AS enabled;
SELECT stage FROM tenancy.tables ORDER BY relation::text;
SELECT tenancy.reset_shadow_stats();
SELECT * FROM tenancy.shadow_stats;

-- Nothing hidden: tenant acme reads all four rows, two of which enforce
-- mode would hide (bolt's row and the NULL one).
SET ROLE rls_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT count(*) AS visible FROM notes;
COMMIT;
RESET ROLE;
SELECT relation, rows_checked, rows_hidden, writes_refused, last_divergence IS NOT NULL AS diverged
  FROM tenancy.shadow_stats ORDER BY relation::text;

-- Nothing refused: a write of another tenant's key goes through, counted.
SET ROLE rls_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
INSERT INTO notes VALUES (5, '00000000-0000-0000-0000-0000000000b2', 'bolt''s'),
                         (6, '00000000-0000-0000-0000-0000000000a1', 'mine');
UPDATE notes SET body = 'fine' WHERE id = 1;
SELECT count(*) AS visible FROM "Other Notes";
COMMIT;
-- Without a tenant, enforce mode would hide every row and refuse every write.
SELECT count(*) AS visible FROM notes;
INSERT INTO notes VALUES (7, NULL, 'no tenant');
RESET ROLE;
SELECT relation, rows_checked, rows_hidden, writes_refused, last_divergence IS NOT NULL AS diverged
  FROM tenancy.shadow_stats ORDER BY relation::text;

-- Counts of the current transaction show before it ends.
SET ROLE rls_shadow_reader;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT count(*) FROM notes WHERE id = 1;
SELECT rows_checked FROM tenancy.shadow_stats WHERE relation = 'notes'::regclass;
COMMIT;
RESET ROLE;
-- A superuser bypasses row security: nothing is checked, nothing counted.
SELECT count(*) FROM notes;
SELECT rows_checked FROM tenancy.shadow_stats WHERE relation = 'notes'::regclass;

-- Sampling into the log: table, current tenant, row tenant.
-- The rate is a superuser setting.
SET ROLE rls_shadow_app;
SET tenancy.shadow_log_sample_rate = 1;
RESET ROLE;
SET tenancy.shadow_log_sample_rate = 1;
SET client_min_messages = log;
SET ROLE rls_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
SELECT id FROM notes WHERE id IN (1, 3, 4) ORDER BY id;
UPDATE "Other Notes" SET tenant_id = '00000000-0000-0000-0000-0000000000a1';
COMMIT;
RESET ROLE;
RESET client_min_messages;
RESET tenancy.shadow_log_sample_rate;

-- Reset one table, then all.
SELECT tenancy.reset_shadow_stats('notes');
SELECT relation FROM tenancy.shadow_stats ORDER BY relation::text;
SELECT tenancy.reset_shadow_stats();
SELECT count(*) AS tables FROM tenancy.shadow_stats;

-- Who may read and reset the counters.
SET ROLE rls_shadow_app;
SELECT count(*) FROM tenancy.shadow_stats;
SELECT tenancy.reset_shadow_stats();
RESET ROLE;
SET ROLE rls_shadow_reader;
SELECT count(*) AS tables FROM tenancy.shadow_stats;
RESET ROLE;

-- Switching to enforce: the same reads now hide what shadow mode counted.
SELECT tenancy.set_mode('notes', 'enforce') IS NOT NULL AS switched;
SET ROLE rls_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT array_agg(id ORDER BY id) AS visible FROM notes;
COMMIT;
RESET ROLE;
SELECT count(*) AS tables FROM tenancy.shadow_stats;

DROP TABLE notes, "Other Notes";
DROP EXTENSION tenancy CASCADE;
DROP ROLE rls_shadow_app, rls_shadow_reader;
