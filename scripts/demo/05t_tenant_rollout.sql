-- 5b. Roll out per tenant: one early tenant enforced, a percentage, then all
-- Between shadow and enforce the mode can differ per tenant (README,
-- "Rolling out per tenant"): a design partner enforced first, then a stable
-- percentage of tenants, then everyone.  Each change has a preview, runs in
-- one transaction, is logged and can be undone.
SELECT t.slug AS early FROM tenancy.tenants t JOIN projects p ON p.tenant_id = t.id
 WHERE t.slug LIKE 'user-%' ORDER BY t.slug LIMIT 1 \gset
SELECT t.slug AS other FROM tenancy.tenants t JOIN projects p ON p.tenant_id = t.id
 WHERE t.slug LIKE 'user-%' AND t.slug <> :'early' ORDER BY t.slug LIMIT 1 \gset

-- Shadow for all: every tenant sees every row (and it is counted).
\c - app
BEGIN;
SELECT tenancy.set_tenant(:'early') IS NOT NULL AS tenant_set;
SELECT tenancy.rollout_current_mode('projects') AS mode, count(*) AS projects_seen FROM projects;
COMMIT;
\c - postgres

-- One early tenant enforced on every table.
SELECT tenancy.set_tenant_mode_sql('projects', ARRAY[:'early'], 'enforce');
SELECT tenancy.set_tenant_mode('projects', ARRAY[:'early'], 'enforce') IS NOT NULL AS projects,
       tenancy.set_tenant_mode('tasks', ARRAY[:'early'], 'enforce') IS NOT NULL AS tasks,
       tenancy.set_tenant_mode('comments', ARRAY[:'early'], 'enforce') IS NOT NULL AS comments;
\c - app
BEGIN;
SELECT tenancy.set_tenant(:'early') IS NOT NULL AS tenant_set;
SELECT tenancy.rollout_current_mode('projects') AS mode, count(*) AS projects_seen FROM projects;
SELECT tenancy.set_tenant(:'other') IS NOT NULL AS tenant_set;
SELECT tenancy.rollout_current_mode('projects') AS mode, count(*) AS projects_seen FROM projects;
COMMIT;
\c - postgres

-- A stable percentage: 25% of the tenants by the hash of their key.
SELECT tenancy.set_rollout_percent('projects', 25) IS NOT NULL AS projects,
       tenancy.set_rollout_percent('tasks', 25) IS NOT NULL AS tasks,
       tenancy.set_rollout_percent('comments', 25) IS NOT NULL AS comments;
SELECT count(*) AS tenants, count(*) FILTER (WHERE tenancy.tenant_mode('projects', id::text) = 'enforce') AS enforced
  FROM tenancy.tenants;
SELECT relation, base_mode, percent, percent_mode, enforce_tenants FROM tenancy.rollout_state ORDER BY relation::text;

-- All enforced: the tables' mode to enforce, the rollout ended (the plain
-- equality policy again); the log keeps every step.
SELECT tenancy.set_mode(t, 'enforce') IS NOT NULL AS enforced, tenancy.clear_rollout(t) IS NOT NULL AS cleared
  FROM unnest(ARRAY['projects', 'tasks', 'comments']::regclass[]) t;
SELECT relation, op, tenants, coalesce(new_mode, new_percent_mode) AS mode, new_percent, by_role FROM tenancy.rollout_log ORDER BY id;
\c - app
BEGIN;
SELECT tenancy.set_tenant(:'other') IS NOT NULL AS tenant_set;
SELECT tenancy.rollout_current_mode('projects') AS mode, count(*) AS projects_seen FROM projects;
COMMIT;
\c - postgres
