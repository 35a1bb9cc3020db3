-- Backfill and user triggers (issue 14, item 10), on the store-rental
-- fixture whose audit trigger rewrites last_update on every UPDATE.  By
-- default the batches fire them and the first NOTICE names them;
-- user_triggers => false runs each batch under session_replication_role
-- replica (only the backfill's own batches: another session's write fires
-- its trigger during the run), for roles that may set the parameter, and is
-- refused once a foreign key includes the tenant column.
CREATE EXTENSION tenancy;
CREATE EXTENSION dblink;
\set SHOW_CONTEXT never
SET client_min_messages = warning;
\set ECHO none
\ir ../test/fixtures/store_rental.sql
\set ECHO all
RESET client_min_messages;
SELECT tenancy.create_tenant('store1', 'Store 1', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('store1') IS NOT NULL AS implicit;
SELECT format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
              split_part(current_setting('unix_socket_directories'), ',', 1)) AS connstr \gset
SET client_min_messages = warning;
SELECT tenancy.add_tenant_column('rental.inventory') IS NOT NULL AS added;
SELECT tenancy.add_tenant_column('rental.rental') IS NOT NULL AS added;
RESET client_min_messages;
CREATE TABLE bft_before AS
SELECT 'inventory' AS t, inventory_id AS id, last_update FROM rental.inventory
UNION ALL SELECT 'rental', rental_id, last_update FROM rental.rental
UNION ALL SELECT 'customer', customer_id, last_update FROM rental.customer;
SELECT tenancy.backfill_user_triggers('rental.rental', 'tenant_id') AS firing,
       tenancy.backfill_user_triggers('rental.rental', 'tenant_id', replica => true) AS firing_in_replica;

-- 1. Default: the triggers fire, and the first NOTICE names them.
CALL tenancy.backfill('rental.inventory', batch_size => 50);
SELECT count(*) FILTER (WHERE i.last_update <> b.last_update) AS rewritten, count(*) AS total
  FROM rental.inventory i JOIN bft_before b ON b.t = 'inventory' AND b.id = i.inventory_id;

-- 2. user_triggers => false: last_update stays, the option is kept with
--    the job, and the session's own setting is untouched afterwards.  A
--    second session's UPDATE during the run still fires the trigger.
SELECT dblink_connect('bft_bg', :'connstr');
SELECT dblink_send_query('bft_bg', $$CALL tenancy.backfill('rental.rental', user_triggers => false,
    batch_size => 50, min_batch_size => 50, max_batch_size => 50, pause => '50ms')$$);
CREATE FUNCTION bft_wait_for(cond text) RETURNS boolean LANGUAGE plpgsql AS $$
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
SELECT bft_wait_for($$SELECT rows_done >= 100 FROM tenancy.backfill_jobs WHERE relation = 'rental.rental'::regclass$$) AS progressing;
UPDATE rental.rental SET return_date = rental_date + interval '3 days' WHERE rental_id = 590
RETURNING last_update > (SELECT b.last_update FROM bft_before b WHERE b.t = 'rental' AND b.id = 590) AS app_trigger_fired;
SELECT dblink_get_result('bft_bg') IS NOT NULL AS finished;
SELECT dblink_disconnect('bft_bg');
SELECT count(*) FILTER (WHERE r.last_update <> b.last_update) AS rewritten,
       count(*) FILTER (WHERE r.tenant_id IS NULL) AS left_null, count(*) AS total
  FROM rental.rental r JOIN bft_before b ON b.t = 'rental' AND b.id = r.rental_id;
SELECT state, options->'user_triggers' AS user_triggers FROM tenancy.backfill_jobs
 WHERE relation = 'rental.rental'::regclass;
SHOW session_replication_role;

-- 3. A role without SET on session_replication_role: 42501 before anything
--    is recorded; granted SET on it, the same role may.
CREATE ROLE bft_migrator;
GRANT USAGE ON SCHEMA tenancy TO bft_migrator;
GRANT SELECT ON tenancy.tenants TO bft_migrator;
GRANT SELECT ON tenancy.backfill_jobs TO bft_migrator;
GRANT SELECT ON tenancy.tables TO bft_migrator;
GRANT EXECUTE ON FUNCTION tenancy.tables_register(regclass, name, text),
    tenancy.tables_set_stage(regclass, text, text) TO bft_migrator;
GRANT EXECUTE ON FUNCTION tenancy.tenant_key(text), tenancy.lookup_tenant(text),
    tenancy.backfill_job_insert(regclass, name, text, text, text, text, jsonb),
    tenancy.backfill_job_update(bigint, jsonb) TO bft_migrator;
GRANT EXECUTE ON PROCEDURE tenancy.backfill TO bft_migrator;
GRANT EXECUTE ON FUNCTION tenancy.queue_backfill TO bft_migrator;
GRANT EXECUTE ON FUNCTION tenancy.backfill_try_lock(regclass), tenancy.backfill_unlock(regclass),
    tenancy.preallocate_wal(bigint) TO bft_migrator;
GRANT USAGE ON SCHEMA rental TO bft_migrator;
GRANT SELECT, UPDATE ON rental.customer TO bft_migrator;
SET client_min_messages = warning;
SELECT tenancy.add_tenant_column('rental.customer') IS NOT NULL AS added;
RESET client_min_messages;
SET ROLE bft_migrator;
CALL tenancy.backfill('rental.customer', user_triggers => false);
SELECT tenancy.queue_backfill('rental.customer', user_triggers => false);
RESET ROLE;
SELECT count(*) AS jobs FROM tenancy.backfill_jobs WHERE relation = 'rental.customer'::regclass;
GRANT SET ON PARAMETER session_replication_role TO bft_migrator;
SET ROLE bft_migrator;
CALL tenancy.backfill('rental.customer', user_triggers => false);
RESET ROLE;
SELECT count(*) FILTER (WHERE c.last_update <> b.last_update) AS rewritten,
       count(*) FILTER (WHERE c.tenant_id IS NULL) AS left_null, count(*) AS total
  FROM rental.customer c JOIN bft_before b ON b.t = 'customer' AND b.id = c.customer_id;

-- 4. A foreign key that includes the tenant column, on either side:
--    refused (replica mode would skip its checks), nothing recorded.
CREATE TABLE bft_parent (id int PRIMARY KEY, tenant_id uuid, UNIQUE (id, tenant_id));
CREATE TABLE bft_child (id int PRIMARY KEY, parent_id int, tenant_id uuid,
                        CONSTRAINT bft_child_parent_fk FOREIGN KEY (parent_id, tenant_id) REFERENCES bft_parent (id, tenant_id));
INSERT INTO bft_parent SELECT g FROM generate_series(1, 5) g;
INSERT INTO bft_child SELECT g, g FROM generate_series(1, 5) g;
CALL tenancy.backfill('bft_child', user_triggers => false);
CALL tenancy.backfill('bft_parent', user_triggers => false);
SELECT count(*) AS jobs FROM tenancy.backfill_jobs WHERE relation IN ('bft_parent'::regclass, 'bft_child'::regclass);
-- A job queued before the key was added is refused when it runs.
DROP TABLE bft_child;
SELECT tenancy.queue_backfill('bft_parent', user_triggers => false) IS NOT NULL AS queued;
CREATE TABLE bft_child (id int PRIMARY KEY, parent_id int, tenant_id uuid,
                        CONSTRAINT bft_child_parent_fk FOREIGN KEY (parent_id, tenant_id) REFERENCES bft_parent (id, tenant_id));
CALL tenancy.backfill('bft_parent');
SELECT state, rows_done FROM tenancy.backfill_jobs WHERE relation = 'bft_parent'::regclass;
-- Without the option the backfill runs (the parent has no user trigger).
CALL tenancy.backfill('bft_parent', user_triggers => true);
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS left_null FROM bft_parent;

-- Triggers made ENABLE ALWAYS fire in replica mode too: the NOTICE says so.
CREATE TABLE bft_always (id int PRIMARY KEY, tenant_id uuid, touched int NOT NULL DEFAULT 0);
INSERT INTO bft_always (id) SELECT g FROM generate_series(1, 5) g;
CREATE FUNCTION bft_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END $$;
CREATE TRIGGER bft_touch BEFORE UPDATE ON bft_always FOR EACH ROW EXECUTE FUNCTION bft_touch();
ALTER TABLE bft_always ENABLE ALWAYS TRIGGER bft_touch;
CALL tenancy.backfill('bft_always', user_triggers => false);
SELECT touched, count(*) FROM bft_always GROUP BY touched;

DROP TABLE bft_child, bft_parent, bft_before, bft_always;
DROP FUNCTION bft_touch();
DROP FUNCTION bft_wait_for(text);
DROP SCHEMA rental CASCADE;
REVOKE SET ON PARAMETER session_replication_role FROM bft_migrator;
DROP OWNED BY bft_migrator;
DROP ROLE bft_migrator;
DROP EXTENSION dblink;
DROP EXTENSION tenancy;
