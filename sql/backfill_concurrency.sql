-- tenancy.backfill() beside other sessions (through dblink): one backfill
-- per table, resume after pg_terminate_backend, progress visible to others,
-- application writes during a backfill neither lost nor left NULL, and row
-- locks that never block foreign-key inserts into child tables.
CREATE EXTENSION tenancy;
CREATE EXTENSION dblink;
\set SHOW_CONTEXT never
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111');
SELECT tenancy.create_tenant('beta', 'Beta', '22222222-2222-2222-2222-222222222222');
SELECT tenancy.create_tenant('gamma', 'Gamma', '33333333-3333-3333-3333-333333333333');
SELECT tenancy.set_implicit_tenant('acme');
SELECT format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
              split_part(current_setting('unix_socket_directories'), ',', 1)) AS connstr \gset

-- Poll a condition for up to 20 s.
CREATE FUNCTION bfc_wait_for(cond text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE ok boolean;
BEGIN
    FOR i IN 1 .. 1000 LOOP
        PERFORM pg_stat_clear_snapshot();   -- pg_stat_activity is cached per transaction
        EXECUTE cond INTO ok;
        IF ok THEN RETURN true; END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
    RETURN false;
END
$$;

-- 1. A backfill running in another session: visible, exclusive, and
--    resumed after its backend is terminated.
CREATE TABLE bfc_term (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bfc_term SELECT g FROM generate_series(1, 500) g;
SELECT dblink_connect('bfc_bg', :'connstr');
SELECT pid AS bg_pid FROM dblink('bfc_bg', 'SELECT pg_backend_pid()') AS t(pid int) \gset
SELECT dblink_send_query('bfc_bg', $$CALL tenancy.backfill('bfc_term', batch_size => 10, max_batch_size => 10, pause => '50ms')$$);
SELECT bfc_wait_for($$SELECT rows_done >= 30 FROM tenancy.backfill_jobs WHERE relation = 'bfc_term'::regclass$$) AS progressing;
SELECT state, running_pid = :bg_pid AS runs_there, interrupted, rows_per_s > 0 AS has_rate, batch_size,
       percent > 0 AS has_percent, eta IS NOT NULL AS has_eta, throttle
  FROM tenancy.backfill_progress WHERE relation = 'bfc_term'::regclass;
SELECT application_name LIKE 'tenancy.backfill public.bfc_term %' AS shows_in_activity
  FROM pg_stat_activity WHERE pid = :bg_pid;
-- One backfill per table.
CALL tenancy.backfill('bfc_term');
SELECT pg_terminate_backend(:bg_pid);
SELECT bfc_wait_for(format('SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)', :bg_pid)) AS gone;
SELECT dblink_disconnect('bfc_bg');
-- Left 'running' by a dead backend: the view says it is interrupted; the
-- counters match the committed batches exactly.
SELECT state, interrupted, running_pid, rows_done > 0 AND rows_done < 500 AS partial,
       rows_done = (SELECT count(tenant_id) FROM bfc_term) AS counters_match_rows
  FROM tenancy.backfill_progress WHERE relation = 'bfc_term'::regclass;
CALL tenancy.backfill('bfc_term');
SELECT count(*) AS jobs, min(state) AS state, min(rows_done) AS rows_done FROM tenancy.backfill_jobs
 WHERE relation = 'bfc_term'::regclass;
SELECT count(*) AS left_null FROM bfc_term WHERE tenant_id IS NULL;

-- 2. Application writes while a backfill runs.  Whatever the interleaving,
--    updates keep their values and get the backfilled tenant, rows inserted
--    get the tenant of their writer (the DEFAULT), deleted rows stay deleted.
CREATE TABLE bfc_orders (id int PRIMARY KEY, v text);
INSERT INTO bfc_orders SELECT g, 'old' FROM generate_series(1, 300) g;
SELECT tenancy.add_tenant_column('bfc_orders') IS NOT NULL AS added;
SELECT dblink_connect('bfc_bg', :'connstr');
SELECT dblink_send_query('bfc_bg', $$CALL tenancy.backfill('bfc_orders', tenant => 'gamma', batch_size => 10, max_batch_size => 10, pause => '20ms')$$);
DO $$
BEGIN
    FOR i IN 1 .. 20 LOOP
        UPDATE bfc_orders SET v = 'app ' || i WHERE id = i * 15;        -- ahead of and behind the cursor
        DELETE FROM bfc_orders WHERE id = i * 15 - 1;
        INSERT INTO bfc_orders (id, v) VALUES (1000 + i, 'legacy');    -- no tenant set: implicit
        COMMIT;
        -- (set_config: set_tenant() would warn here, outside a transaction block)
        PERFORM set_config('tenancy.tenant_id', '22222222-2222-2222-2222-222222222222', true);
        INSERT INTO bfc_orders (id, v) VALUES (2000 + i, 'beta');
        IF i = 10 THEN
            UPDATE bfc_orders SET v = 'held ' || i WHERE id = 151;      -- hold a row lock for a while
            PERFORM pg_sleep(0.3);
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.02);
    END LOOP;
END
$$;
SELECT status FROM dblink_get_result('bfc_bg') AS r(status text);
SELECT dblink_disconnect('bfc_bg');
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS left_null,
       count(*) FILTER (WHERE id <= 300) AS original_rows,
       count(*) FILTER (WHERE id <= 300 AND tenant_id = '33333333-3333-3333-3333-333333333333') AS backfilled,
       count(*) FILTER (WHERE v LIKE 'app %' OR v LIKE 'held %') AS app_updates_kept,
       count(*) FILTER (WHERE id > 1000 AND id < 2000 AND tenant_id = '11111111-1111-1111-1111-111111111111') AS legacy_inserts,
       count(*) FILTER (WHERE id > 2000 AND tenant_id = '22222222-2222-2222-2222-222222222222') AS beta_inserts
  FROM bfc_orders;
SELECT state, batches > 10 AS many_batches FROM tenancy.backfill_jobs WHERE relation = 'bfc_orders'::regclass;

-- 3. Row locks of a batch are FOR NO KEY UPDATE: a child row referencing
--    a row the batch already updated is inserted without waiting.  With the
--    tenant column in a unique index the lock is FOR UPDATE and the insert
--    waits (the control case, and the warning).
CREATE TABLE bfc_parent (id int PRIMARY KEY, grp int, tenant_id uuid);
CREATE INDEX ON bfc_parent (grp);   -- named in the batches' SET list: still no key change
INSERT INTO bfc_parent SELECT g, g % 3 FROM generate_series(1, 10) g;
CREATE TABLE bfc_child (id serial PRIMARY KEY, parent_id int REFERENCES bfc_parent);
CREATE TABLE bfc_parent_u (id int PRIMARY KEY, tenant_id uuid, UNIQUE (tenant_id, id));
INSERT INTO bfc_parent_u SELECT g FROM generate_series(1, 10) g;
CREATE TABLE bfc_child_u (id serial PRIMARY KEY, parent_id int REFERENCES bfc_parent_u);
SELECT dblink_connect('bfc_probe', :'connstr');
SELECT dblink_exec('bfc_probe', 'SET lock_timeout = ''300ms''');
-- Evaluated for each row of the batch; at row 5 another session inserts a
-- child of row 1, which this batch has already updated.  The outcome is
-- kept in a table: settings the batch changes are undone after it.
CREATE TABLE bfc_fk_insert (result text);
CREATE FUNCTION bfc_probe(id int, child text) RETURNS uuid LANGUAGE plpgsql AS $$
BEGIN
    IF id = 5 THEN
        BEGIN
            PERFORM dblink_exec('bfc_probe', format('INSERT INTO %I (parent_id) VALUES (1)', child));
            INSERT INTO bfc_fk_insert VALUES ('not blocked');
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO bfc_fk_insert VALUES ('blocked: ' || SQLERRM);
        END;
    END IF;
    RETURN '11111111-1111-1111-1111-111111111111'::uuid;
END
$$;
CALL tenancy.backfill('bfc_parent', source => 'bfc_probe(t.id, ''bfc_child'')', batch_size => 10);
SELECT (SELECT result FROM bfc_fk_insert) AS fk_insert, (SELECT count(*) FROM bfc_child) AS children;
TRUNCATE bfc_fk_insert;
CALL tenancy.backfill('bfc_parent_u', source => 'bfc_probe(t.id, ''bfc_child_u'')', batch_size => 10);
SELECT (SELECT result FROM bfc_fk_insert) AS fk_insert, (SELECT count(*) FROM bfc_child_u) AS children;
SELECT dblink_disconnect('bfc_probe');

-- 4. A deadlock (40P01) is retried like a lock timeout.  Another session
--    holds row 10; while the batch runs (at row 5) it asks for row 1, which
--    the batch has already updated, and commits once it gets it.  The batch
--    then waits for row 10: a cycle, which the deadlock detector breaks by
--    failing the batch (its deadlock_timeout is the shorter); the retry
--    finds both rows free.
CREATE TABLE bfc_dead (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO bfc_dead SELECT g FROM generate_series(1, 10) g;
CREATE SEQUENCE bfc_dead_calls;
SELECT dblink_connect('bfc_holder', :'connstr');
SELECT dblink_exec('bfc_holder', 'SET deadlock_timeout = ''10s''');
SELECT dblink_exec('bfc_holder', 'BEGIN');
SELECT id FROM dblink('bfc_holder', 'SELECT id FROM bfc_dead WHERE id = 10 FOR UPDATE') AS l(id int);
CREATE FUNCTION bfc_dead_probe(id int) RETURNS uuid LANGUAGE plpgsql AS $$
BEGIN
    IF id = 5 AND nextval('bfc_dead_calls') = 1 THEN   -- nextval: not undone by the rollback
        PERFORM dblink_send_query('bfc_holder', 'SELECT id FROM bfc_dead WHERE id = 1 FOR UPDATE; COMMIT');
        PERFORM pg_sleep(0.2);                          -- until it waits for row 1
    END IF;
    RETURN '11111111-1111-1111-1111-111111111111'::uuid;
END
$$;
SELECT deadlocks AS deadlocks_before FROM pg_stat_database WHERE datname = current_database() \gset
SET deadlock_timeout = '50ms';
CALL tenancy.backfill('bfc_dead', source => 'bfc_dead_probe(t.id)', batch_size => 100);
RESET deadlock_timeout;
SELECT * FROM dblink_get_result('bfc_holder') AS r(id int);
SELECT dblink_disconnect('bfc_holder');
SELECT pg_stat_force_next_flush();   -- this backend's deadlock count, now
SELECT deadlocks - :deadlocks_before AS deadlocks FROM pg_stat_database WHERE datname = current_database();
SELECT state, retries, rows_done, last_error FROM tenancy.backfill_jobs WHERE relation = 'bfc_dead'::regclass;
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS left_null FROM bfc_dead;

DROP FUNCTION bfc_dead_probe(int);
DROP SEQUENCE bfc_dead_calls;
DROP TABLE bfc_dead;
DROP FUNCTION bfc_probe(int, text);
DROP FUNCTION bfc_wait_for(text);
DROP TABLE bfc_term, bfc_orders, bfc_child, bfc_parent, bfc_child_u, bfc_parent_u, bfc_fk_insert;
DROP EXTENSION dblink;
DROP EXTENSION tenancy CASCADE;
