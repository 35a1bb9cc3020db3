#!/usr/bin/env bash
# TAP (issue 17, context): a randomized isolation run on a Citus coordinator
# and two workers.  Several application sessions on the coordinator, many
# tenants, interleaved transactions driven one statement at a time in a
# random order (seed printed; CITUS_ISOLATION_SEED=N repeats a run): each
# transaction sets a tenant, inserts its rows, reads them back (multi-shard,
# router, colocated join, reference-table join), may switch tenant, tries a
# write of another tenant in a savepoint, and commits or rolls back.  Every
# read is checked against a model of what that session may see (the rows
# committed for its tenant plus its own pending ones), so a row of any other
# tenant, a row missing, a tenant left on a cached worker connection after
# COMMIT or ROLLBACK, or a cross-tenant write accepted fails the run.
# Half the sessions are a role in token mode (tenancy.context_source =
# token as its default on every node): they set each tenant with a signed
# token, which the workers verify with their own keys files.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
source "$(dirname "${BASH_SOURCE[0]}")/lib/citus.bash"
citus_installed || citus_skip_all "test/citus_isolation.sh"

CLIENTS=4 TENANTS=12 STEPS=${CITUS_ISOLATION_STEPS:-600}
SEED=${CITUS_ISOLATION_SEED:-$(( $(date +%s) % 100000 ))}
RANDOM=$SEED

plan 10
diag "seed $SEED: $CLIENTS clients, $TENANTS tenants, $STEPS steps"
tap_tmpdir DIR citus_isolation
python3 - "$DIR" "$TENANTS" <<'PY' || bail "python3 could not mint the tokens (python3-jwt)"
import base64, os, sys, time
import jwt
d, n = sys.argv[1], int(sys.argv[2])
secret = os.urandom(32)
with open(os.path.join(d, "keys"), "w") as f:
    f.write("k1 HS256 " + base64.b64encode(secret).decode() + "\n")
for t in range(1, n + 1):
    with open(os.path.join(d, "t%d.jwt" % t), "w") as f:
        f.write(jwt.encode({"tenant_id": "00000000-0000-0000-0000-%012d" % t, "exp": int(time.time()) + 3600},
                           secret, algorithm="HS256", headers={"kid": "k1"}))
PY
[ "$(id -u)" -eq 0 ] && chown -R "$TAP_USER" "$DIR"
citus_cluster_start "$DIR" "tenancy.token_keys_file = 'token_keys'"
for n in 0 1 2; do install -m 600 -o "$TAP_USER" "$DIR/keys" "${CITUS_DATA[n]}/token_keys"; done

T() { printf '00000000-0000-0000-0000-%012d' "$1"; }
cq 0 >/dev/null <<SQL || bail "setup failed"
SET client_min_messages = warning;
CREATE EXTENSION tenancy;
CREATE ROLE app LOGIN;
CREATE ROLE app_tok LOGIN;
ALTER ROLE app_tok SET tenancy.context_source = token;
GRANT USAGE ON SCHEMA tenancy TO app, app_tok;
SELECT tenancy.create_tenant('t' || i, 'Tenant ' || i, format('00000000-0000-0000-0000-%s', lpad(i::text, 12, '0')))
  FROM generate_series(1, $TENANTS) i;
CREATE TABLE events (tenant_id uuid NOT NULL, id bigserial, client int NOT NULL, kind text NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE accounts (tenant_id uuid NOT NULL PRIMARY KEY, plan text NOT NULL);
CREATE TABLE kinds (kind text PRIMARY KEY);
SELECT create_distributed_table('events', 'tenant_id');
SELECT create_distributed_table('accounts', 'tenant_id', colocate_with => 'events');
SELECT create_reference_table('kinds');
INSERT INTO kinds VALUES ('a'), ('b');
INSERT INTO accounts SELECT format('00000000-0000-0000-0000-%s', lpad(i::text, 12, '0'))::uuid, 'p' || i FROM generate_series(1, $TENANTS) i;
GRANT SELECT, INSERT ON events, accounts, kinds TO app, app_tok;
GRANT USAGE ON SEQUENCE events_id_seq TO app, app_tok;
SELECT tenancy.enable_rls('events');
SELECT tenancy.enable_rls('accounts');
SQL

is "the token role is in token mode on every node" \
   "$(for n in 0 1 2; do psql -X -At -h 127.0.0.1 -p "${CITUS_PORT[n]}" -U app_tok -d "$CITUS_DB" -c "SHOW tenancy.context_source"; done | tr '\n' ' ')" "token token token "
# clients 1..CLIENTS/2: app with set_tenant(); the others: app_tok with tokens
role_of() { [ "$1" -le $((CLIENTS / 2)) ] && echo app || echo app_tok; }
set_sql() {
    if [ "$(role_of "$1")" = app ]; then echo "SELECT tenancy.set_tenant('t$2') = '$(T "$2")';"
    else echo "SELECT tenancy.set_tenant_token('$(cat "$DIR/t$2.jwt")') = '$(T "$2")';"; fi
}
for c in $(seq 1 $CLIENTS); do
    client_start "$c" -h 127.0.0.1 -p "${CITUS_PORT[0]}" -U "$(role_of "$c")" -d "$CITUS_DB"
done

declare -A committed pending
for t in $(seq 1 $TENANTS); do committed[$t]=0; done
declare -a cur intx
for c in $(seq 1 $CLIENTS); do cur[c]=0; intx[c]=0; done
reads=0 bad_rows=0 bad_count=0 refused=0 accepted=0 unexpected=0 after_end=0 leaked_after=0 commits=0 rollbacks=0
problems=()
note() { [ ${#problems[@]} -lt 10 ] && problems+=("$*"); }
visible() { local c=$1 t=$2; echo $(( committed[$t] + ${pending[$c,$t]:-0} )); }
expect_ok() { [ "$STATE" = 00000 ] || { unexpected=$((unexpected + 1)); note "client $1: $2: $STATE $OUT"; }; }

for step in $(seq 1 "$STEPS"); do
    c=$((1 + RANDOM % CLIENTS))
    if [ "${intx[c]}" -eq 0 ]; then
        t=$((1 + RANDOM % TENANTS))
        client_q "$c" "BEGIN;" "$(set_sql "$c" "$t")"
        expect_ok "$c" "set_tenant t$t"
        [ "$OUT" = t ] || note "client $c: set_tenant said $OUT"
        cur[c]=$t intx[c]=1
        continue
    fi
    t=${cur[c]}
    case $((RANDOM % 10)) in
        0|1|2)  # insert a row of the tenant (the key spelled out: WITH CHECK on the shard)
            client_q "$c" "INSERT INTO events (tenant_id, client, kind) VALUES ('$(T $t)', $c, '$([ $((RANDOM % 2)) = 0 ] && echo a || echo b)');"
            expect_ok "$c" "insert t$t"
            [ "$STATE" = 00000 ] && pending[$c,$t]=$(( ${pending[$c,$t]:-0} + 1 )) ;;
        3|4)    # multi-shard read, and the colocated and reference joins
            client_q "$c" "SELECT count(*) || '|' || count(DISTINCT tenant_id) || '|' || coalesce(bool_and(tenant_id = '$(T $t)'), true) FROM events;" \
                          "SELECT count(*) FROM events e JOIN accounts a USING (tenant_id) JOIN kinds k USING (kind);" \
                          "SELECT count(*) FROM events WHERE tenant_id = '$(T $(( 1 + (t % TENANTS) )))';"
            expect_ok "$c" "read t$t"
            reads=$((reads + 1))
            n=$(visible "$c" "$t")
            want="$n|$([ "$n" -gt 0 ] && echo 1 || echo 0)|true"$'\n'"$n"$'\n'"0"
            if [ "$OUT" != "$want" ]; then
                # a row of another tenant: more than one tenant, or not the one set,
                # or rows where another tenant's key was asked for
                case $OUT in [0-9]*"|"[01]"|true"$'\n'*$'\n'0) bad_count=$((bad_count + 1)) ;;
                             *) bad_rows=$((bad_rows + 1)) ;; esac
                note "client $c tenant t$t: read '$(_tap_flat "$OUT")', model '$(_tap_flat "$want")'"
            fi ;;
        5)      # a write of another tenant, in a savepoint: refused
            o=$(( 1 + (t + RANDOM % (TENANTS - 1)) % TENANTS ))
            client_q "$c" "SAVEPOINT w;" "INSERT INTO events (tenant_id, client, kind) VALUES ('$(T $o)', $c, 'a');"
            if [ "$STATE" = 42501 ]; then refused=$((refused + 1)); else accepted=$((accepted + 1)); note "client $c tenant t$t: write of t$o: $STATE"; fi
            client_q "$c" "ROLLBACK TO SAVEPOINT w;"
            expect_ok "$c" "rollback to savepoint" ;;
        6)      # switch tenant within the transaction
            n=$((1 + RANDOM % TENANTS))
            client_q "$c" "$(set_sql "$c" "$n")"
            expect_ok "$c" "switch to t$n"
            cur[c]=$n ;;
        7|8|9)  # end: commit (or roll back), then nothing is visible
            if [ $((RANDOM % 3)) -eq 0 ]; then
                client_q "$c" "ROLLBACK;"
                rollbacks=$((rollbacks + 1))
            else
                client_q "$c" "COMMIT;"
                expect_ok "$c" "commit"
                for k in $(seq 1 $TENANTS); do committed[$k]=$(( committed[$k] + ${pending[$c,$k]:-0} )); done
                commits=$((commits + 1))
            fi
            for k in $(seq 1 $TENANTS); do unset "pending[$c,$k]"; done
            intx[c]=0
            client_q "$c" "SELECT count(*) FROM events;" "SELECT count(*) FROM events e JOIN accounts a USING (tenant_id);"
            after_end=$((after_end + 1))
            [ "$OUT" = $'0\n0' ] || { leaked_after=$((leaked_after + 1)); note "client $c after the end: '$(_tap_flat "$OUT")'"; } ;;
    esac
done
for c in $(seq 1 $CLIENTS); do [ "${intx[c]}" -eq 1 ] && client_q "$c" "ROLLBACK;"; done

diag "$commits commits, $rollbacks rollbacks, $reads checked reads, $refused refused cross-tenant writes, $after_end checks after the end"
[ ${#problems[@]} -gt 0 ] && diag "${problems[@]}"
is "no read saw a row of another tenant" "$bad_rows" 0
is "every read returned exactly the rows the model allows" "$bad_count" 0
is "every cross-tenant write was refused (42501)" "$accepted" 0
is "after every COMMIT and ROLLBACK nothing was visible (no cached worker connection kept a tenant)" "$leaked_after" 0
is "no statement failed unexpectedly" "$unexpected" 0
model=$(for t in $(seq 1 $TENANTS); do echo "$(T $t)|${committed[$t]}"; done)
got=$(cq 0 -c "SELECT a.tenant_id || '|' || count(e.id) FROM accounts a LEFT JOIN events e USING (tenant_id) GROUP BY a.tenant_id ORDER BY a.tenant_id")
is "the committed rows per tenant are the model's (superuser)" "$got" "$model"
is "every committed row was written by a session whose tenant it is (no stray row)" \
   "$(cq 0 -c "SELECT count(*) FROM events")" "$(( $(printf '%s\n' "${committed[@]}" | paste -sd+ | bc) ))"
is "token mode: a bare key from the token role is refused (42501)" \
   "$(psql -X -q -At -v VERBOSITY=sqlstate -h 127.0.0.1 -p "${CITUS_PORT[0]}" -U app_tok -d "$CITUS_DB" -c "BEGIN" -c "SELECT tenancy.set_tenant('t1')" 2>&1)" "ERROR:  42501"
ok $(( commits >= 20 && reads >= 40 && refused >= 10 ? 0 : 1 )) "the run exercised enough (>= 20 commits, 40 reads, 10 refused writes)"
tap_end
