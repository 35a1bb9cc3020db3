-- A tenant-scoped query through tenancy.current_tenant()
CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    tenant_id uuid NOT NULL, body text NOT NULL);
INSERT INTO notes (tenant_id, body)
SELECT CASE WHEN i % 2 = 0 THEN 'aaaaaaaa-0000-4000-8000-000000000001'::uuid
            ELSE 'bbbbbbbb-0000-4000-8000-000000000002'::uuid END,
       'note ' || i
  FROM generate_series(1, 6) AS i;
CREATE INDEX ON notes (tenant_id);

BEGIN;
SELECT tenancy.set_tenant('globex') AS set_tenant;
SELECT id, body FROM notes WHERE tenant_id = tenancy.current_tenant() ORDER BY id;
COMMIT;

-- The comparison is against a typed value: the tenant index is usable.
BEGIN;
SELECT tenancy.set_tenant('acme') AS set_tenant;
SET LOCAL enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id, body FROM notes WHERE tenant_id = tenancy.current_tenant();
COMMIT;

-- Unknown and suspended tenants are refused.
SELECT tenancy.suspend_tenant('globex');
\set ON_ERROR_STOP 0
BEGIN;
SELECT tenancy.set_tenant('globex');
ROLLBACK;
BEGIN;
SELECT tenancy.set_tenant('initech');
ROLLBACK;
\set ON_ERROR_STOP 1
SELECT tenancy.activate_tenant('globex');
SELECT set_tenant_calls, refused_unknown, refused_suspended FROM tenancy.context_stats();
