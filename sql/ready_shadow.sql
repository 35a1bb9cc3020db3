-- verify(): the shadow_divergence check.  Until the RLS feature provides
-- tenancy.shadow_stats, the check is skipped with an ok row; with the view
-- it fails for a table whose counters are not drained.  This test stands a
-- view with the agreed shape in for the RLS feature's own.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
CREATE TABLE ready_shadow_t (id int PRIMARY KEY, tenant_id uuid NOT NULL);
INSERT INTO tenancy.tables (relation, stage) VALUES ('ready_shadow_t', 'shadow');

SELECT check_name, status, rows_affected, detail, fix FROM tenancy.verify() WHERE check_name = 'shadow_divergence';

-- Stand-in counters: one divergence, then drained.
CREATE TABLE ready_shadow_counters (relation regclass, rows_checked bigint, rows_hidden bigint,
                                    writes_refused bigint, last_divergence timestamptz);
INSERT INTO ready_shadow_counters VALUES ('ready_shadow_t', 10, 1, 0, now());
CREATE VIEW tenancy.shadow_stats AS SELECT * FROM ready_shadow_counters;
SELECT check_name, status, rows_affected, detail, fix FROM tenancy.verify() WHERE check_name = 'shadow_divergence';
UPDATE ready_shadow_counters SET rows_hidden = 0, writes_refused = 0, last_divergence = NULL;
SELECT check_name, status, rows_affected, detail, fix FROM tenancy.verify() WHERE check_name = 'shadow_divergence';

-- A view of another shape: a warning, not an error.
DROP VIEW tenancy.shadow_stats;
CREATE VIEW tenancy.shadow_stats AS SELECT relation FROM ready_shadow_counters;
SELECT check_name, status, rows_affected, detail FROM tenancy.verify() WHERE check_name = 'shadow_divergence';
DROP VIEW tenancy.shadow_stats;

DROP EXTENSION tenancy CASCADE;
DROP TABLE ready_shadow_t, ready_shadow_counters;
