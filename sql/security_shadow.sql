-- Issue 13, finding 5: the shadow-mode policy functions are executable by
-- every role and take any regclass; only tables registered in shadow mode
-- are counted, so made-up OIDs cannot fill the shared counters (src/shadow.c).
-- The counters' size limit itself is tested in test/security_shadow.sh.
CREATE EXTENSION tenancy;
\set VERBOSITY terse
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
CREATE ROLE ss_app;
CREATE TABLE ss_notes (id int PRIMARY KEY, tenant_id uuid);
CREATE INDEX ON ss_notes (tenant_id);
INSERT INTO ss_notes VALUES (1, '00000000-0000-0000-0000-0000000000a1'),
                            (2, '00000000-0000-0000-0000-0000000000b2');
CREATE TABLE ss_plain (id int, tenant_id uuid);
GRANT SELECT ON ss_notes, ss_plain TO ss_app;
SELECT tenancy.enable_rls('ss_notes', mode => 'shadow') IS NOT NULL AS enabled;
SELECT tenancy.reset_shadow_stats();

-- An application role calls the policy functions with OIDs of its choice,
-- and with a table that is not in shadow mode: nothing is counted.
SET ROLE ss_app;
SELECT count(*) AS calls FROM generate_series(1, 5000) g
 WHERE tenancy.shadow_read((4000000000 + g)::oid::regclass, NULL::uuid)
   AND tenancy.shadow_write((4000000000 + g)::oid::regclass, NULL::uuid);
SELECT tenancy.shadow_read('ss_plain', NULL::uuid) AS read, tenancy.shadow_write('ss_plain', NULL::uuid) AS write;
RESET ROLE;
SELECT count(*) AS tables_counted FROM tenancy.shadow_stats;
SELECT * FROM tenancy.shadow_stats_dropped();

-- A real divergence is counted, and verify() reports it.
SET ROLE ss_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT count(*) AS visible FROM ss_notes;
COMMIT;
RESET ROLE;
SELECT relation, rows_checked, rows_hidden, writes_refused FROM tenancy.shadow_stats;
SELECT status, rows_affected FROM tenancy.verify('ss_notes') WHERE check_name = 'shadow_divergence';

-- Out of shadow mode, the table is no longer counted (this backend knew it
-- was registered: the mode switch invalidates that), and back in, again.
SELECT tenancy.set_mode('ss_notes', 'enforce') IS NOT NULL AS enforced;
SELECT tenancy.shadow_read('ss_notes', NULL::uuid) AS read;
SELECT rows_checked FROM tenancy.shadow_stats WHERE relation = 'ss_notes'::regclass;
SELECT tenancy.set_mode('ss_notes', 'shadow') IS NOT NULL AS shadow;
SELECT tenancy.shadow_read('ss_notes', NULL::uuid) AS read;
SELECT rows_checked FROM tenancy.shadow_stats WHERE relation = 'ss_notes'::regclass;

-- What was dropped is for monitoring roles, like the counters.
SELECT has_function_privilege('ss_app', 'tenancy.shadow_stats_dropped()', 'EXECUTE') AS app_reads_dropped,
       has_function_privilege('pg_read_all_stats', 'tenancy.shadow_stats_dropped()', 'EXECUTE') AS monitor_reads_dropped;

-- A reset removes the table's entry.
SELECT tenancy.reset_shadow_stats('ss_notes');
SELECT count(*) AS tables_counted FROM tenancy.shadow_stats;

SELECT tenancy.disable_rls('ss_notes') IS NOT NULL AS disabled;
DROP TABLE ss_notes, ss_plain;
DROP ROLE ss_app;
DROP EXTENSION tenancy;
