-- tenancy.refresh_status(): each counting method, on demand, without the
-- background worker (which is switched off for this database meanwhile).
CREATE EXTENSION tenancy;

\ir wait_for.psql

-- Switch the worker off and wait until none is left in this database.
ALTER SYSTEM SET tenancy.worker_enabled = off;
SELECT pg_reload_conf();
SELECT pg_temp.wait_for($$EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy launcher' AND query LIKE '%disabled%')$$) AS launcher_disabled;
SELECT pg_temp.wait_for($$NOT EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy worker' AND datname = current_database())$$) AS no_worker;

-- proof: NOT NULL, or a validated CHECK (col IS NOT NULL)
CREATE TABLE rs_notnull (id int, tenant_id uuid NOT NULL);
CREATE TABLE rs_check (id int, tenant_id uuid CHECK (tenant_id IS NOT NULL AND id > 0));
-- a CHECK that is NOT VALID proves nothing: counted
CREATE TABLE rs_notvalid (id int, tenant_id uuid);
INSERT INTO rs_notvalid VALUES (1, NULL), (2, NULL), (3, '00000000-0000-0000-0000-000000000001');
ALTER TABLE rs_notvalid ADD CONSTRAINT rs_notvalid_check CHECK (tenant_id IS NOT NULL) NOT VALID;
INSERT INTO tenancy.tables (relation) VALUES ('rs_notnull'), ('rs_check'), ('rs_notvalid');
SELECT relation, column_name, unmigrated, method, scan_position, eta
  FROM tenancy.refresh_status() ORDER BY relation::text;

-- exact through a partial index on the NULL rows, which the count uses
CREATE TABLE rs_index (id int, tenant_id uuid);
INSERT INTO rs_index SELECT g, CASE WHEN g % 50 <> 0 THEN '00000000-0000-0000-0000-000000000001'::uuid END
  FROM generate_series(1, 5000) g;
CREATE INDEX rs_index_unmigrated ON rs_index (id) WHERE tenant_id IS NULL;
-- an index with a wider predicate would miss rows: not used
CREATE INDEX rs_index_other ON rs_index (id) WHERE tenant_id IS NULL OR id < 0;
VACUUM ANALYZE rs_index;
INSERT INTO tenancy.tables (relation) VALUES ('rs_index');
-- (scans counted in this transaction: differences, as pending stats are not flushed in it)
BEGIN;
CREATE TEMP TABLE scans AS
  SELECT pg_stat_get_xact_numscans('rs_index_unmigrated'::regclass) AS partial,
         pg_stat_get_xact_numscans('rs_index_other'::regclass) AS other,
         pg_stat_get_xact_numscans('rs_index'::regclass) AS seq;
SELECT relation, unmigrated, method, total_rows, percent_migrated, scan_position
  FROM tenancy.refresh_status('rs_index');
SELECT pg_stat_get_xact_numscans('rs_index_unmigrated'::regclass) - partial AS partial_index_scans,
       pg_stat_get_xact_numscans('rs_index_other'::regclass) - other AS other_index_scans,
       pg_stat_get_xact_numscans('rs_index'::regclass) - seq AS seq_scans
  FROM scans;
COMMIT;

-- without such an index: an incremental scan, a chunk per step; until the
-- first pass ends the figure is the statistics' estimate
CREATE TABLE rs_scan (id int, tenant_id uuid, pad text);
INSERT INTO rs_scan SELECT g, CASE WHEN g % 10 <> 0 THEN '00000000-0000-0000-0000-000000000001'::uuid END,
       repeat('x', 100)
  FROM generate_series(1, 3000) g;
ANALYZE rs_scan;
INSERT INTO tenancy.tables (relation) VALUES ('rs_scan');
-- three chunks per pass, one step per call
SELECT set_config('tenancy.worker_chunk_pages',
                  (pg_relation_size('rs_scan') / current_setting('block_size')::int / 3 + 1)::text,
                  false) IS NOT NULL AS chunk_set;
SET tenancy.worker_cycle_budget = 0;
SELECT unmigrated, method, scan_position > 0 AS scanning, scan_unmigrated > 0 AS partial
  FROM tenancy.refresh_status('rs_scan');
SELECT unmigrated, method, scan_position > 0 AS scanning
  FROM tenancy.refresh_status('rs_scan');
SELECT unmigrated, method, total_rows, percent_migrated, scan_position, rate_per_s, eta
  FROM tenancy.refresh_status('rs_scan');
-- the next pass shows the last complete figure until it ends
UPDATE rs_scan SET tenant_id = '00000000-0000-0000-0000-000000000002' WHERE id % 20 = 0;
SELECT unmigrated, method, scan_position > 0 AS scanning
  FROM tenancy.refresh_status('rs_scan');
-- with a time budget a call goes on until the pass ends
RESET tenancy.worker_cycle_budget;
SELECT unmigrated, method, scan_position, prev_unmigrated, rate_per_s > 0 AS progressing,
       eta IS NOT NULL AS has_eta
  FROM tenancy.refresh_status('rs_scan');
-- the CHECK constraint validated: a proof from now on
ALTER TABLE rs_notvalid VALIDATE CONSTRAINT rs_notvalid_check;
-- (fails: two rows are still NULL)
UPDATE rs_notvalid SET tenant_id = '00000000-0000-0000-0000-000000000001';
ALTER TABLE rs_notvalid VALIDATE CONSTRAINT rs_notvalid_check;
SELECT unmigrated, method, eta FROM tenancy.refresh_status('rs_notvalid');
RESET tenancy.worker_chunk_pages;

-- partitioned tables: counted partition by partition, the parent is the sum
CREATE TABLE rs_part (id int, tenant_id uuid) PARTITION BY RANGE (id);
CREATE TABLE rs_part_1 PARTITION OF rs_part FOR VALUES FROM (0) TO (1000);
CREATE TABLE rs_part_2 PARTITION OF rs_part FOR VALUES FROM (1000) TO (2000);
INSERT INTO rs_part SELECT g, CASE WHEN g % 4 <> 0 THEN '00000000-0000-0000-0000-000000000001'::uuid END
  FROM generate_series(0, 1999) g;
ANALYZE rs_part;
INSERT INTO tenancy.tables (relation) VALUES ('rs_part');
SELECT unmigrated, method, total_rows FROM tenancy.refresh_status('rs_part');

-- errors: not registered, wrong kind of relation, missing column
CREATE TABLE rs_unregistered (id int);
SELECT * FROM tenancy.refresh_status('rs_unregistered');
CREATE VIEW rs_view AS SELECT 1 AS tenant_id;
CREATE TABLE rs_nocolumn (id int);
INSERT INTO tenancy.tables (relation) VALUES ('rs_view'), ('rs_nocolumn');
SELECT * FROM tenancy.refresh_status('rs_view');
SELECT * FROM tenancy.refresh_status('rs_nocolumn');
-- for all tables, an error on one is a warning and the others are counted
SELECT relation, unmigrated, method FROM tenancy.refresh_status() ORDER BY relation::text;
DELETE FROM tenancy.tables WHERE relation IN ('rs_view'::regclass, 'rs_nocolumn'::regclass);

-- a dropped table's status row goes at the next refresh
DROP TABLE rs_part;
SELECT count(*) FROM tenancy.refresh_status();
SELECT count(*) AS part_rows FROM tenancy.migration_status WHERE relation::text LIKE 'rs_part%';

-- only for the extension owner and those it grants
CREATE ROLE refresh_status_app;
SET ROLE refresh_status_app;
SELECT * FROM tenancy.refresh_status();
RESET ROLE;
DROP ROLE refresh_status_app;

-- a role subject to row security gets an error, never a partial count
CREATE TABLE rs_rls (id int, tenant_id uuid);
INSERT INTO rs_rls VALUES (1, NULL), (2, NULL);
ALTER TABLE rs_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY rs_rls_none ON rs_rls USING (false);
INSERT INTO tenancy.tables (relation) VALUES ('rs_rls');
CREATE ROLE refresh_status_rls;
GRANT SELECT ON rs_rls, tenancy.tables TO refresh_status_rls;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenancy.migration_status TO refresh_status_rls;
GRANT EXECUTE ON FUNCTION tenancy.refresh_status(regclass) TO refresh_status_rls;
SET ROLE refresh_status_rls;
SELECT unmigrated FROM tenancy.refresh_status('rs_rls');
RESET ROLE;
SELECT unmigrated, method FROM tenancy.refresh_status('rs_rls');
DROP OWNED BY refresh_status_rls;
DROP ROLE refresh_status_rls;

-- switch the worker back on
ALTER SYSTEM RESET tenancy.worker_enabled;
SELECT pg_reload_conf();
SELECT pg_temp.wait_for($$EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy launcher' AND query LIKE '%interval%')$$) AS launcher_enabled;

DROP EXTENSION tenancy CASCADE;
DROP TABLE rs_notnull, rs_check, rs_notvalid, rs_index, rs_scan, rs_unregistered, rs_nocolumn, rs_rls;
DROP VIEW rs_view;
