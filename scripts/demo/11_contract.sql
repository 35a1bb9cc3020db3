-- 11. Contract: NOT NULL, tenant-scoped keys and references, the report's fixes
-- Each step takes its lock briefly: NOT NULL through a validated check,
-- unique indexes built concurrently, foreign keys NOT VALID then VALIDATE.
CALL tenancy.enforce_not_null('projects');
CALL tenancy.enforce_not_null('tasks');
CALL tenancy.enforce_not_null('comments');
\o /dev/null
SELECT tenancy.scope_constraints_sql() \gexec
\o
SELECT relation, step, done_at IS NOT NULL AS done FROM tenancy.contract_log ORDER BY id;
-- The remaining fixes, exactly as the report suggests them.
SELECT DISTINCT fix FROM tenancy.verify() WHERE status <> 'ok' AND fix NOT LIKE '%\gexec%' \gexec
-- The readiness report after the contract phase.
SELECT status, count(*) FROM tenancy.verify() GROUP BY status ORDER BY status;
SELECT check_name, relation, status, detail FROM tenancy.verify() WHERE status <> 'ok';
