-- The progress of a backfill against its estimated total (issue 14, item
-- 11): the last batch counts no more rows than are left, and rows added
-- inside the key range during the run make the scan pass the estimate,
-- which then grows with it (never "330 of ~250 rows").
CREATE EXTENSION tenancy;
CREATE EXTENSION dblink;
\set SHOW_CONTEXT never
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('acme') IS NOT NULL AS implicit;
SELECT format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
              split_part(current_setting('unix_socket_directories'), ',', 1)) AS connstr \gset

-- 1. 250 rows in batches of 100: 250 scanned, not 300.
CREATE TABLE bfe_exact (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bfe_exact SELECT g FROM generate_series(1, 250) g;
SET client_min_messages = warning;
CALL tenancy.backfill('bfe_exact', batch_size => 100, min_batch_size => 100, max_batch_size => 100);
RESET client_min_messages;
SELECT rows_total, rows_scanned, rows_done FROM tenancy.backfill_jobs WHERE relation = 'bfe_exact'::regclass;

-- 2. Rows inserted between the keys while the batches run.
CREATE TABLE bfe_grow (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bfe_grow SELECT 2 * g FROM generate_series(1, 250) g;
CREATE FUNCTION bfe_wait_for(cond text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE ok boolean;
BEGIN
    FOR i IN 1 .. 1000 LOOP
        EXECUTE cond INTO ok;
        IF ok THEN RETURN true; END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
    RETURN false;
END
$$;
SELECT dblink_connect('bfe_bg', :'connstr');
SELECT dblink_send_query('bfe_bg', $$CALL tenancy.backfill('bfe_grow', batch_size => 20, min_batch_size => 20,
    max_batch_size => 20, pause => '50ms')$$);
SELECT bfe_wait_for($$SELECT rows_done >= 20 FROM tenancy.backfill_jobs WHERE relation = 'bfe_grow'::regclass$$) AS progressing;
INSERT INTO bfe_grow SELECT 2 * g + 1 FROM generate_series(0, 249) g;
SELECT dblink_get_result('bfe_bg') IS NOT NULL AS finished;
SELECT dblink_disconnect('bfe_bg');
SELECT rows_scanned > 300 AS passed_estimate, rows_scanned <= rows_total AS within_total, state
  FROM tenancy.backfill_jobs WHERE relation = 'bfe_grow'::regclass;
SELECT percent <= 100 AS percent_ok FROM tenancy.backfill_progress WHERE relation = 'bfe_grow'::regclass;
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS left_null, count(*) AS total FROM bfe_grow;

DROP TABLE bfe_exact, bfe_grow;
DROP FUNCTION bfe_wait_for(text);
DROP EXTENSION dblink;
DROP EXTENSION tenancy;
