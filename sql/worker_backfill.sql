-- Queued backfills run by the background worker (tenancy.queue_backfill()
-- from the backfill feature; the worker runs CALL tenancy.backfill() for
-- each queued job, as the role that queued it).
CREATE EXTENSION tenancy;

\ir wait_for.psql

-- test/preload.conf keeps queued jobs for CALL; this test lets the worker run them
ALTER SYSTEM SET tenancy.worker_run_backfills = on;
SELECT pg_reload_conf();

SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1');
SELECT tenancy.set_implicit_tenant('acme');
CREATE TABLE worker_bf_orders (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO worker_bf_orders SELECT g, NULL FROM generate_series(1, 3000) g;

-- queued, then run in the background in batches that each commit
SELECT tenancy.queue_backfill('worker_bf_orders', batch_size => 500) > 0 AS queued;
SELECT pg_temp.wait_for($$(SELECT state = 'done' FROM tenancy.backfill_jobs
                            WHERE relation = 'worker_bf_orders'::regclass)$$) AS job_done;
SELECT state, rows_done, batches >= 6 AS batched, last_error
  FROM tenancy.backfill_jobs WHERE relation = 'worker_bf_orders'::regclass;
SELECT state, percent FROM tenancy.backfill_progress WHERE relation = 'worker_bf_orders'::regclass;
SELECT count(*) AS still_null FROM worker_bf_orders WHERE tenant_id IS NULL;
SELECT pg_temp.wait_for($$(SELECT unmigrated = 0 FROM tenancy.migration_status
                            WHERE relation = 'worker_bf_orders'::regclass)$$) AS status_zero;

-- a job runs with the privileges of the role that queued it, not the
-- worker's: a role that may not update the table gets a failed job
CREATE ROLE worker_backfill_nobody;
CREATE TABLE worker_bf_items (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO worker_bf_items VALUES (1, NULL), (2, NULL);
CREATE TEMP TABLE job AS SELECT tenancy.queue_backfill('worker_bf_items') AS id;
UPDATE tenancy.backfill_jobs j SET created_by = 'worker_backfill_nobody' FROM job WHERE j.id = job.id;
SELECT pg_temp.wait_for($$(SELECT state = 'failed' FROM tenancy.backfill_jobs j, job
                            WHERE j.id = job.id)$$) AS job_failed;
SELECT j.state, j.last_error LIKE 'permission denied%' AS permission_denied
  FROM tenancy.backfill_jobs j, job WHERE j.id = job.id;
SELECT count(*) AS still_null FROM worker_bf_items WHERE tenant_id IS NULL;

-- a job whose role is gone fails, saying why
DELETE FROM tenancy.backfill_jobs j USING job WHERE j.id = job.id;
TRUNCATE job;
INSERT INTO job SELECT tenancy.queue_backfill('worker_bf_items');
CREATE ROLE worker_backfill_ghost;
SELECT 'worker_backfill_ghost'::regrole::oid AS ghost \gset
DROP ROLE worker_backfill_ghost;
UPDATE tenancy.backfill_jobs j SET created_by = :ghost FROM job WHERE j.id = job.id;
SELECT pg_temp.wait_for($$(SELECT state = 'failed' FROM tenancy.backfill_jobs j, job
                            WHERE j.id = job.id)$$) AS job_failed;
SELECT j.state, replace(j.last_error, :'ghost', 'N') AS last_error FROM tenancy.backfill_jobs j, job WHERE j.id = job.id;

-- the job of a superuser other than the worker's role is not run by it
-- (issue 13: only that superuser runs it)
DELETE FROM tenancy.backfill_jobs j USING job WHERE j.id = job.id;
TRUNCATE job;
INSERT INTO job SELECT tenancy.queue_backfill('worker_bf_items');
CREATE ROLE worker_backfill_admin SUPERUSER;
UPDATE tenancy.backfill_jobs j SET created_by = 'worker_backfill_admin' FROM job WHERE j.id = job.id;
SELECT pg_temp.wait_for($$(SELECT state = 'failed' FROM tenancy.backfill_jobs j, job
                            WHERE j.id = job.id)$$) AS job_failed;
SELECT j.state, j.last_error FROM tenancy.backfill_jobs j, job WHERE j.id = job.id;
SELECT count(*) AS still_null FROM worker_bf_items WHERE tenant_id IS NULL;

ALTER SYSTEM RESET tenancy.worker_run_backfills;
SELECT pg_reload_conf();
DROP EXTENSION tenancy CASCADE;
DROP TABLE worker_bf_orders, worker_bf_items;
DROP ROLE worker_backfill_nobody, worker_backfill_admin;
