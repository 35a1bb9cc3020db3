-- 7. Protect, stage 3: enforce
-- Plain equality with the current tenant: as fast as an explicit WHERE.
SELECT tenancy.set_mode('projects', 'enforce') IS NOT NULL AS projects,
       tenancy.set_mode('tasks', 'enforce') IS NOT NULL AS tasks,
       tenancy.set_mode('comments', 'enforce') IS NOT NULL AS comments;
SELECT t.slug AS personal FROM tenancy.tenants t
  JOIN projects p ON p.tenant_id = t.id WHERE t.slug LIKE 'user-%' ORDER BY t.slug LIMIT 1 \gset

\c - legacy_app
-- The legacy application sees exactly the customer's data.
SELECT current_user AS connected_as, tenancy.current_tenant() AS bound_tenant;
SELECT count(*) AS projects_seen, count(*) FILTER (WHERE is_personal) AS personal_seen FROM projects;

\c - app
-- The new code path: one tenant per transaction.
SELECT current_user AS connected_as;
SELECT count(*) AS without_a_tenant FROM projects;
BEGIN;
SELECT tenancy.set_tenant(:'personal') IS NOT NULL AS tenant_set;
SELECT count(*) AS projects, (SELECT count(*) FROM tasks) AS tasks FROM projects;
\set ON_ERROR_STOP 0
INSERT INTO projects (owner_id, name, tenant_id)
VALUES (1, 'planted in the customer''s tenant', '00000000-0000-4000-8000-000000000001');
\set ON_ERROR_STOP 1
ROLLBACK;
\c - postgres
