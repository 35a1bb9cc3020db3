-- 5. Protect, stage 1: policies in migrating mode
-- Rows of the current tenant, and rows still NULL, are visible; writes must
-- carry the current tenant (the column default gives it).  The generator
-- says what would still leak or be slow.
SELECT tenancy.policy_sql('projects', mode => 'migrating');
SELECT tenancy.enable_rls('projects', mode => 'migrating') IS NOT NULL AS projects;
SELECT tenancy.enable_rls('tasks', mode => 'migrating') IS NOT NULL AS tasks;
SELECT tenancy.enable_rls('comments', mode => 'migrating') IS NOT NULL AS comments;
SELECT relation::text, stage FROM tenancy.tables ORDER BY 1;
