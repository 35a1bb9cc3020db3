-- tenancy.add_tenant_column() and its preview: no rewrite, brief lock,
-- defaults for legacy and tenant-aware writers, idempotence, errors.
CREATE EXTENSION tenancy;
CREATE EXTENSION dblink;
\set SHOW_CONTEXT never
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111');
SELECT tenancy.create_tenant('beta', 'Beta', '22222222-2222-2222-2222-222222222222');

CREATE TABLE atc_orders (id int PRIMARY KEY, note text);
INSERT INTO atc_orders SELECT g, 'n' || g FROM generate_series(1, 5) g;

-- No implicit tenant yet: new rows would have no tenant to default to.
SELECT tenancy.add_tenant_column('atc_orders');
SELECT tenancy.set_implicit_tenant('acme');

-- Preview, then run: existing rows stay NULL, the table is not rewritten.
SELECT tenancy.add_tenant_column_sql('atc_orders');
SELECT pg_relation_filenode('atc_orders') AS filenode_before \gset
SELECT tenancy.add_tenant_column('atc_orders');
SELECT pg_relation_filenode('atc_orders') = :filenode_before AS not_rewritten;
SELECT count(*) AS rows, count(tenant_id) AS with_tenant FROM atc_orders;
SELECT format_type(atttypid, atttypmod) AS type, attnotnull FROM pg_attribute
 WHERE attrelid = 'atc_orders'::regclass AND attname = 'tenant_id';

-- New rows: the current tenant when set, the implicit tenant otherwise.
INSERT INTO atc_orders (id, note) VALUES (6, 'legacy writer');
BEGIN;
SELECT tenancy.set_tenant('beta');
INSERT INTO atc_orders (id, note) VALUES (7, 'beta writer');
COMMIT;
SELECT id, note, tenant_id FROM atc_orders WHERE id >= 6 ORDER BY id;

-- Idempotent: the second call changes nothing and says so.
SELECT tenancy.add_tenant_column('atc_orders') IS NULL AS nothing_done;
SELECT tenancy.add_tenant_column_sql('atc_orders') = '' AS empty_preview;
SELECT relation, column_name, source, stage FROM tenancy.tables ORDER BY relation::text;

-- fill_existing: existing rows get the implicit tenant at once (fast
-- default), still without a rewrite.
CREATE TABLE atc_items (id int PRIMARY KEY, qty int);
INSERT INTO atc_items SELECT g, g FROM generate_series(1, 4) g;
SELECT pg_relation_filenode('atc_items') AS filenode_before \gset
SELECT tenancy.add_tenant_column_sql('atc_items', fill_existing => true);
SELECT tenancy.add_tenant_column('atc_items', fill_existing => true) IS NOT NULL AS done;
SELECT pg_relation_filenode('atc_items') = :filenode_before AS not_rewritten;
SELECT tenant_id, count(*) FROM atc_items GROUP BY tenant_id;
SELECT atthasmissing FROM pg_attribute WHERE attrelid = 'atc_items'::regclass AND attname = 'tenant_id';
SELECT relation, source FROM tenancy.tables WHERE relation = 'atc_items'::regclass;

-- Identifiers are quoted; another column name.
CREATE TABLE "ATC Mixed" (id int PRIMARY KEY);
SELECT tenancy.add_tenant_column_sql('"ATC Mixed"', column_name => 'Owner Tenant');
SELECT tenancy.add_tenant_column('"ATC Mixed"', 'Owner Tenant') IS NOT NULL AS done;
SELECT attname FROM pg_attribute WHERE attrelid = '"ATC Mixed"'::regclass AND attnum > 0 ORDER BY attnum;

-- An existing column of the right type without the default gets the default only.
CREATE TABLE atc_manual (id int PRIMARY KEY, tenant_id uuid);
SELECT tenancy.add_tenant_column_sql('atc_manual');

-- A partitioned table: the partitions follow.
CREATE TABLE atc_parted (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE atc_parted_2024 PARTITION OF atc_parted FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO atc_parted VALUES (1, '2024-05-01');
SELECT tenancy.add_tenant_column('atc_parted') IS NOT NULL AS done;
INSERT INTO atc_parted (id, day) VALUES (2, '2024-06-01');
SELECT id, tenant_id FROM atc_parted_2024 ORDER BY id;

-- Errors; none of them changes anything.
\set VERBOSITY default
SELECT tenancy.add_tenant_column('atc_parted_2024');
CREATE VIEW atc_view AS SELECT * FROM atc_orders;
SELECT tenancy.add_tenant_column('atc_view');
CREATE MATERIALIZED VIEW atc_mview AS SELECT 1 AS x;
SELECT tenancy.add_tenant_column('atc_mview');
CREATE SEQUENCE atc_seq;
SELECT tenancy.add_tenant_column('atc_seq');
SELECT tenancy.add_tenant_column('atc_missing');
CREATE TABLE atc_wrong (id int PRIMARY KEY, tenant_id text);
SELECT tenancy.add_tenant_column('atc_wrong');
SELECT tenancy.add_tenant_column('atc_orders', column_name => 'other_tenant');
SELECT tenancy.add_tenant_column('atc_orders', column_name => NULL);
SELECT tenancy.add_tenant_column('atc_items', lock_timeout => '0');
\set VERBOSITY terse
SELECT count(*) AS registered FROM tenancy.tables;
SELECT attname FROM pg_attribute WHERE attrelid = 'atc_wrong'::regclass AND attnum > 0 ORDER BY attnum;

-- The ACCESS EXCLUSIVE lock is only waited for briefly, then retried: a
-- session holding the table makes it give up after max_attempts.
SELECT dblink_connect('atc_holder', format('dbname=%s port=%s host=%s', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT dblink_exec('atc_holder', 'BEGIN');
SELECT dblink_exec('atc_holder', 'LOCK TABLE atc_manual IN ACCESS SHARE MODE');
\set VERBOSITY default
SELECT tenancy.add_tenant_column('atc_manual', lock_timeout => '10ms', max_attempts => 3);
\set VERBOSITY terse
SELECT dblink_exec('atc_holder', 'COMMIT');
SELECT dblink_disconnect('atc_holder');
SELECT tenancy.add_tenant_column('atc_manual', lock_timeout => '10ms', max_attempts => 3);

-- Other key types: bigint keys give a bigint column and default.
DROP TABLE atc_orders, atc_items, "ATC Mixed", atc_manual, atc_parted, atc_wrong CASCADE;
DROP MATERIALIZED VIEW atc_mview;
DROP SEQUENCE atc_seq;
DROP EXTENSION tenancy CASCADE;
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '41');
SELECT tenancy.set_implicit_tenant('acme');
CREATE TABLE atc_big (id int PRIMARY KEY);
SELECT tenancy.add_tenant_column('atc_big');
INSERT INTO atc_big VALUES (1);
SELECT id, tenant_id, pg_typeof(tenant_id) FROM atc_big;

DROP TABLE atc_big;
DROP EXTENSION tenancy CASCADE;
RESET tenancy.tenant_type;
DROP EXTENSION dblink;
