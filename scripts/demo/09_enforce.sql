-- 9. Protect, stage 3: every tenant enforced, the rollout ended
-- The tables' mode to enforce, then the rollout cleared: the plain equality
-- policy with the current tenant again, as fast as an explicit WHERE.  The
-- log keeps every step of the rollout.
SELECT tenancy.set_mode(t, 'enforce') IS NOT NULL AS enforced, tenancy.clear_rollout(t) IS NOT NULL AS cleared
  FROM unnest(ARRAY['projects', 'tasks', 'comments']::regclass[]) t;
SELECT relation, op, tenants, coalesce(new_mode, new_percent_mode) AS mode, new_percent, by_role FROM tenancy.rollout_log ORDER BY id;
SELECT count(*) AS rollouts_left FROM tenancy.rollout_state;
SELECT t.slug AS personal FROM tenancy.tenants t
  JOIN projects p ON p.tenant_id = t.id WHERE t.slug LIKE 'user-%' ORDER BY t.slug LIMIT 1 \gset
SELECT t.slug AS other FROM tenancy.tenants t JOIN projects p ON p.tenant_id = t.id
 WHERE t.slug LIKE 'user-%' AND t.slug <> :'personal' AND tenancy.rollout_bucket(t.id::text) >= 2500
 ORDER BY t.slug LIMIT 1 \gset

\c - legacy_app
-- The legacy application sees exactly the customer's data.
SELECT current_user AS connected_as, tenancy.current_tenant() AS bound_tenant;
SELECT count(*) AS projects_seen, count(*) FILTER (WHERE is_personal) AS personal_seen FROM projects;

\c - app
-- The new code path: one tenant per transaction.  The tenant outside the
-- 25% (shadow, then migrating) runs in enforce mode now, like the early one.
SELECT current_user AS connected_as;
SELECT count(*) AS without_a_tenant FROM projects;
BEGIN;
SELECT tenancy.set_tenant(:'other') IS NOT NULL AS tenant_set;
SELECT :'other' AS tenant, tenancy.rollout_current_mode('projects') AS mode, count(*) AS projects_seen FROM projects;
SELECT tenancy.set_tenant(:'personal') IS NOT NULL AS tenant_set;
SELECT count(*) AS projects, (SELECT count(*) FROM tasks) AS tasks FROM projects;
\set ON_ERROR_STOP 0
INSERT INTO projects (owner_id, name, tenant_id)
VALUES (1, 'planted in the customer''s tenant', '00000000-0000-4000-8000-000000000001');
\set ON_ERROR_STOP 1
ROLLBACK;
\c - postgres
