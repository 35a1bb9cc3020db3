-- 8. Protect, stage 2: the tenants not enforced yet go from shadow to migrating
-- The tables' own mode becomes migrating; the rollout keeps its enforced
-- tenants (the early one and the 25%).  Migrating shows a tenant its own
-- rows and the rows still NULL, and writes must carry the current tenant
-- (the column default gives it): the legacy application no longer sees the
-- personal projects.  With the backfill complete it already shows what
-- enforce will (README, "Modes"); on a table still being backfilled this is
-- the stage that keeps the rows without a tenant visible.
SELECT tenancy.set_mode('projects', 'migrating') IS NOT NULL AS projects,
       tenancy.set_mode('tasks', 'migrating') IS NOT NULL AS tasks,
       tenancy.set_mode('comments', 'migrating') IS NOT NULL AS comments;
SELECT relation::text, stage FROM tenancy.tables ORDER BY 1;
SELECT relation, base_mode, percent, percent_mode, enforce_tenants FROM tenancy.rollout_state ORDER BY relation::text;

SELECT t.slug AS early FROM tenancy.tenants t JOIN projects p ON p.tenant_id = t.id
 WHERE t.slug LIKE 'user-%' ORDER BY t.slug LIMIT 1 \gset
SELECT t.slug AS other FROM tenancy.tenants t JOIN projects p ON p.tenant_id = t.id
 WHERE t.slug LIKE 'user-%' AND t.slug <> :'early' AND tenancy.rollout_bucket(t.id::text) >= 2500
 ORDER BY t.slug LIMIT 1 \gset

\c - legacy_app
SELECT current_user AS connected_as, tenancy.rollout_current_mode('projects') AS mode,
       count(*) AS projects_seen, count(*) FILTER (WHERE is_personal) AS personal_seen FROM projects;
-- The tenant outside the 25%, in shadow until now, sees its own projects only.
\c - app
BEGIN;
SELECT tenancy.set_tenant(:'other') IS NOT NULL AS tenant_set;
SELECT :'other' AS tenant, tenancy.rollout_current_mode('projects') AS mode, count(*) AS projects_seen FROM projects;
COMMIT;
\c - postgres
