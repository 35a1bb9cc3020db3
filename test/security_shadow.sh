#!/usr/bin/env bash
# TAP: the shadow counters have a fixed size (issue 13, finding 5), on a
# server of its own with tenancy.shadow_max_tables at its minimum, 16: the
# shared hash never grows past it, what does not fit is reported (verify()
# says the counters are incomplete) instead of dropped silently, OIDs an
# application role makes up take no room, shared memory is left for the
# rest of the server, and a reset frees the entries.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
tap_tmpdir DIR security-shadow
port=$(tap_free_port)
q() { psql_at "$DIR" "$port" -d postgres "$@"; }

plan 9
own_server_start "$DIR/data" "$port" "$DIR" "shared_preload_libraries = 'tenancy'" \
    "tenancy.shadow_max_tables = 16" "tenancy.worker_enabled = off"
expect "a server with tenancy.shadow_max_tables = 16 starts" "16" "$(q -c 'SHOW tenancy.shadow_max_tables')"

# 20 tables in shadow mode, each read by an application role without a
# tenant: every row diverges.
q >/dev/null <<'SQL'
CREATE EXTENSION tenancy;
CREATE ROLE shadow_app;
DO $$
BEGIN
    FOR i IN 1..20 LOOP
        EXECUTE format('CREATE TABLE s%s (id int, tenant_id uuid)', i);
        EXECUTE format('INSERT INTO s%s VALUES (1, NULL), (2, NULL)', i);
        EXECUTE format('GRANT SELECT ON s%s TO shadow_app', i);
        PERFORM tenancy.enable_rls(format('s%s', i)::regclass, mode => 'shadow');
    END LOOP;
END $$;
SELECT tenancy.reset_shadow_stats();
SQL
read_all='SET ROLE shadow_app;
DO $$ BEGIN FOR i IN 1..20 LOOP EXECUTE format($q$SELECT count(*) FROM s%s$q$, i); END LOOP; END $$;'
q -c "$read_all" >/dev/null
expect "16 of 20 shadow tables counted: the hash does not grow" "16" \
    "$(q -c 'SELECT count(*) FROM tenancy.shadow_stats')"
expect "the other 4 tables' rows and divergences are reported as dropped" "8|8" \
    "$(q -c 'SELECT rows_dropped || $$|$$ || divergences_dropped FROM tenancy.shadow_stats_dropped()')"
uncounted=$(q -c "SELECT relname FROM pg_class WHERE relname ~ '^s[0-9]+$'
                  AND oid NOT IN (SELECT relation FROM tenancy.shadow_stats) ORDER BY oid LIMIT 1")
expect "verify() on a table that did not fit: shadow counters incomplete" \
    "failure|shadow counters incomplete: 8 rows" \
    "$(q -c "SELECT status || '|' || substr(detail, 1, 34) FROM tenancy.verify('$uncounted')
             WHERE check_name = 'shadow_divergence'")"

# An application role calls the policy function with 100,000 made-up OIDs.
out=$(q -c "SET ROLE shadow_app" \
        -c "SELECT count(*) FROM generate_series(1, 100000) g
            WHERE tenancy.shadow_read((3000000000 + g)::oid::regclass, NULL::uuid)" 2>&1)
expect "100,000 made-up OIDs from an application role: no error" "100000" "$out"
expect "and no entry: still 16 tables counted, nothing more dropped" "16|8" \
    "$(q -c 'SELECT (SELECT count(*) FROM tenancy.shadow_stats) || $$|$$ || rows_dropped FROM tenancy.shadow_stats_dropped()')"
out=$(q -c "BEGIN" -c "SELECT count(pg_advisory_xact_lock(g)) FROM generate_series(1, 4000) g" -c "COMMIT" 2>&1)
expect "4,000 advisory locks in one transaction still fit in shared memory" "4000" "$out"

# A reset frees the entries and clears what was dropped; the tables that
# did not fit are then counted.
q -c "SELECT tenancy.reset_shadow_stats()" >/dev/null
expect "reset_shadow_stats(): no entry, nothing dropped" "0|0" \
    "$(q -c 'SELECT (SELECT count(*) FROM tenancy.shadow_stats) || $$|$$ || rows_dropped FROM tenancy.shadow_stats_dropped()')"
q -c "SET ROLE shadow_app" -c "SELECT count(*) FROM $uncounted" >/dev/null
expect "a table that did not fit before is counted after the reset" "1" \
    "$(q -c "SELECT count(*) FROM tenancy.shadow_stats WHERE relation = '$uncounted'::regclass AND rows_hidden = 2")"
tap_end
