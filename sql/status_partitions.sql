-- Partitioned tables in the migration status (issue 14, item 5): each leaf
-- partition is counted like a plain table (proof, partial index or
-- incremental scan, with its own scan position), the parent shows the sum
-- with the weakest method of its partitions, and the partitions' rows are
-- in tenancy.migration_status_partitions.  Autovacuum never analyzes a
-- partitioned parent: the statistics' estimate is not an answer.
CREATE EXTENSION tenancy;

\ir wait_for.psql

CREATE TABLE sp_pay (id int, tenant_id uuid, amount int) PARTITION BY RANGE (id);
-- one partition NOT NULL (proof), one with a partial index on the NULL rows
-- (exact through it), one plain (incremental scan)
CREATE TABLE sp_pay_notnull PARTITION OF sp_pay (tenant_id NOT NULL) FOR VALUES FROM (0) TO (1000);
CREATE TABLE sp_pay_indexed PARTITION OF sp_pay FOR VALUES FROM (1000) TO (2000);
CREATE INDEX sp_pay_indexed_unmigrated ON sp_pay_indexed (id) WHERE tenant_id IS NULL;
CREATE TABLE sp_pay_plain PARTITION OF sp_pay FOR VALUES FROM (2000) TO (3000);
INSERT INTO sp_pay SELECT g, CASE WHEN g < 1000 OR (g < 2000 AND g % 4 <> 0) OR (g >= 2000 AND g % 5 <> 0)
                                  THEN '00000000-0000-0000-0000-000000000001'::uuid END, g
  FROM generate_series(0, 2999) g;
-- statistics taken with 450 NULLs, then 100 of them filled: 350 are left
ANALYZE sp_pay;
UPDATE sp_pay SET tenant_id = '00000000-0000-0000-0000-000000000001' WHERE id % 20 = 0 AND tenant_id IS NULL;
SELECT count(*) AS really_unmigrated FROM sp_pay WHERE tenant_id IS NULL;
INSERT INTO tenancy.tables (relation) VALUES ('sp_pay');

-- the background worker counts it: the parent's figure is the exact sum
SELECT pg_temp.wait_for($$(SELECT unmigrated = 350 AND method = 'exact' FROM tenancy.migration_status
    WHERE relation = 'sp_pay'::regclass)$$) AS worker_counted;
-- (total_rows: the planner's estimates of the partitions counted without a scan)
SELECT relation, unmigrated, total_rows >= 3000 AS total_rows, method, scan_position
  FROM tenancy.migration_status WHERE relation = 'sp_pay'::regclass;
SELECT relation, parent, column_name, unmigrated, total_rows >= 1000 AS total_rows, method, scan_position
  FROM tenancy.migration_status_partitions ORDER BY relation::text;

-- Switch the worker off and wait until none is left in this database.
ALTER SYSTEM SET tenancy.worker_enabled = off;
SELECT pg_reload_conf();
SELECT pg_temp.wait_for($$EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy launcher' AND query LIKE '%disabled%')$$) AS launcher_disabled;
SELECT pg_temp.wait_for($$NOT EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy worker' AND datname = current_database())$$) AS no_worker;

-- refresh_status(): one step per call (no budget), one partition per step,
-- the plain partition one page per step; the parent keeps the last figures
-- of the partitions not yet visited in this pass
INSERT INTO sp_pay SELECT g, NULL, 0 FROM generate_series(2000, 2009) g;
SET tenancy.worker_cycle_budget = 0;
SET tenancy.worker_chunk_pages = 1;
CREATE TEMP TABLE steps (step int, parent_unmigrated bigint, parent_method text, in_pass boolean,
                         plain_unmigrated bigint, plain_position bigint);
DO $$
BEGIN
    FOR i IN 1..40 LOOP
        PERFORM tenancy.refresh_status('sp_pay');
        INSERT INTO steps
        SELECT i, s.unmigrated, s.method, s.scan_position IS NOT NULL, p.unmigrated, p.scan_position
          FROM tenancy.migration_status s, tenancy.migration_status_partitions p
         WHERE s.relation = 'sp_pay'::regclass AND p.relation = 'sp_pay_plain'::regclass;
        EXIT WHEN NOT (SELECT in_pass FROM steps WHERE step = i);
    END LOOP;
END $$;
SELECT count(*) = pg_relation_size('sp_pay_plain') / current_setting('block_size')::int + 2
       AS one_step_per_partition_and_page,
       bool_and(parent_unmigrated = 350 AND plain_unmigrated = 150) FILTER (WHERE in_pass) AS old_figures_during_the_pass,
       count(DISTINCT plain_position) FILTER (WHERE in_pass AND plain_position IS NOT NULL) > 1 AS plain_scanned_in_chunks
  FROM steps;
SELECT parent_unmigrated, parent_method, in_pass, plain_unmigrated, plain_position
  FROM steps ORDER BY step DESC LIMIT 1;
RESET tenancy.worker_cycle_budget;
RESET tenancy.worker_chunk_pages;

-- a partition attached later is counted; a detached one leaves the sum
CREATE TABLE sp_pay_new (LIKE sp_pay);
INSERT INTO sp_pay_new SELECT g, NULL, 0 FROM generate_series(3000, 3006) g;
ALTER TABLE sp_pay ATTACH PARTITION sp_pay_new FOR VALUES FROM (3000) TO (4000);
SELECT unmigrated, method FROM tenancy.refresh_status('sp_pay');
ALTER TABLE sp_pay DETACH PARTITION sp_pay_plain;
SELECT unmigrated, method FROM tenancy.refresh_status('sp_pay');
SELECT relation, unmigrated, method FROM tenancy.migration_status_partitions ORDER BY relation::text;
-- a partition not counted yet (a new pass stopped before it): the parent is
-- an estimate until it is
SET tenancy.worker_cycle_budget = 0;
ALTER TABLE sp_pay ATTACH PARTITION sp_pay_plain FOR VALUES FROM (2000) TO (3000);
SELECT unmigrated IS NOT NULL AS has_figure, method FROM tenancy.refresh_status('sp_pay');
RESET tenancy.worker_cycle_budget;
SELECT unmigrated, method FROM tenancy.refresh_status('sp_pay');

-- a partitioned table NOT NULL on the parent: proof for every partition
CREATE TABLE sp_done (id int, tenant_id uuid NOT NULL) PARTITION BY LIST (id);
CREATE TABLE sp_done_1 PARTITION OF sp_done FOR VALUES IN (1);
CREATE TABLE sp_done_2 PARTITION OF sp_done FOR VALUES IN (2);
INSERT INTO tenancy.tables (relation) VALUES ('sp_done');
SELECT relation, unmigrated, method FROM tenancy.refresh_status('sp_done');

-- unregistered or dropped: the partitions' rows go with the parent's
DELETE FROM tenancy.tables WHERE relation = 'sp_done'::regclass;
DROP TABLE sp_pay_plain;
SELECT count(*) FROM tenancy.refresh_status();
SELECT relation::text FROM tenancy.migration_status_partitions ORDER BY 1;
DROP TABLE sp_pay;
SELECT count(*) FROM tenancy.refresh_status();
SELECT count(*) AS partition_rows FROM tenancy.migration_status_partitions;

-- The store-rental fixture: payment, range-partitioned by month, its keys
-- on the partitions.  The tenant column is added with add_tenant_column()
-- (NULL in every row): the parent's figure is the number of payments, each
-- month a partition row; then the first month is filled.
\set ECHO none
\o /dev/null
SET client_min_messages = warning;
\ir ../test/fixtures/store_rental.sql
SELECT tenancy.create_tenant('store-1', 'Store 1', '00000000-0000-0000-0000-000000000001');
SELECT tenancy.set_implicit_tenant('store-1');
SELECT tenancy.add_tenant_column('rental.payment');
RESET client_min_messages;
\o
\set ECHO all
SELECT (SELECT count(*) FROM rental.payment) AS payments, unmigrated, method
  FROM tenancy.refresh_status('rental.payment');
SELECT count(*) AS partitions, bool_and(method = 'exact') AS all_exact, sum(unmigrated) AS unmigrated
  FROM tenancy.migration_status_partitions WHERE parent = 'rental.payment'::regclass;
UPDATE rental.payment SET tenant_id = '00000000-0000-0000-0000-000000000001'
 WHERE payment_date < '2022-02-01';
SELECT (SELECT count(*) FROM rental.payment WHERE tenant_id IS NULL) AS really_unmigrated, unmigrated, method
  FROM tenancy.refresh_status('rental.payment');
SELECT relation, unmigrated = 0 AS filled, method
  FROM tenancy.migration_status_partitions WHERE parent = 'rental.payment'::regclass ORDER BY relation::text;
SET client_min_messages = warning;
DROP SCHEMA rental CASCADE;
RESET client_min_messages;

-- switch the worker back on
ALTER SYSTEM RESET tenancy.worker_enabled;
SELECT pg_reload_conf();
SELECT pg_temp.wait_for($$EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy launcher' AND query LIKE '%interval%')$$) AS launcher_enabled;

DROP TABLE sp_done;
DROP EXTENSION tenancy;
