-- Erasing a departing tenant (issue 19): every registered table, children
-- before parents, in committed batches; stopped and resumed; the count
-- check; the refusals (active or implicit tenant, a publication naming it,
-- a transaction block, bad options).  Interrupted by a killed backend:
-- test/erase.sh.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
SELECT tenancy.create_tenant('er-old', 'Single tenant', 'aaaaaaaa-0000-0000-0000-0000000000e0') IS NOT NULL AS created;
SELECT tenancy.create_tenant('er-gone', 'Departing', 'aaaaaaaa-0000-0000-0000-0000000000e1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('er-stays', 'Staying', 'aaaaaaaa-0000-0000-0000-0000000000e2') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('er-old') IS NOT NULL AS implicit;
CREATE ROLE er_owner;
GRANT CREATE ON SCHEMA public TO er_owner;
SET ROLE er_owner;
CREATE TABLE er_plans (id int PRIMARY KEY, name text);
CREATE TABLE "er ""acc;$$" (id int PRIMARY KEY, plan_id int REFERENCES er_plans, tenant_id uuid, name text);
CREATE TABLE er_orders (id int PRIMARY KEY, account_id int REFERENCES "er ""acc;$$", tenant_id uuid);
CREATE TABLE er_items (id int PRIMARY KEY, order_id int REFERENCES er_orders, tenant_id uuid);
CREATE TABLE er_events (id int, tenant_id uuid, at date) PARTITION BY RANGE (at);
CREATE TABLE er_events_1 PARTITION OF er_events FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
CREATE TABLE er_events_2 PARTITION OF er_events FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
INSERT INTO er_plans VALUES (1, 'basic');
INSERT INTO "er ""acc;$$" SELECT i, 1, CASE WHEN i % 2 = 0 THEN 'aaaaaaaa-0000-0000-0000-0000000000e1'::uuid
                                          ELSE 'aaaaaaaa-0000-0000-0000-0000000000e2'::uuid END, 'acc ' || i
  FROM generate_series(1, 10) i;
INSERT INTO er_orders SELECT i, 1 + i % 10, a.tenant_id FROM generate_series(1, 40) i JOIN "er ""acc;$$" a ON a.id = 1 + i % 10;
INSERT INTO er_items SELECT i, 1 + i % 40, o.tenant_id FROM generate_series(1, 80) i JOIN er_orders o ON o.id = 1 + i % 40;
INSERT INTO er_events SELECT i, CASE WHEN i % 2 = 0 THEN 'aaaaaaaa-0000-0000-0000-0000000000e1'::uuid
                                    ELSE 'aaaaaaaa-0000-0000-0000-0000000000e2'::uuid END,
                             date '2026-01-01' + i * 30 FROM generate_series(1, 11) i;
RESET ROLE;
SELECT tenancy.mark_shared('er_plans');
SELECT count(*) AS registered FROM (
    SELECT tenancy.add_tenant_column(t) FROM unnest(ARRAY['"er ""acc;$$"', 'er_orders', 'er_items', 'er_events']::regclass[]) t) x;

-- Children before parents; the shared table is not the tenant's.
SELECT * FROM tenancy.erase_order();

-- The staying tenant's rows, to compare after.
CREATE TEMP TABLE before AS SELECT * FROM tenancy.tenant_checksums('er-stays');
SELECT relation, row_count FROM before ORDER BY relation::text;
SELECT relation, row_count FROM tenancy.tenant_checksums('er-gone') ORDER BY relation::text;

-- Refusals.
SELECT tenancy.erase_tenant_sql(NULL);
SELECT tenancy.erase_tenant_sql('no-such-tenant');
SELECT tenancy.erase_tenant_sql('er-old');
SELECT tenancy.erase_tenant_sql('er-gone');
SELECT tenancy.suspend_tenant('er-gone');
CREATE PUBLICATION er_move FOR TABLE er_orders WHERE (tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000e1');
CREATE PUBLICATION er_other FOR TABLE er_items WHERE (tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000e2');
SELECT * FROM tenancy.erase_blockers('er-gone');
CALL tenancy.erase_tenant('er-gone');
-- Only a row filter naming the tenant blocks it (er_other is another
-- tenant's move).
DROP PUBLICATION er_move;
SELECT count(*) AS blockers FROM tenancy.erase_blockers('er-gone');
DROP PUBLICATION er_other;
BEGIN;
CALL tenancy.erase_tenant('er-gone');
ROLLBACK;
CALL tenancy.erase_tenant('er-gone', batch_size => 0);
CALL tenancy.erase_tenant('er-gone', batch_size => 5, max_batch_size => 4);
CALL tenancy.erase_tenant('er-gone', pause => '-1s');
CALL tenancy.erase_tenant('er-gone', max_batches => 0);
SELECT count(*) AS erasures FROM tenancy.tenant_erasures;

-- The preview: the tables in order, the rows now, each batch's statement.
SELECT tenancy.erase_tenant_sql('er-gone');

-- Stopped after three batches of two rows (standing for an interruption),
-- then resumed to the end.
CALL tenancy.erase_tenant('er-gone', batch_size => 2, min_batch_size => 1, max_batch_size => 2, max_batches => 3);
SELECT slug, state, rows_deleted, batches, started_by, finished_at IS NULL AS unfinished FROM tenancy.tenant_erasures;
SELECT ord, relation, rows_deleted, batches, done_at IS NOT NULL AS done, interrupted FROM tenancy.erase_progress ORDER BY ord;
SELECT relation, row_count FROM tenancy.tenant_checksums('er-gone') ORDER BY relation::text;
CALL tenancy.erase_tenant('er-gone', batch_size => 2, min_batch_size => 1, max_batch_size => 2);
SELECT slug, state, rows_deleted, started_by, finished_by, finished_at >= started_at AS finished, resumed_at IS NOT NULL AS resumed
  FROM tenancy.tenant_erasures;
SELECT ord, relation, rows_deleted, done_at IS NOT NULL AS done, interrupted FROM tenancy.erase_progress ORDER BY ord;
-- Nothing of it is left; the other tenant is untouched, row for row.
SELECT relation, row_count FROM tenancy.tenant_checksums('er-gone') ORDER BY relation::text;
SELECT b.relation, b.row_count, a.checksum = b.checksum AS same_rows
  FROM before b JOIN tenancy.tenant_checksums('er-stays') a USING (relation) ORDER BY b.relation::text;
SELECT count(*) AS plans FROM er_plans;
-- A rerun finds nothing to do.
CALL tenancy.erase_tenant('er-gone');
SELECT state, rows_deleted FROM tenancy.tenant_erasures;

-- The count check: a row that stays (here a trigger of the owner's keeps
-- it) fails the erasure, which a rerun finishes once it can go; a child
-- row that stays stops its parent's batch (the foreign key).
SELECT tenancy.suspend_tenant('er-stays');
SET ROLE er_owner;
CREATE FUNCTION er_keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER er_keep BEFORE DELETE ON er_items FOR EACH ROW WHEN (OLD.id = 1) EXECUTE FUNCTION er_keep();
CREATE TRIGGER er_keep BEFORE DELETE ON "er ""acc;$$" FOR EACH ROW WHEN (OLD.id = 1) EXECUTE FUNCTION er_keep();
RESET ROLE;
CALL tenancy.erase_tenant('er-stays');
DROP TRIGGER er_keep ON er_items;
CALL tenancy.erase_tenant('er-stays');
SELECT slug, state FROM tenancy.tenant_erasures ORDER BY slug;
SELECT relation, row_count FROM tenancy.tenant_checksums('er-stays') ORDER BY relation::text;
DROP TRIGGER er_keep ON "er ""acc;$$";
CALL tenancy.erase_tenant('er-stays');
SELECT slug, state, rows_deleted FROM tenancy.tenant_erasures ORDER BY slug;
SELECT (SELECT count(*) FROM "er ""acc;$$") AS accounts, (SELECT count(*) FROM er_orders) AS orders,
       (SELECT count(*) FROM er_items) AS items, (SELECT count(*) FROM er_events) AS events;

-- A table name with a line break stays inside the preview's comment lines:
-- its second line must not stand as a statement of its own.
CREATE TABLE "er_nl
DROP TABLE er_plans; --" (id int PRIMARY KEY, tenant_id uuid);
SELECT tenancy.add_tenant_column('"er_nl
DROP TABLE er_plans; --"'::regclass) IS NOT NULL AS registered;
SELECT position(E'\n-- DROP TABLE er_plans; --" (0 rows now)' IN tenancy.erase_tenant_sql('er-stays')) > 0 AS comment_kept,
       position(E'\nDROP TABLE er_plans; --" (0 rows now)' IN tenancy.erase_tenant_sql('er-stays')) = 0 AS no_bare_line;

-- Not for PUBLIC.
SELECT has_function_privilege('er_owner', 'tenancy.erase_tenant(text, integer, integer, integer, interval, interval, interval, integer, integer)', 'EXECUTE') AS owner_erases,
       has_table_privilege('er_owner', 'tenancy.tenant_erasures', 'SELECT') AS owner_reads;

DROP EXTENSION tenancy CASCADE;
DROP TABLE er_items, er_orders, "er ""acc;$$", er_events, er_plans, "er_nl
DROP TABLE er_plans; --";
DROP FUNCTION er_keep();
REVOKE CREATE ON SCHEMA public FROM er_owner;
DROP ROLE er_owner;
