#!/usr/bin/env bash
# TAP: the path counters (issue 18) have a fixed size, on a server of its
# own with every bound small: tenancy.path_stats_max = 16 (table, path,
# role) entries, tenancy.path_stats_tenants = 2 (room for 6, evicted down to
# 4 by score, as citus_stat_tenants bounds its list), 4 divergence samples.
# What does not fit is counted, never dropped silently; scores decay; a
# reset frees everything; without shared_preload_libraries the views say
# so (55000).
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
tap_tmpdir DIR path-stats-bounds
port=$(tap_free_port)
q() { psql_at "$DIR" "$port" -d postgres "$@"; }
key() { printf '00000000-0000-0000-0000-%012d' "$1"; }

plan 14
own_server_start "$DIR/data" "$port" "$DIR" "shared_preload_libraries = 'tenancy'" \
    "tenancy.path_stats_max = 16" "tenancy.path_stats_tenants = 2" \
    "tenancy.path_divergence_samples = 4" "tenancy.path_stats_tenant_period = '7d'" \
    "tenancy.worker_enabled = off"
expect "a server with the smallest bounds starts" "16|2|4" \
    "$(q -c 'SELECT current_setting($$tenancy.path_stats_max$$) || $$|$$ || current_setting($$tenancy.path_stats_tenants$$) || $$|$$ || current_setting($$tenancy.path_divergence_samples$$)')"

# 20 tables in shadow mode (2 rows each, no tenant), read by an application
# role without a tenant: every row diverges, on the legacy path.
q >/dev/null <<'SQL'
CREATE EXTENSION tenancy;
CREATE ROLE path_app;
DO $$
BEGIN
    FOR i IN 1..20 LOOP
        EXECUTE format('CREATE TABLE s%s (id int, tenant_id uuid)', i);
        EXECUTE format('INSERT INTO s%s VALUES (1, NULL), (2, NULL)', i);
        EXECUTE format('GRANT SELECT ON s%s TO path_app', i);
        PERFORM tenancy.enable_rls(format('s%s', i)::regclass, mode => 'shadow');
    END LOOP;
END $$;
CREATE TABLE one (id int, tenant_id uuid);
INSERT INTO one VALUES (1, '00000000-0000-0000-0000-000000000000');
GRANT SELECT ON one TO path_app;
SELECT tenancy.enable_rls('one', mode => 'shadow');
SELECT tenancy.reset_path_stats();
SQL
q -c 'SET ROLE path_app;
DO $$ BEGIN FOR i IN 1..20 LOOP EXECUTE format($q$SELECT count(*) FROM s%s$q$, i); END LOOP; END $$;' >/dev/null
# The first flush (16 local slots full) creates s1's entry, the legacy
# path's totals, then s2 .. s15: 16 entries; s16 .. s20 do not fit.
expect "15 tables and the path's totals fill the 16 entries: the hash does not grow" "15|1" \
    "$(q -c 'SELECT (SELECT count(*) FROM tenancy.path_stats) || $$|$$ || (SELECT count(*) FROM tenancy.path_activity)')"
expect "the path's totals count every row: 40 read, 40 hidden, one transaction" "legacy|1|40|40" \
    "$(q -c 'SELECT path, xacts, rows_read, rows_hidden FROM tenancy.path_activity')"
expect "the 5 other tables' rows and divergences are reported as dropped" "10|10" \
    "$(q -c 'SELECT rows_dropped, divergences_dropped FROM tenancy.path_stats_dropped()')"
expect "the sample keeps the last 4 of 20 divergences (one per table and statement), 16 overwritten" \
    "s17 s18 s19 s20|20|16" \
    "$(q -c 'SELECT string_agg(relation::text, $$ $$ ORDER BY seq) FROM tenancy.path_divergences')|$(q -c 'SELECT samples_taken || $$|$$ || samples_overwritten FROM tenancy.path_stats_dropped()')"
expect "a reset frees the entries and zeroes what was dropped" "0|0|0|0|0" \
    "$(q -c 'SELECT tenancy.reset_path_stats()' >/dev/null; q -c 'SELECT (SELECT count(*) FROM tenancy.path_stats) || $$|$$ || (SELECT count(*) FROM tenancy.tenant_path_stats) || $$|$$ || (SELECT count(*) FROM tenancy.path_divergences) || $$|$$ || rows_dropped || $$|$$ || tenants_evicted FROM tenancy.path_stats_dropped()')"

# Tenants 1 .. 7 on the new path (SET by the client), tenant k reading the
# one row k times (score k): the 7th finds the 6 entries full, and the two
# lowest-scored (1 and 2) are evicted.
for k in 1 2 3 4 5 6 7; do
    stmts="SET ROLE path_app; SET tenancy.tenant_id = '$(key "$k")';"
    for ((i = 0; i < k; i++)); do stmts+=" SELECT count(*) FROM one;"; done
    q -c "$stmts" >/dev/null
done
expect "the view shows the top 2 tenants by score" \
    "new|$(key 7)|1|7|7|7
new|$(key 6)|1|6|6|6" \
    "$(q -c 'SELECT path, tenant, xacts, rows_read, rows_hidden, score FROM tenancy.tenant_path_stats')"
expect "2 tenants evicted, with their 3 rows and 3 divergences" "2|3|3" \
    "$(q -c 'SELECT tenants_evicted, tenant_rows_evicted, tenant_divergences_evicted FROM tenancy.path_stats_dropped()')"
expect "tenant 3, tracked beyond the view, keeps counting and rises into it" "1" \
    "$(q -c "SET ROLE path_app; SET tenancy.tenant_id = '$(key 3)'; SELECT count(*) FROM one; SELECT count(*) FROM one; SELECT count(*) FROM one; SELECT count(*) FROM one; SELECT count(*) FROM one;" >/dev/null
       q -c "SELECT count(*) FROM tenancy.tenant_path_stats WHERE tenant = '$(key 3)' AND rows_read = 8 AND score = 8")"
expect "the path's totals still count every transaction and row" "new|8|33" \
    "$(q -c 'SELECT path, xacts, rows_read FROM tenancy.path_activity')"

# Scores decay: halved each tenancy.path_stats_tenant_period.
q -c "ALTER SYSTEM SET tenancy.path_stats_tenant_period = '1s'" >/dev/null
own_server_reload "$DIR/data"
sleep 2.2
expect "after two periods or more, the scores are at most a quarter, the counts unchanged" "true|8" \
    "$(q -c "SELECT bool_and(score <= 2)::text || '|' || max(rows_read) FILTER (WHERE tenant = '$(key 3)') FROM tenancy.tenant_path_stats")"

# The application role reads none of it, and cannot reset it.
like "path_stats is not for PUBLIC" \
    "$(q -c 'SET ROLE path_app; SELECT count(*) FROM tenancy.tenant_path_stats' 2>&1)" "permission denied"
like "reset_path_stats() is not for PUBLIC" \
    "$(q -c 'SET ROLE path_app; SELECT tenancy.reset_path_stats()' 2>&1)" "permission denied"

# Without shared_preload_libraries: 55000 with a hint.
port2=$(tap_free_port)
[ "$port2" = "$port" ] && port2=$((port + 1))
own_server_start "$DIR/plain" "$port2" "$DIR" "tenancy.worker_enabled = off"
psql_at "$DIR" "$port2" -d postgres -c 'CREATE EXTENSION tenancy' >/dev/null
expect "without preload, every path view and function raises 55000" "55000 55000 55000 55000 55000" \
    "$(for s in 'SELECT * FROM tenancy.path_stats' 'SELECT * FROM tenancy.tenant_path_stats' \
                'SELECT * FROM tenancy.path_divergences' 'SELECT * FROM tenancy.path_stats_dropped()' \
                'SELECT tenancy.reset_path_stats()'; do
           psql -X -q -At -h "$DIR" -p "$port2" -U "$TAP_USER" -d postgres -v VERBOSITY=sqlstate -c "$s" 2>&1 | grep -o '[0-9][0-9A-Z]\{4\}' | head -1
       done | tr '\n' ' ' | sed 's/ $//')"
tap_end
