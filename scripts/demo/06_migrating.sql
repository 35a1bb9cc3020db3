-- 6. Protect, stage 2: policies in migrating mode
-- Rows of the current tenant, and rows still NULL, are visible; writes must
-- carry the current tenant (the column default gives it).  The legacy
-- application no longer sees the personal projects; after a full backfill
-- it sees what enforce will show it.
SELECT tenancy.set_mode('projects', 'migrating') IS NOT NULL AS projects,
       tenancy.set_mode('tasks', 'migrating') IS NOT NULL AS tasks,
       tenancy.set_mode('comments', 'migrating') IS NOT NULL AS comments;
SELECT relation::text, stage FROM tenancy.tables ORDER BY 1;
