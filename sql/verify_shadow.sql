-- Readiness report: shadow divergences not drained.  A table in shadow mode
-- that counted rows the policy would hide is a failure until the counters
-- are reset; drained, it is ok.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('globex', 'Globex', 'bbbbbbbb-0000-0000-0000-000000000002');
CREATE TABLE ready_shadow_t (id int PRIMARY KEY, tenant_id uuid NOT NULL);
CREATE INDEX ON ready_shadow_t (tenant_id);
INSERT INTO ready_shadow_t VALUES (1, 'aaaaaaaa-0000-0000-0000-000000000001'),
                                  (2, 'bbbbbbbb-0000-0000-0000-000000000002');
CREATE ROLE ready_shadow_app;
GRANT SELECT ON ready_shadow_t TO ready_shadow_app;
\set VERBOSITY terse
SELECT tenancy.enable_rls('ready_shadow_t', mode => 'shadow') IS NOT NULL AS shadow_on;
\set VERBOSITY default
SELECT tenancy.reset_shadow_stats('ready_shadow_t');

-- Nothing counted yet: ok.
SELECT check_name, status, rows_affected, detail, fix FROM tenancy.verify('ready_shadow_t')
 WHERE check_name = 'shadow_divergence';

-- Tenant acme reads both rows through an application role (superusers
-- bypass row level security): shadow mode hides nothing, but counts the row
-- that enforce mode would hide.
SET ROLE ready_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS tenant_set;
SELECT count(*) AS rows_seen FROM ready_shadow_t;
COMMIT;
RESET ROLE;
SELECT rows_hidden, writes_refused FROM tenancy.shadow_stats WHERE relation = 'ready_shadow_t'::regclass;
SELECT check_name, status, rows_affected, detail, fix FROM tenancy.verify('ready_shadow_t')
 WHERE check_name = 'shadow_divergence';

-- Drained: ok again.
SELECT tenancy.reset_shadow_stats('ready_shadow_t');
SELECT check_name, status, rows_affected, detail FROM tenancy.verify('ready_shadow_t')
 WHERE check_name = 'shadow_divergence';

DROP TABLE ready_shadow_t;
DROP ROLE ready_shadow_app;
DROP EXTENSION tenancy CASCADE;
