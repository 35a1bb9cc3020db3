-- 9. Contract: NOT NULL, tenant-scoped keys and references, without long locks
CALL tenancy.enforce_not_null('projects');
CALL tenancy.enforce_not_null('tasks');
CALL tenancy.enforce_not_null('comments');
-- Reviewed, then run: concurrent index builds, NOT VALID then VALIDATE.
SELECT tenancy.scope_constraints_sql() \gexec
SELECT relation, unmigrated, method FROM tenancy.refresh_status() ORDER BY relation::text;
SELECT status, count(*) FROM tenancy.verify() GROUP BY status ORDER BY status;
SELECT check_name, relation, status, detail FROM tenancy.verify() WHERE status <> 'ok';
