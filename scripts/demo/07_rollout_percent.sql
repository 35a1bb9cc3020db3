-- 7. Roll out per tenant, 2: a stable 25% of the tenants enforced, the rest still in shadow
-- A tenant is in the percentage by the hash of its key (the same set in
-- every backend; raising the percentage only adds tenants).  The early
-- tenant stays enforced: a listed tenant wins over the percentage.
SELECT t.slug AS early FROM tenancy.tenants t JOIN projects p ON p.tenant_id = t.id
 WHERE t.slug LIKE 'user-%' ORDER BY t.slug LIMIT 1 \gset
SELECT t.slug AS other FROM tenancy.tenants t JOIN projects p ON p.tenant_id = t.id
 WHERE t.slug LIKE 'user-%' AND t.slug <> :'early' AND tenancy.rollout_bucket(t.id::text) >= 2500
 ORDER BY t.slug LIMIT 1 \gset
SELECT tenancy.set_rollout_percent('projects', 25) IS NOT NULL AS projects,
       tenancy.set_rollout_percent('tasks', 25) IS NOT NULL AS tasks,
       tenancy.set_rollout_percent('comments', 25) IS NOT NULL AS comments;
SELECT count(*) AS tenants, count(*) FILTER (WHERE tenancy.tenant_mode('projects', id::text) = 'enforce') AS enforced
  FROM tenancy.tenants;
-- Their modes now: the implicit tenant (the legacy path) by its bucket, the
-- early tenant enforced by its listing whatever its bucket, the other
-- tenant of the previous step still in shadow (its bucket is 2500 or more).
SELECT slug, tenancy.rollout_bucket(id::text) AS bucket, tenancy.tenant_mode('projects', id::text) AS mode
  FROM tenancy.tenants t JOIN (SELECT DISTINCT tenant_id FROM projects) p ON p.tenant_id = t.id
 WHERE is_implicit OR slug IN (:'early', :'other') ORDER BY slug;
SELECT relation, base_mode, percent, percent_mode, enforce_tenants FROM tenancy.rollout_state ORDER BY relation::text;
