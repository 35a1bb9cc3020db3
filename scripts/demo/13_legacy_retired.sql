-- 13. Retire the legacy path, 2: the legacy role retired
-- Refused while it has run within tenancy.retire_after (a week by default);
-- the demo stands for a week of quiet with tenancy.retire_after = 0.
\set ON_ERROR_STOP 0
SELECT tenancy.retire_role('legacy_app');
\set ON_ERROR_STOP 1
SET tenancy.retire_after = 0;
SELECT tenancy.retire_role_sql('legacy_app');
SELECT tenancy.retire_role('legacy_app') IS NOT NULL AS retired;
SELECT relation, step, undo_sql FROM tenancy.contract_log WHERE step LIKE 'retire%' ORDER BY id;

\c - legacy_app
-- Its binding is gone: it must name its tenant, like the new code path.
\set ON_ERROR_STOP 0
SELECT count(*) FROM projects;
INSERT INTO projects (owner_id, name) VALUES (1, 'written without a tenant');
\set ON_ERROR_STOP 1
\c - postgres
SELECT role, retired_by, retire_forced FROM tenancy.deprecated_roles;
