-- 6. Roll out per tenant, 1: one early tenant enforced, every other tenant still in shadow
-- Between shadow and enforce the mode can differ per tenant (README,
-- "Rolling out per tenant"): a design partner enforced first, then a stable
-- percentage of tenants, then everyone.  Each change has a preview, runs in
-- one transaction, is logged and can be undone.
-- A design partner: the first personal tenant that owns a project ...
SELECT t.slug AS early FROM tenancy.tenants t JOIN projects p ON p.tenant_id = t.id
 WHERE t.slug LIKE 'user-%' ORDER BY t.slug LIMIT 1 \gset
-- and a tenant the 25% of the next step leaves out (its bucket,
-- tenancy.rollout_bucket() of its key, is 2500 or more), followed to the end.
SELECT t.slug AS other FROM tenancy.tenants t JOIN projects p ON p.tenant_id = t.id
 WHERE t.slug LIKE 'user-%' AND t.slug <> :'early' AND tenancy.rollout_bucket(t.id::text) >= 2500
 ORDER BY t.slug LIMIT 1 \gset

-- Shadow for all: the new code path, too, sees every row (and it is counted).
\c - app
BEGIN;
SELECT tenancy.set_tenant(:'early') IS NOT NULL AS tenant_set;
SELECT tenancy.rollout_current_mode('projects') AS mode, count(*) AS projects_seen FROM projects;
COMMIT;
\c - postgres

-- The early tenant enforced on every table: preview, then run.
SELECT tenancy.set_tenant_mode_sql('projects', ARRAY[:'early'], 'enforce');
SELECT tenancy.set_tenant_mode('projects', ARRAY[:'early'], 'enforce') IS NOT NULL AS projects,
       tenancy.set_tenant_mode('tasks', ARRAY[:'early'], 'enforce') IS NOT NULL AS tasks,
       tenancy.set_tenant_mode('comments', ARRAY[:'early'], 'enforce') IS NOT NULL AS comments;
-- It sees its own projects only; another tenant still sees every row.
\c - app
BEGIN;
SELECT tenancy.set_tenant(:'early') IS NOT NULL AS tenant_set;
SELECT :'early' AS tenant, tenancy.rollout_current_mode('projects') AS mode, count(*) AS projects_seen FROM projects;
SELECT tenancy.set_tenant(:'other') IS NOT NULL AS tenant_set;
SELECT :'other' AS tenant, tenancy.rollout_current_mode('projects') AS mode, count(*) AS projects_seen FROM projects;
COMMIT;
\c - postgres
SELECT relation, base_mode, percent, percent_mode, enforce_tenants FROM tenancy.rollout_state ORDER BY relation::text;
