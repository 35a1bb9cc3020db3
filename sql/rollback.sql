-- rollback_table(): undo what the extension added for a table (contract
-- steps, NOT NULL it set, tenancy defaults, the policy), keep the data.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
CREATE TABLE ready_rollback_parent (id bigserial PRIMARY KEY, tenant_id uuid DEFAULT tenancy.current_tenant(), name text UNIQUE);
CREATE TABLE ready_rollback_child (id bigserial PRIMARY KEY, tenant_id uuid DEFAULT tenancy.current_tenant(),
                                   parent_id bigint REFERENCES ready_rollback_parent (id));
INSERT INTO ready_rollback_parent (tenant_id, name) VALUES ('11111111-1111-1111-1111-111111111111', 'p');
INSERT INTO ready_rollback_child (tenant_id, parent_id) VALUES ('11111111-1111-1111-1111-111111111111', 1);
INSERT INTO tenancy.tables (relation, stage) VALUES ('ready_rollback_parent', 'enforce'), ('ready_rollback_child', 'enforce');
ALTER TABLE ready_rollback_child ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenancy_policy ON ready_rollback_child USING (tenant_id = tenancy.current_tenant());
CALL tenancy.enforce_not_null('ready_rollback_parent');
CALL tenancy.enforce_not_null('ready_rollback_child');
\set ON_ERROR_STOP on
SELECT * FROM tenancy.scope_constraints_sql() \gexec
\set ON_ERROR_STOP off
\d ready_rollback_child

-- Preview, then roll the child back: newest step first.
SELECT * FROM tenancy.rollback_table_sql('ready_rollback_child');
SELECT * FROM tenancy.rollback_table('ready_rollback_child');
\d ready_rollback_child
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'ready_rollback_child'::regclass;
SELECT stage FROM tenancy.tables WHERE relation = 'ready_rollback_child'::regclass;
SELECT step, undone_at IS NOT NULL AS undone FROM tenancy.contract_log
 WHERE relation = 'ready_rollback_child'::regclass ORDER BY id;
SELECT id, tenant_id, parent_id FROM ready_rollback_child;

-- Then the parent (its (tenant, id) index was there for the child's key).
SELECT * FROM tenancy.rollback_table('ready_rollback_parent');
\d ready_rollback_parent
SELECT id, tenant_id, name FROM ready_rollback_parent;

-- Again: nothing left but marking the log.
SELECT * FROM tenancy.rollback_table_sql('ready_rollback_child');

-- A policy among others: only tenancy_policy goes, RLS stays on.
CREATE POLICY tenancy_policy ON ready_rollback_child USING (tenant_id = tenancy.current_tenant());
CREATE POLICY ready_rollback_other ON ready_rollback_child USING (true);
ALTER TABLE ready_rollback_child ENABLE ROW LEVEL SECURITY;
SELECT * FROM tenancy.rollback_table_sql('ready_rollback_child');
SELECT * FROM tenancy.rollback_table('ready_rollback_child');
SELECT relrowsecurity FROM pg_class WHERE oid = 'ready_rollback_child'::regclass;
DROP POLICY ready_rollback_other ON ready_rollback_child;

-- A failing undo rolls the whole thing back.
CALL tenancy.enforce_not_null('ready_rollback_child');
SELECT tenancy.log_step('ready_rollback_child', 'manual', 'ALTER TABLE ...', 'ALTER TABLE public.ready_rollback_child DROP CONSTRAINT no_such_constraint') > 0 AS logged;
SELECT * FROM tenancy.rollback_table('ready_rollback_child');
SELECT attnotnull FROM pg_attribute WHERE attrelid = 'ready_rollback_child'::regclass AND attname = 'tenant_id';

-- Errors.
\set VERBOSITY sqlstate
SELECT * FROM tenancy.rollback_table('pg_class');
SELECT * FROM tenancy.rollback_table_sql('pg_class');
\set VERBOSITY default

DROP EXTENSION tenancy CASCADE;
DROP TABLE ready_rollback_child, ready_rollback_parent;
