-- src/status.sql: migration status: unmigrated-row counts (C: status.c, worker.c).

------------------------------------------------------------------------------
-- Migration status: unmigrated-row counts kept by the background worker
-- (tenancy.worker_*) and by tenancy.refresh_status().  See src/status.c.
------------------------------------------------------------------------------

CREATE TABLE tenancy.migration_status (
    relation         regclass PRIMARY KEY,
    column_name      name NOT NULL,
    unmigrated       bigint,
    total_rows       bigint,
    percent_migrated numeric,
    method           text NOT NULL
                     CONSTRAINT migration_status_method_check
                     CHECK (method OPERATOR(pg_catalog.=) ANY (ARRAY['proof', 'exact', 'estimate'])),
    checked_at       timestamptz NOT NULL,
    measured_at      timestamptz,
    rate_per_s       numeric,
    eta              interval,
    scan_position    bigint,
    scan_unmigrated  bigint,
    scan_rows        bigint,
    prev_unmigrated  bigint,
    prev_measured_at timestamptz
);
COMMENT ON TABLE tenancy.migration_status IS 'rows whose tenant column is still NULL, per registered table; kept by the background worker and tenancy.refresh_status()';
COMMENT ON COLUMN tenancy.migration_status.unmigrated IS 'rows with the tenant column NULL (NULL: unknown yet)';
COMMENT ON COLUMN tenancy.migration_status.total_rows IS 'rows in the table: the planner''s estimate, or the count of the last complete incremental pass';
COMMENT ON COLUMN tenancy.migration_status.method IS 'proof: NOT NULL or validated CHECK; exact: counted (partial index or complete pass); estimate: pg_stats null_frac * rows, until a first pass ends; for a partitioned table the weakest of its partitions''';
COMMENT ON COLUMN tenancy.migration_status.checked_at IS 'last time the worker or refresh_status() looked at the table';
COMMENT ON COLUMN tenancy.migration_status.measured_at IS 'time of the last exact count or proof';
COMMENT ON COLUMN tenancy.migration_status.rate_per_s IS 'rows migrated per second since the figure before the last change was last seen (decays while nothing moves; negative: NULLs are being added)';
COMMENT ON COLUMN tenancy.migration_status.eta IS 'time left at that rate';
COMMENT ON COLUMN tenancy.migration_status.scan_position IS 'next heap block of the incremental count under way (for a partitioned table: the OID from which the partitions are still to be visited in the pass under way); NULL when none';
COMMENT ON COLUMN tenancy.migration_status.prev_unmigrated IS 'the figure before the last change (for the rate)';
COMMENT ON COLUMN tenancy.migration_status.prev_measured_at IS 'last time that figure was measured';
REVOKE ALL ON TABLE tenancy.migration_status FROM PUBLIC;

-- The leaf partitions of registered partitioned tables, each counted like a
-- plain table; the parent's row in migration_status is their sum.
CREATE TABLE tenancy.migration_status_partitions (
    relation         regclass PRIMARY KEY,
    parent           regclass NOT NULL,
    column_name      name NOT NULL,
    unmigrated       bigint,
    total_rows       bigint,
    percent_migrated numeric,
    method           text NOT NULL
                     CONSTRAINT migration_status_partitions_method_check
                     CHECK (method OPERATOR(pg_catalog.=) ANY (ARRAY['proof', 'exact', 'estimate'])),
    checked_at       timestamptz NOT NULL,
    measured_at      timestamptz,
    rate_per_s       numeric,
    eta              interval,
    scan_position    bigint,
    scan_unmigrated  bigint,
    scan_rows        bigint,
    prev_unmigrated  bigint,
    prev_measured_at timestamptz
);
CREATE INDEX migration_status_partitions_parent ON tenancy.migration_status_partitions (parent);
COMMENT ON TABLE tenancy.migration_status_partitions IS 'per leaf partition of a registered partitioned table: the same figures as tenancy.migration_status, whose row for the parent is their sum';
COMMENT ON COLUMN tenancy.migration_status_partitions.parent IS 'the registered partitioned table (the root, through every level)';
REVOKE ALL ON TABLE tenancy.migration_status_partitions FROM PUBLIC;

CREATE FUNCTION tenancy.refresh_status(tbl regclass DEFAULT NULL)
RETURNS SETOF tenancy.migration_status
    AS 'MODULE_PATHNAME', 'tenancy_refresh_status'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.refresh_status(regclass) IS 'count unmigrated rows now, as one worker cycle does, for one registered table or all; returns their status rows';
REVOKE EXECUTE ON FUNCTION tenancy.refresh_status(regclass) FROM PUBLIC;
