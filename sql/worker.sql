-- The background worker (preloaded, tenancy.worker_interval = 1 and this
-- database in tenancy.worker_databases, see test/preload.conf).
CREATE EXTENSION tenancy;

\ir wait_for.psql

CREATE FUNCTION pg_temp.unmigrated(tbl regclass) RETURNS bigint
LANGUAGE sql AS $$ SELECT unmigrated FROM tenancy.migration_status WHERE relation = tbl $$;

-- the launcher runs, named in pg_stat_activity
SELECT pg_temp.wait_for($$EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy launcher' AND application_name = 'tenancy launcher'
      AND query LIKE 'tenancy launcher: idle, interval 1 s%')$$) AS launcher_running;

-- a registered table with NULLs: counted within a couple of intervals
CREATE TABLE worker_locked (id int, tenant_id uuid);
CREATE TABLE worker_orders (id int, tenant_id uuid);
INSERT INTO worker_orders SELECT g, CASE WHEN g % 4 <> 0 THEN '00000000-0000-0000-0000-000000000001'::uuid END
  FROM generate_series(1, 200) g;
INSERT INTO tenancy.tables (relation) VALUES ('worker_locked'), ('worker_orders');
SELECT pg_temp.wait_for($$pg_temp.unmigrated('worker_orders') = 50$$) AS counted;
SELECT relation, column_name, unmigrated, total_rows, percent_migrated, method, scan_position
  FROM tenancy.migration_status ORDER BY relation::text;

-- a table locked by a transaction: the worker waits 100 ms at most for it,
-- shows what it is doing, and goes on with the next table
UPDATE worker_orders SET tenant_id = '00000000-0000-0000-0000-000000000001' WHERE id <= 100;
BEGIN;
LOCK TABLE worker_locked IN ACCESS EXCLUSIVE MODE;
SELECT pg_temp.wait_for($$EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy worker' AND application_name = 'tenancy worker'
      AND datname = current_database() AND wait_event_type = 'Lock'
      AND query = 'tenancy: counting public.worker_locked.tenant_id')$$) AS worker_seen_waiting;
CREATE TEMP TABLE seen AS SELECT clock_timestamp() AS at;
SELECT pg_temp.wait_for($$(SELECT checked_at > seen.at FROM tenancy.migration_status, seen
    WHERE relation = 'worker_orders'::regclass)$$) AS checked_while_locked;
SELECT pg_temp.unmigrated('worker_orders') AS after_lock;
COMMIT;

-- filled: zero
UPDATE worker_orders SET tenant_id = '00000000-0000-0000-0000-000000000001' WHERE tenant_id IS NULL;
SELECT pg_temp.wait_for($$pg_temp.unmigrated('worker_orders') = 0$$) AS all_migrated;
SELECT unmigrated, percent_migrated, method, eta FROM tenancy.migration_status
 WHERE relation = 'worker_orders'::regclass;

-- a dropped table does not stop the worker; its status row goes
CREATE TABLE worker_gone (id int, tenant_id uuid);
INSERT INTO worker_gone VALUES (1, NULL);
INSERT INTO tenancy.tables (relation) VALUES ('worker_gone');
SELECT pg_temp.wait_for($$pg_temp.unmigrated('worker_gone') = 1$$) AS gone_counted;
CREATE TEMP TABLE gone AS SELECT 'worker_gone'::regclass::oid AS oid;
DROP TABLE worker_gone;
UPDATE worker_orders SET tenant_id = NULL WHERE id <= 3;
SELECT pg_temp.wait_for($$pg_temp.unmigrated('worker_orders') = 3$$) AS counted_after_drop;
SELECT pg_temp.wait_for($$NOT EXISTS (SELECT 1 FROM tenancy.migration_status s, gone
    WHERE s.relation::oid = gone.oid)$$) AS gone_pruned;
DELETE FROM tenancy.tables t USING gone WHERE t.relation::oid = gone.oid;

-- terminated, the launcher comes back (after 5 s) and counting goes on
CREATE TEMP TABLE launcher AS
  SELECT pid FROM pg_stat_activity WHERE backend_type = 'tenancy launcher';
SELECT count(*) AS launchers FROM launcher;
SELECT pg_terminate_backend(pid) FROM launcher;
SELECT pg_temp.wait_for($$EXISTS (SELECT 1 FROM pg_stat_activity a
    WHERE backend_type = 'tenancy launcher' AND pid NOT IN (SELECT pid FROM launcher))$$) AS launcher_back;
UPDATE worker_orders SET tenant_id = NULL WHERE id <= 7;
SELECT pg_temp.wait_for($$pg_temp.unmigrated('worker_orders') = 7$$) AS counted_after_restart;

-- a new interval applies on reload: with an hour, no new cycle comes
ALTER SYSTEM SET tenancy.worker_interval = '1h';
SELECT pg_reload_conf();
SELECT pg_temp.wait_for($$EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy launcher' AND query LIKE '%interval 3600 s%')$$) AS interval_hour;
SELECT pg_temp.wait_for($$NOT EXISTS (SELECT 1 FROM pg_stat_activity
    WHERE backend_type = 'tenancy worker' AND datname = current_database())$$) AS cycle_done;
UPDATE worker_orders SET tenant_id = NULL WHERE id <= 9;
SELECT pg_sleep(2);   -- two old intervals: the figure must not move
SELECT pg_temp.unmigrated('worker_orders') AS still_7;
ALTER SYSTEM RESET tenancy.worker_interval;
SELECT pg_reload_conf();
SELECT pg_temp.wait_for($$pg_temp.unmigrated('worker_orders') = 9$$) AS counted_after_reset;

DROP EXTENSION tenancy CASCADE;
DROP TABLE worker_locked, worker_orders;
