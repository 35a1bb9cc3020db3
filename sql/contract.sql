-- enforce_not_null(): NOT VALID check, VALIDATE, SET NOT NULL, drop the
-- check, each committed on its own and recorded; refusal while NULL rows
-- remain; preview; resuming a half-done run.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
CREATE TABLE ready_contract_t (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO ready_contract_t SELECT g, CASE WHEN g <= 3 THEN NULL ELSE '11111111-1111-1111-1111-111111111111'::uuid END
  FROM generate_series(1, 10) g;
INSERT INTO tenancy.tables (relation) VALUES ('ready_contract_t');

-- Preview.
SELECT * FROM tenancy.enforce_not_null_sql('ready_contract_t');
SELECT step, sql, undo_sql FROM tenancy.enforce_not_null_plan('ready_contract_t');

-- Refused while NULL rows remain: nothing changes.
CALL tenancy.enforce_not_null('ready_contract_t');
\set VERBOSITY sqlstate
CALL tenancy.enforce_not_null('ready_contract_t');
\set VERBOSITY default
SELECT attnotnull FROM pg_attribute WHERE attrelid = 'ready_contract_t'::regclass AND attname = 'tenant_id';
SELECT count(*) AS constraints FROM pg_constraint WHERE conrelid = 'ready_contract_t'::regclass AND contype = 'c';
SELECT count(*) AS logged FROM tenancy.contract_log;

-- Other errors.
\set VERBOSITY sqlstate
CALL tenancy.enforce_not_null('pg_class');
CALL tenancy.enforce_not_null(NULL);
CALL tenancy.enforce_not_null('ready_contract_t', lock_timeout => '0');
CALL tenancy.enforce_not_null('ready_contract_t', max_attempts => 0);
SELECT * FROM tenancy.enforce_not_null_sql('pg_class');
\set VERBOSITY default
UPDATE tenancy.tables SET column_name = 'no_such_column' WHERE relation = 'ready_contract_t'::regclass;
SELECT * FROM tenancy.enforce_not_null_sql('ready_contract_t');
UPDATE tenancy.tables SET column_name = 'tenant_id' WHERE relation = 'ready_contract_t'::regclass;

-- Fill the rows, then enforce.
UPDATE ready_contract_t SET tenant_id = '11111111-1111-1111-1111-111111111111' WHERE tenant_id IS NULL;
-- Inside a transaction block it cannot commit between steps: refused before any change.
BEGIN;
CALL tenancy.enforce_not_null('ready_contract_t');
ROLLBACK;
SELECT count(*) AS constraints FROM pg_constraint WHERE conrelid = 'ready_contract_t'::regclass AND contype = 'c';

CALL tenancy.enforce_not_null('ready_contract_t');
SELECT attnotnull FROM pg_attribute WHERE attrelid = 'ready_contract_t'::regclass AND attname = 'tenant_id';
SELECT count(*) AS constraints FROM pg_constraint WHERE conrelid = 'ready_contract_t'::regclass AND contype = 'c';
SELECT relation, step, sql, undo_sql, undone_at IS NULL AS active FROM tenancy.contract_log ORDER BY id;
\set VERBOSITY sqlstate
INSERT INTO ready_contract_t VALUES (11, NULL);
\set VERBOSITY default

-- Again: nothing to do.
SELECT count(*) AS steps FROM tenancy.enforce_not_null_sql('ready_contract_t');
CALL tenancy.enforce_not_null('ready_contract_t');

-- Resuming: a run stopped after its NOT VALID check goes on from VALIDATE.
CREATE TABLE ready_contract_u (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO ready_contract_u VALUES (1, '11111111-1111-1111-1111-111111111111');
INSERT INTO tenancy.tables (relation) VALUES ('ready_contract_u');
ALTER TABLE ready_contract_u ADD CONSTRAINT tenancy_tenant_id_not_null CHECK (tenant_id IS NOT NULL) NOT VALID;
SELECT * FROM tenancy.enforce_not_null_sql('ready_contract_u');
CALL tenancy.enforce_not_null('ready_contract_u', lock_timeout => '200ms', max_attempts => 2);
SELECT attnotnull FROM pg_attribute WHERE attrelid = 'ready_contract_u'::regclass AND attname = 'tenant_id';
-- A leftover check on a NOT NULL column is dropped.
ALTER TABLE ready_contract_u ADD CONSTRAINT tenancy_tenant_id_not_null CHECK (tenant_id IS NOT NULL);
SELECT * FROM tenancy.enforce_not_null_sql('ready_contract_u');
CALL tenancy.enforce_not_null('ready_contract_u');
SELECT count(*) AS constraints FROM pg_constraint WHERE conrelid = 'ready_contract_u'::regclass AND contype = 'c';
SELECT step FROM tenancy.contract_log WHERE relation = 'ready_contract_u'::regclass ORDER BY id;
-- A column that was NOT NULL before is left alone and nothing is recorded,
-- so rollback_table() will not drop a NOT NULL the extension did not set.
CREATE TABLE ready_contract_v (id int PRIMARY KEY, tenant_id uuid NOT NULL);
INSERT INTO tenancy.tables (relation) VALUES ('ready_contract_v');
CALL tenancy.enforce_not_null('ready_contract_v');
SELECT count(*) AS logged FROM tenancy.contract_log WHERE relation = 'ready_contract_v'::regclass;

-- The report agrees.
SELECT relation, status, rows_affected FROM tenancy.verify() WHERE check_name = 'null_tenant';

DROP EXTENSION tenancy CASCADE;
DROP TABLE ready_contract_t, ready_contract_u, ready_contract_v;
