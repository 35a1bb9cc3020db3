-- 5. Protect, stage 1: shadow mode for every tenant while the legacy application runs
-- Nothing is hidden or refused; every row enforcement would hide and every
-- write it would refuse is counted, per table and per code path.  Shadow
-- comes first: it is the mode that hides the least (README, "Modes").
SELECT tenancy.policy_sql('projects', mode => 'shadow');
SELECT tenancy.enable_rls('projects', mode => 'shadow') IS NOT NULL AS projects;
SELECT tenancy.enable_rls('tasks', mode => 'shadow') IS NOT NULL AS tasks;
SELECT tenancy.enable_rls('comments', mode => 'shadow') IS NOT NULL AS comments;
SELECT tenancy.reset_shadow_stats();

-- The legacy application: it sets no tenant (its role is bound to the
-- implicit one) and reads and writes as it always did.
\c - legacy_app
SELECT current_user AS connected_as, tenancy.current_tenant() AS bound_tenant;
SELECT count(*) AS projects_seen FROM projects;
SELECT count(*) AS open_tasks FROM tasks WHERE status = 'open';
SELECT count(*) AS comments_on_project_7 FROM comments c JOIN tasks t ON t.id = c.task_id WHERE t.project_id = 7;
UPDATE tasks SET status = 'doing' WHERE id BETWEEN 1 AND 20 AND status = 'open';
INSERT INTO tasks (project_id, title) VALUES (1, 'written by the legacy application');
\c - postgres
SELECT current_user AS connected_as;

-- What enforcement would have hidden from it, and refused:
SELECT relation, rows_checked, rows_hidden, writes_refused FROM tenancy.shadow_stats ORDER BY relation::text;
-- These are personal projects of users, which the customer's application
-- must no longer see: enforcement is what we want.  The per-table counters
-- are drained; the report below still shows the divergences by path.
SELECT tenancy.reset_shadow_stats();
