#!/usr/bin/env bash
# Randomized tenant isolation test: several concurrent sessions of a
# non-owner role, each serving its own set of tenants, run random reads and
# writes through the enforce-mode policy (no WHERE on the tenant) and check
# every result against a shadow copy of the table without row security,
# queried with an explicit tenant filter.  Cross-tenant writes must fail with
# 42501 and change nothing.  Pass/fail does not depend on the interleaving:
# a session only ever owns rows of its own tenants.
# TENANCY_SEED=N replays a run; the seed is printed.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
SEED=${TENANCY_SEED:-$(( (RANDOM << 15 | RANDOM) % 1000000 + 1 ))}
SESSIONS=3
STEPS=${TENANCY_ISO_STEPS:-1200}
TENANTS=24
DB=rls_isolation
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -At)
tap_tmpdir TMP rls-isolation

plan $((SESSIONS + 2))
diag "seed: $SEED (replay with TENANCY_SEED=$SEED)"

"${PSQL[@]}" -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null || bail "cannot create database"
"${PSQL[@]}" -d postgres -c "DROP ROLE IF EXISTS rls_iso_app" >/dev/null 2>&1

setup=$("${PSQL[@]}" -d $DB 2>&1 <<SQL
CREATE EXTENSION tenancy;
CREATE ROLE rls_iso_app;
GRANT USAGE ON SCHEMA tenancy TO rls_iso_app;
SELECT count(tenancy.create_tenant('t' || n, 'Tenant ' || n,
                                   format('00000000-0000-0000-0000-%s', lpad(to_hex(n), 12, '0'))))
  FROM generate_series(1, $TENANTS) n;
CREATE TABLE items (id int PRIMARY KEY, tenant_id uuid DEFAULT tenancy.current_tenant(), val int NOT NULL);
CREATE INDEX ON items (tenant_id);
CREATE TABLE expected (id int PRIMARY KEY, tenant_id uuid NOT NULL, val int NOT NULL);
INSERT INTO items SELECT n, format('00000000-0000-0000-0000-%s', lpad(to_hex(n % $TENANTS + 1), 12, '0'))::uuid, n
  FROM generate_series(1, 600) n;
INSERT INTO expected SELECT * FROM items;
GRANT SELECT, INSERT, UPDATE, DELETE ON items, expected TO rls_iso_app;
SELECT tenancy.enable_rls('items') IS NOT NULL;

CREATE FUNCTION tkey(n int) RETURNS uuid LANGUAGE sql IMMUTABLE
    AS \$\$ SELECT format('00000000-0000-0000-0000-%s', lpad(to_hex(n), 12, '0'))::uuid \$\$;

-- One session: tenants n with n % sessions = session, ids = k * sessions + session.
CREATE PROCEDURE iso_run(session int, sessions int, steps int, seed float8, tenants int)
LANGUAGE plpgsql AS \$\$
DECLARE
    t int; other int; op float8; x int; v int; n bigint;
    got text; want text; next_id int := 100000 + session; cnt int;
    tk uuid;
BEGIN
    PERFORM setseed(seed);
    FOR step IN 1 .. steps LOOP
        t := session + sessions * floor(random() * ((tenants - 1 - session) / sessions + 1))::int;
        IF t = 0 THEN t := sessions; END IF;   -- tenants are 1-based
        IF t > tenants THEN t := t - sessions; END IF;
        tk := tkey(t);
        op := random();
        IF op < 0.05 THEN
            -- No tenant: nothing visible, nothing writable.
            PERFORM set_config('tenancy.tenant_id', '', true);
            SELECT count(*) INTO n FROM items;
            IF n <> 0 THEN RAISE EXCEPTION 'step %: % rows visible without a tenant', step, n; END IF;
            UPDATE items SET val = val + 1;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n <> 0 THEN RAISE EXCEPTION 'step %: % rows updated without a tenant', step, n; END IF;
            CONTINUE;
        END IF;
        PERFORM tenancy.set_tenant(tk::text);
        IF op < 0.40 THEN
            v := floor(random() * 1000)::int;
            SELECT coalesce(string_agg(id || ':' || val, ',' ORDER BY id), '') INTO got FROM items WHERE val < v;
            SELECT coalesce(string_agg(id || ':' || val, ',' ORDER BY id), '') INTO want
              FROM expected WHERE tenant_id = tk AND val < v;
            IF got <> want THEN RAISE EXCEPTION 'step %: tenant % read % but expected %', step, t, got, want; END IF;
            SELECT count(*) INTO n FROM items WHERE tenant_id <> tk;
            IF n <> 0 THEN RAISE EXCEPTION 'step %: tenant % sees % foreign rows', step, t, n; END IF;
        ELSIF op < 0.55 THEN
            x := next_id; next_id := next_id + sessions; v := floor(random() * 1000)::int;
            INSERT INTO items (id, val) VALUES (x, v);
            INSERT INTO expected VALUES (x, tk, v);
        ELSIF op < 0.75 THEN
            -- Update a random row of any tenant: only own rows are reached.
            SELECT id INTO x FROM expected ORDER BY id OFFSET floor(random() * 500) LIMIT 1;
            v := floor(random() * 1000)::int;
            UPDATE items SET val = v WHERE id = x;
            GET DIAGNOSTICS n = ROW_COUNT;
            UPDATE expected SET val = v WHERE id = x AND tenant_id = tk;
            GET DIAGNOSTICS cnt = ROW_COUNT;
            IF n <> cnt THEN RAISE EXCEPTION 'step %: tenant % updated % rows of id %, expected %', step, t, n, x, cnt; END IF;
        ELSIF op < 0.85 THEN
            SELECT id INTO x FROM expected ORDER BY id OFFSET floor(random() * 500) LIMIT 1;
            DELETE FROM items WHERE id = x;
            GET DIAGNOSTICS n = ROW_COUNT;
            DELETE FROM expected WHERE id = x AND tenant_id = tk;
            GET DIAGNOSTICS cnt = ROW_COUNT;
            IF n <> cnt THEN RAISE EXCEPTION 'step %: tenant % deleted % rows of id %, expected %', step, t, n, x, cnt; END IF;
        ELSE
            -- Cross-tenant writes are refused with 42501.
            other := t % tenants + 1;
            BEGIN
                IF op < 0.93 THEN
                    INSERT INTO items VALUES (next_id, tkey(other), 1);
                ELSE
                    UPDATE items SET tenant_id = tkey(other)
                     WHERE id = (SELECT min(id) FROM items);
                    GET DIAGNOSTICS n = ROW_COUNT;
                    IF n = 0 THEN CONTINUE; END IF;   -- the tenant has no row left
                END IF;
                RAISE EXCEPTION 'step %: tenant % wrote a row of tenant %', step, t, other;
            EXCEPTION WHEN insufficient_privilege THEN
                NULL;
            END;
        END IF;
        IF step % 50 = 0 THEN COMMIT; END IF;
    END LOOP;
    COMMIT;
END
\$\$;
GRANT EXECUTE ON PROCEDURE iso_run(int, int, int, float8, int) TO rls_iso_app;
SQL
)
[ $? -eq 0 ] || bail "setup failed: $setup"

pids=() outs=()
for s in $(seq 0 $((SESSIONS - 1))); do
    out=$(mktemp "$TMP/session.XXXXXX")
    outs+=("$out")
    seedf=$(awk -v a="$SEED" -v s="$s" 'BEGIN { printf "%.9f", ((a * 7 + s * 104729) % 1000003) / 1000003 }')
    "${PSQL[@]}" -d $DB -c "SET client_min_messages = error" -c "SET ROLE rls_iso_app" \
        -c "CALL iso_run($s, $SESSIONS, $STEPS, $seedf, $TENANTS)" >"$out" 2>&1 &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; rc=$?
    ok $rc "session $i: $STEPS random steps matched the shadow copy"
    [ $rc -eq 0 ] || sed 's/^/# /' "${outs[$i]}"
    rm -f "${outs[$i]}"
done

diff=$("${PSQL[@]}" -d $DB -c "SELECT count(*) FROM ((TABLE items EXCEPT TABLE expected) UNION ALL (TABLE expected EXCEPT TABLE items)) d")
rows=$("${PSQL[@]}" -d $DB -c "SELECT count(*) FROM items")
is "final table ($rows rows) equals the shadow copy (rows that differ)" "$diff" 0
foreign=$("${PSQL[@]}" -d $DB -c "SELECT count(*) FROM items i WHERE NOT EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.id = i.tenant_id)")
[ "$foreign" = 0 ] && [ "$rows" -gt 0 ]
ok $? "every row carries a registered tenant (unexpected tenants: $foreign, rows: $rows)"

"${PSQL[@]}" -d postgres -c "DROP DATABASE $DB" -c "DROP ROLE rls_iso_app" >/dev/null
tap_end
