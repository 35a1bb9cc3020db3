-- CALL tenancy.backfill(): sources, key shapes, idempotence, resume after
-- max_runtime and after an error, retries, bad input.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111');
SELECT tenancy.create_tenant('beta', 'Beta', '22222222-2222-2222-2222-222222222222');
CREATE TABLE bf_plain (id int PRIMARY KEY, v text);
INSERT INTO bf_plain SELECT g, 'v' || g FROM generate_series(1, 25) g;
ALTER TABLE bf_plain ADD COLUMN tenant_id uuid;

-- No source and no implicit tenant.
CALL tenancy.backfill('bf_plain');
SELECT tenancy.set_implicit_tenant('acme');

-- Constant source, default: the implicit tenant; batches of 10 rows.
CALL tenancy.backfill('bf_plain', batch_size => 10, max_batch_size => 10);
SELECT tenant_id, count(*) FROM bf_plain GROUP BY tenant_id;
SELECT state, source_kind, source, method, key_columns, phase, cursor, upper_bound IS NOT NULL AS has_upper,
       rows_done, rows_total, batches >= 3 AS batched, pid, finished_at IS NOT NULL AS finished
  FROM tenancy.backfill_jobs WHERE relation = 'bf_plain'::regclass;
SELECT relation, column_name, source, stage FROM tenancy.tables;

-- Idempotent: a second run finds nothing to do and changes nothing.
SELECT xmin::text AS xmin_before FROM bf_plain WHERE id = 1 \gset
CALL tenancy.backfill('bf_plain');
SELECT xmin::text = :'xmin_before' AS unchanged FROM bf_plain WHERE id = 1;
SELECT id, state, rows_done, batches FROM tenancy.backfill_jobs WHERE relation = 'bf_plain'::regclass ORDER BY id;

-- Constant source by slug; an unknown tenant.
CREATE TABLE bf_beta (id bigint PRIMARY KEY, tenant_id uuid);
INSERT INTO bf_beta SELECT g FROM generate_series(1, 12) g;
CALL tenancy.backfill('bf_beta', tenant => 'nope');
CALL tenancy.backfill('bf_beta', tenant => 'beta', batch_size => 5);
SELECT tenant_id, count(*) FROM bf_beta GROUP BY tenant_id;

-- Expression source (the row is t) and foreign-key source.
CREATE TABLE bf_projects (id int PRIMARY KEY, tenant_id uuid NOT NULL);
INSERT INTO bf_projects VALUES (1, '11111111-1111-1111-1111-111111111111'),
                               (2, '22222222-2222-2222-2222-222222222222');
CREATE TABLE bf_tasks (id int PRIMARY KEY, project_id int CONSTRAINT bf_tasks_project_fk REFERENCES bf_projects, tenant_id uuid);
INSERT INTO bf_tasks SELECT g, 1 + g % 2 FROM generate_series(1, 30) g;
CALL tenancy.backfill('bf_tasks', source => '(SELECT p.tenant_id FROM bf_projects p WHERE p.id = t.project_id)',
                      batch_size => 7);
SELECT count(*) AS mismatched FROM bf_tasks t JOIN bf_projects p ON p.id = t.project_id
 WHERE t.tenant_id IS DISTINCT FROM p.tenant_id;
SELECT source_kind, source, value_sql FROM tenancy.backfill_jobs WHERE relation = 'bf_tasks'::regclass;

CREATE TABLE bf_comments (id int PRIMARY KEY, task_id int, body text, tenant_id uuid,
                          CONSTRAINT bf_comments_task_fk FOREIGN KEY (task_id) REFERENCES bf_tasks);
INSERT INTO bf_comments SELECT g, 1 + g % 30, 'c' FROM generate_series(1, 40) g;
CALL tenancy.backfill('bf_comments', via => 'bf_comments_task_fk', batch_size => 9);
SELECT count(*) AS mismatched FROM bf_comments c JOIN bf_tasks t ON t.id = c.task_id
 WHERE c.tenant_id IS DISTINCT FROM t.tenant_id;
SELECT source_kind, source, value_sql FROM tenancy.backfill_jobs WHERE relation = 'bf_comments'::regclass;

-- Composite primary key: keyset on the row (order_id, line_no).
CREATE TABLE bf_lines (order_id int, line_no int, qty int, tenant_id uuid, PRIMARY KEY (order_id, line_no));
INSERT INTO bf_lines SELECT o, l, 1 FROM generate_series(1, 6) o, generate_series(1, 5) l;
SET client_min_messages = warning;  -- the NOTICE counts rows done so far
CALL tenancy.backfill('bf_lines', batch_size => 4, max_batch_size => 4, pause => '30ms', max_runtime => '70ms');
RESET client_min_messages;
-- Paused: the cursor is the last key of the last committed batch.
SELECT state, method, key_columns, upper_bound,
       cursor = (SELECT ARRAY[order_id::text, line_no::text] FROM bf_lines WHERE tenant_id IS NOT NULL
                  ORDER BY order_id DESC, line_no DESC LIMIT 1) AS cursor_is_last_key,
       rows_done % 4 = 0 AS whole_batches
  FROM tenancy.backfill_jobs WHERE relation = 'bf_lines'::regclass;
CALL tenancy.backfill('bf_lines');
SELECT count(*) AS rows, count(tenant_id) AS filled FROM bf_lines;
SELECT state, rows_done FROM tenancy.backfill_jobs WHERE relation = 'bf_lines'::regclass;

-- No primary key: block ranges.
CREATE TABLE bf_log (msg text, tenant_id uuid);
INSERT INTO bf_log SELECT repeat('x', 200) FROM generate_series(1, 300);
CALL tenancy.backfill('bf_log', batch_size => 50, max_batch_size => 50);
SELECT count(*) AS rows, count(tenant_id) AS filled FROM bf_log;
SELECT method, key_columns, phase, rows_done, batches > 1 AS batched FROM tenancy.backfill_jobs WHERE relation = 'bf_log'::regclass;

-- Empty table.
CREATE TABLE bf_empty (id int PRIMARY KEY, tenant_id uuid);
CALL tenancy.backfill('bf_empty');
SELECT state, rows_done, batches FROM tenancy.backfill_jobs WHERE relation = 'bf_empty'::regclass;

-- Partitioned table with a primary key: through the parent.
CREATE TABLE bf_parted (id int, day date, tenant_id uuid, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE bf_parted_a PARTITION OF bf_parted FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');
CREATE TABLE bf_parted_b PARTITION OF bf_parted FOR VALUES FROM ('2024-07-01') TO ('2025-01-01');
INSERT INTO bf_parted SELECT g, '2024-01-01'::date + g * 10, NULL FROM generate_series(1, 30) g;
CALL tenancy.backfill('bf_parted', batch_size => 8);
SELECT tableoid::regclass, count(*), count(tenant_id) FROM bf_parted GROUP BY 1 ORDER BY 1;

-- Stop at max_runtime, then resume the same job where it stopped.
CREATE TABLE bf_slow (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bf_slow SELECT g FROM generate_series(1, 100) g;
SET client_min_messages = warning;
CALL tenancy.backfill('bf_slow', batch_size => 10, max_batch_size => 10, pause => '40ms', max_runtime => '100ms');
RESET client_min_messages;
SELECT state, throttle, pid, rows_done > 0 AND rows_done < 100 AS partly_done,
       rows_done = (SELECT count(tenant_id) FROM bf_slow) AS counted_right,
       cursor[1]::int = rows_done AS cursor_after_last_batch
  FROM tenancy.backfill_jobs WHERE relation = 'bf_slow'::regclass;
SELECT state, interrupted, running_pid, percent > 0 AND percent < 100 AS partial FROM tenancy.backfill_progress
 WHERE relation = 'bf_slow'::regclass;
CALL tenancy.backfill('bf_slow');
SELECT count(*) AS jobs, min(state) AS state, min(rows_done) AS rows_done FROM tenancy.backfill_jobs
 WHERE relation = 'bf_slow'::regclass;
SELECT count(*) AS left_null FROM bf_slow WHERE tenant_id IS NULL;

-- An expression that fails on some rows: the error names the row, the
-- batches before it stay committed, and the job resumes once the data is fixed.
CREATE TABLE bf_fail (id int PRIMARY KEY, divisor int, tenant_id uuid);
INSERT INTO bf_fail SELECT g, CASE WHEN g = 17 THEN 0 ELSE 1 END FROM generate_series(1, 40) g;
CALL tenancy.backfill('bf_fail', source => '(CASE WHEN 1 / t.divisor = 1 THEN ''22222222-2222-2222-2222-222222222222''::uuid END)',
                      batch_size => 5, max_batch_size => 5);
SELECT count(tenant_id) BETWEEN 15 AND 16 AS earlier_batches_kept, count(*) FILTER (WHERE id > 16 AND tenant_id IS NOT NULL) AS later
  FROM bf_fail;
SELECT state, last_error FROM tenancy.backfill_jobs WHERE relation = 'bf_fail'::regclass;
SELECT current_setting('application_name') AS application_name;   -- shown as progress while running, restored
UPDATE bf_fail SET divisor = 1 WHERE id = 17;
CALL tenancy.backfill('bf_fail');
SELECT count(*) AS jobs, min(state) AS state, min(rows_done) AS rows_done FROM tenancy.backfill_jobs
 WHERE relation = 'bf_fail'::regclass;
SELECT count(*) AS left_null FROM bf_fail WHERE tenant_id IS NULL;

-- A source that gives NULL (parent not backfilled yet) is an error too.
CREATE TABLE bf_parent (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bf_parent VALUES (1, '11111111-1111-1111-1111-111111111111'), (2, NULL);
CREATE TABLE bf_child (id int PRIMARY KEY, parent_id int CONSTRAINT bf_child_parent_fk REFERENCES bf_parent, tenant_id uuid);
INSERT INTO bf_child VALUES (1, 1), (2, 1), (3, 2), (4, 1);
CALL tenancy.backfill('bf_child', via => 'bf_child_parent_fk');
SELECT id, tenant_id IS NOT NULL AS filled FROM bf_child ORDER BY id;
-- Resuming with another source is refused; without one it resumes.
CALL tenancy.backfill('bf_child', tenant => 'beta');
UPDATE bf_parent SET tenant_id = '22222222-2222-2222-2222-222222222222' WHERE id = 2;
CALL tenancy.backfill('bf_child');
SELECT id, tenant_id FROM bf_child ORDER BY id;

-- Lock timeouts are retried with backoff, then the job gives up (resumable).
CREATE TABLE bf_locked (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bf_locked SELECT g FROM generate_series(1, 10) g;
CREATE EXTENSION dblink;
SELECT dblink_connect('bf_holder', format('dbname=%s port=%s host=%s', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT dblink_exec('bf_holder', 'BEGIN');
SELECT * FROM dblink('bf_holder', 'SELECT id FROM bf_locked WHERE id = 5 FOR UPDATE') AS l(id int);
CALL tenancy.backfill('bf_locked', lock_timeout => '20ms', max_retries => 2, batch_size => 100);
SELECT state, retries, count(tenant_id) AS filled, last_error FROM tenancy.backfill_jobs, bf_locked
 WHERE relation = 'bf_locked'::regclass GROUP BY 1, 2, 4;
SELECT dblink_exec('bf_holder', 'COMMIT');
SELECT dblink_disconnect('bf_holder');
CALL tenancy.backfill('bf_locked');
SELECT count(tenant_id) AS filled FROM bf_locked;

-- A batch over its statement_timeout is halved and retried, then gives up.
CREATE TABLE bf_sleepy (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bf_sleepy VALUES (1), (2);
CALL tenancy.backfill('bf_sleepy', source => '(SELECT ''11111111-1111-1111-1111-111111111111''::uuid FROM pg_sleep(0.2))',
                      statement_timeout => '50ms', max_retries => 1);
SELECT state, retries, batch_size FROM tenancy.backfill_jobs WHERE relation = 'bf_sleepy'::regclass;

-- Batches name the columns of non-unique indexes in their SET list
-- (col = col, so btree skips bottom-up deletion), but never a column an
-- UPDATE OF trigger watches, and values never change.
CREATE TABLE bf_trig (id int PRIMARY KEY, a int, b int, tenant_id uuid);
CREATE INDEX ON bf_trig (a);
CREATE INDEX ON bf_trig (b);
INSERT INTO bf_trig SELECT g, g, g FROM generate_series(1, 6) g;
CREATE FUNCTION bf_trig_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE '% fired for row %', TG_NAME, NEW.id;
    RETURN NEW;
END
$$;
CREATE TRIGGER bf_trig_of_a BEFORE UPDATE OF a ON bf_trig FOR EACH ROW EXECUTE FUNCTION bf_trig_note();
CALL tenancy.backfill('bf_trig');
CALL tenancy.backfill('bf_trig', compact_indexes => true);
UPDATE bf_trig SET tenant_id = NULL WHERE id = 1;
CALL tenancy.backfill('bf_trig', compact_indexes => true);
SELECT count(*) FILTER (WHERE a = id AND b = id AND tenant_id IS NOT NULL) AS unchanged_and_filled FROM bf_trig;
SELECT options, batch_sql FROM tenancy.backfill_jobs WHERE relation = 'bf_trig'::regclass ORDER BY id;

-- Queued jobs (for the background worker) run on the next CALL.
CREATE TABLE bf_queued (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bf_queued SELECT g FROM generate_series(1, 5) g;
SELECT tenancy.queue_backfill('bf_queued', tenant => 'beta', batch_size => 2) AS queued_id \gset
SELECT state, source, options FROM tenancy.backfill_jobs WHERE id = :queued_id;
CALL tenancy.backfill('bf_queued');
SELECT id = :queued_id AS same_job, state, rows_done FROM tenancy.backfill_jobs WHERE relation = 'bf_queued'::regclass;
SELECT DISTINCT tenant_id FROM bf_queued;

-- Inside a transaction block: refused up front, with a hint.
BEGIN;
CALL tenancy.backfill('bf_plain');
ROLLBACK;

-- Where it cannot commit (inside an exception block): refused before it
-- takes the table's backfill lock, so the next CALL is not blocked.
DO $$
BEGIN
    CALL tenancy.backfill('bf_plain');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'caught: %', SQLERRM;
END
$$;
CALL tenancy.backfill('bf_plain');
-- From a function (an atomic context): PostgreSQL's own error, raised
-- before the lock is taken.
CREATE FUNCTION bf_from_function() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CALL tenancy.backfill('bf_plain');
END
$$;
SELECT bf_from_function();
DROP FUNCTION bf_from_function();
CALL tenancy.backfill('bf_plain');

-- Bad input changes nothing.
CALL tenancy.backfill('bf_missing');
CALL tenancy.backfill(NULL);
CREATE TABLE bf_nocol (id int PRIMARY KEY);
CALL tenancy.backfill('bf_nocol');
CALL tenancy.backfill('bf_plain', column_name => 'nope');
CREATE TABLE bf_textcol (id int PRIMARY KEY, tenant_id text);
CALL tenancy.backfill('bf_textcol');
CREATE TABLE bf_expr (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bf_expr VALUES (1);
CALL tenancy.backfill('bf_expr', source => 't.id + 1');
CALL tenancy.backfill('bf_expr', source => 'no_such_column');
CALL tenancy.backfill('bf_expr', tenant => 'acme', source => 't.tenant_id');
CALL tenancy.backfill('bf_expr', via => 'no_such_fk');
CALL tenancy.backfill('bf_expr', batch_size => 0);
CREATE TABLE bf_noparent_col (id int PRIMARY KEY);
CREATE TABLE bf_orphan (id int PRIMARY KEY, p int CONSTRAINT bf_orphan_fk REFERENCES bf_noparent_col, tenant_id uuid);
CALL tenancy.backfill('bf_orphan', via => 'bf_orphan_fk');
CREATE VIEW bf_view AS SELECT * FROM bf_expr;
CALL tenancy.backfill('bf_view');
CREATE TABLE bf_parted_nopk (id int, tenant_id uuid) PARTITION BY LIST (id);
CREATE TABLE bf_parted_nopk_1 PARTITION OF bf_parted_nopk FOR VALUES IN (1);
INSERT INTO bf_parted_nopk VALUES (1);
CALL tenancy.backfill('bf_parted_nopk');
-- A migration role with the grants the README lists backfills a table it
-- may update.  max_replication_lag from a role that would see the lag as
-- NULL (and so never hold) is refused before anything is recorded.
CREATE ROLE bf_migrator;
CREATE TABLE bf_role_t (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bf_role_t SELECT g FROM generate_series(1, 20) g;
GRANT SELECT, UPDATE ON bf_role_t, bf_expr TO bf_migrator;
GRANT USAGE ON SCHEMA tenancy TO bf_migrator;
GRANT SELECT ON tenancy.tenants TO bf_migrator;
GRANT SELECT ON tenancy.backfill_jobs TO bf_migrator;
GRANT SELECT ON tenancy.tables TO bf_migrator;
GRANT EXECUTE ON FUNCTION tenancy.tables_register(regclass, name, text),
    tenancy.tables_set_stage(regclass, text, text) TO bf_migrator;
GRANT EXECUTE ON FUNCTION tenancy.tenant_key(text), tenancy.lookup_tenant(text),
    tenancy.backfill_job_insert(regclass, name, text, text, text, text, jsonb),
    tenancy.backfill_job_update(bigint, jsonb) TO bf_migrator;
GRANT EXECUTE ON PROCEDURE tenancy.backfill TO bf_migrator;
GRANT EXECUTE ON FUNCTION tenancy.backfill_try_lock(regclass), tenancy.backfill_unlock(regclass),
    tenancy.preallocate_wal(bigint) TO bf_migrator;
SET ROLE bf_migrator;
CALL tenancy.backfill('bf_role_t', max_replication_lag => '1s');
SELECT count(*) AS jobs FROM tenancy.backfill_jobs WHERE relation = 'bf_role_t'::regclass;
CALL tenancy.backfill('bf_role_t');
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS left_null FROM bf_role_t;
RESET ROLE;
GRANT pg_read_all_stats TO bf_migrator;
SET ROLE bf_migrator;
CALL tenancy.backfill('bf_expr', max_replication_lag => '1s', source => 't.id + 1');  -- past that check
RESET ROLE;
DROP TABLE bf_role_t;
DROP OWNED BY bf_migrator;
DROP ROLE bf_migrator;
SELECT count(*) FROM tenancy.backfill_jobs
 WHERE relation IN ('bf_nocol'::regclass, 'bf_textcol'::regclass, 'bf_expr'::regclass, 'bf_orphan'::regclass);
SELECT count(tenant_id) AS untouched FROM bf_expr;

-- tenancy.preallocate_wal(), called before each batch: the segment files
-- the next bytes of WAL will fill exist afterwards; existing ones are left
-- alone; at most 16 past the insert position; nothing for no bytes.
SELECT tenancy.preallocate_wal(0) AS zero, tenancy.preallocate_wal(-1) AS negative,
       tenancy.preallocate_wal(NULL) AS null_arg;
SELECT tenancy.preallocate_wal(3 * 16 * 1024 * 1024) BETWEEN 0 AND 3 AS created;
SELECT count(*) >= 3 AS three_ahead FROM pg_ls_waldir()
 WHERE name ~ '^[0-9A-F]{24}$' AND name > pg_walfile_name(pg_current_wal_insert_lsn());
SELECT tenancy.preallocate_wal(3 * 16 * 1024 * 1024) AS created_again;
SELECT count(*) AS beyond_16 FROM pg_ls_waldir()
 WHERE name ~ '^[0-9A-F]{24}$' AND name > pg_walfile_name(pg_current_wal_insert_lsn() + 16 * 16 * 1024 * 1024) \gset
SELECT tenancy.preallocate_wal(1024::bigint * 1024 * 1024 * 1024) <= 16 AS bounded;
SELECT count(*) >= 16 AS sixteen_ahead FROM pg_ls_waldir()
 WHERE name ~ '^[0-9A-F]{24}$' AND name > pg_walfile_name(pg_current_wal_insert_lsn());
SELECT count(*) = :beyond_16 AS none_past_16 FROM pg_ls_waldir()
 WHERE name ~ '^[0-9A-F]{24}$' AND name > pg_walfile_name(pg_current_wal_insert_lsn() + 16 * 16 * 1024 * 1024);

-- tenancy.wal_flush_behind(), which each value a batch writes goes
-- through: returns its argument, of any type, NULL included.  That it wakes
-- the WAL writer is tested in test/backfill_wal.sh, on a server whose WAL
-- writer would otherwise sleep for 10 s.
SELECT tenancy.wal_flush_behind(42) AS int, tenancy.wal_flush_behind('acme'::text) AS text,
       tenancy.wal_flush_behind('11111111-1111-1111-1111-111111111111'::uuid) AS uuid,
       tenancy.wal_flush_behind(NULL::uuid) IS NULL AS null_arg;
BEGIN;
CREATE TABLE bf_walpad AS SELECT g FROM generate_series(1, 20000) g;
SELECT tenancy.wal_flush_behind(1) AS after_wal;
ROLLBACK;
SELECT tenancy.wal_flush_behind(NULL);

DROP VIEW bf_view;
DROP TABLE bf_trig;
DROP FUNCTION bf_trig_note();
DROP TABLE bf_plain, bf_beta, bf_comments, bf_tasks, bf_projects, bf_lines, bf_log, bf_empty, bf_parted,
           bf_slow, bf_fail, bf_child, bf_parent, bf_locked, bf_sleepy, bf_queued, bf_nocol, bf_textcol,
           bf_expr, bf_orphan, bf_noparent_col, bf_parted_nopk;
DROP EXTENSION dblink;
DROP EXTENSION tenancy CASCADE;
