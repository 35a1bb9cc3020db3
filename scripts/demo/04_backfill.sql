-- 4. Backfill parents, then children through their foreign keys
-- Company projects go to the implicit tenant, personal projects to their
-- owner's personal tenant.  Each batch commits on its own; a second CALL
-- resumes after the last committed batch.
CALL tenancy.backfill('projects', source => $$CASE WHEN t.is_personal
        THEN (SELECT p.id FROM tenancy.tenants p WHERE p.slug = 'user-' || t.owner_id)
        ELSE tenancy.implicit_tenant()::uuid END$$);
CALL tenancy.backfill('tasks', via => 'tasks_project_id_fkey');
CALL tenancy.backfill('comments', via => 'comments_task_id_fkey');
SELECT relation, state, rows_done, percent, max_batch_ms, retries, round(rows_per_s) AS rows_per_s
  FROM tenancy.backfill_progress ORDER BY relation::text;
