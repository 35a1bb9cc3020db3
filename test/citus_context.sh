#!/usr/bin/env bash
# TAP (issue 17, context): tenancy on a Citus coordinator and two workers.
# CREATE EXTENSION on the coordinator reaches every node; the tenant set with
# tenancy.set_tenant() (and, under tenancy.context_source = token, with
# tenancy.set_tenant_token()) on the coordinator reaches the shards, for
# router, multi-shard, colocated-join and reference-table queries, without
# the user touching citus.propagate_set_commands; nothing is visible with no
# tenant, or after COMMIT on the cached worker connections; roles bound to a
# tenant work; a worker verifies a forwarded token with its own keys and
# never admits a bare key from a client that connects to it directly.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
source "$(dirname "${BASH_SOURCE[0]}")/lib/citus.bash"
citus_installed || citus_skip_all "test/citus_context.sh"

plan 52
tap_tmpdir DIR citus_context

# Tokens, minted by a real JWT library: "shared" is in every node's keys
# file, "coord" only in the coordinator's.
python3 - "$DIR" <<'PY' || bail "python3 could not mint the tokens (python3-jwt)"
import base64, os, sys, time
import jwt
d = sys.argv[1]
now = int(time.time())
shared, coord, other = os.urandom(32), os.urandom(32), os.urandom(32)
b64 = lambda b: base64.b64encode(b).decode()
for name, lines in (("keys_coord", ["shared HS256 " + b64(shared), "coord HS256 " + b64(coord)]),
                    ("keys_worker", ["shared HS256 " + b64(shared)])):
    with open(os.path.join(d, name), "w") as f:
        f.write("\n".join(lines) + "\n")
def mint(name, key, kid, tenant):
    t = jwt.encode({"tenant_id": tenant, "sub": "u-" + name, "exp": now + 3600, "iat": now},
                   key, algorithm="HS256", headers={"kid": kid})
    with open(os.path.join(d, name + ".jwt"), "w") as f:
        f.write(t)
mint("t1", shared, "shared", "00000000-0000-0000-0000-000000000001")
mint("t4", shared, "shared", "00000000-0000-0000-0000-000000000004")
mint("t1_coord", coord, "coord", "00000000-0000-0000-0000-000000000001")
mint("t1_forged", other, "shared", "00000000-0000-0000-0000-000000000001")
mint("slug", shared, "shared", "t1")
PY
[ "$(id -u)" -eq 0 ] && chown -R "$TAP_USER" "$DIR"
tok() { cat "$DIR/$1.jwt"; }

citus_cluster_start "$DIR" "tenancy.token_keys_file = 'token_keys'"
install -m 600 -o "$TAP_USER" "$DIR/keys_coord" "${CITUS_DATA[0]}/token_keys"
for n in 1 2; do install -m 600 -o "$TAP_USER" "$DIR/keys_worker" "${CITUS_DATA[n]}/token_keys"; done

T() { printf '00000000-0000-0000-0000-%012d' "$1"; }
# as ROLE on node N: psql output, or "ERROR <SQLSTATE>" when it fails
as() {
    local n=$1 role=$2; shift 2
    psql -X -q -At -v ON_ERROR_STOP=1 -v VERBOSITY=sqlstate -h 127.0.0.1 -p "${CITUS_PORT[n]}" \
        -U "$role" -d "$CITUS_DB" "$@" 2>&1 | sed -E 's/^(psql:[^ ]* )?ERROR: +/ERROR /' | tr '\n' ' ' | sed 's/ $//'
}

# ---- 1. CREATE EXTENSION on the coordinator: every node ------------------
cq 0 -c "SET client_min_messages = warning; CREATE EXTENSION tenancy" || bail "CREATE EXTENSION tenancy failed"
v0=$(cq 0 -c "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'")
is "the workers have tenancy, at the coordinator's version" \
   "$(cq 1 -c "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'") $(cq 2 -c "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'")" "$v0 $v0"
is "the event triggers are on every node" \
   "$(for n in 0 1 2; do cq $n -c "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'tenancy%'"; done | tr '\n' ' ')" "2 2 2 "
wait_for 10 bash -c "for p in ${CITUS_PORT[*]}; do psql -X -At -h 127.0.0.1 -p \$p -U $TAP_USER -d $CITUS_DB -c \"SELECT 1 FROM pg_stat_activity WHERE backend_type = 'tenancy launcher'\" | grep -q 1 || exit 1; done"
ok $? "the tenancy launcher runs on every node"

cq 0 >/dev/null <<SQL || bail "setup failed"
SET client_min_messages = warning;
CREATE ROLE app LOGIN;
CREATE ROLE bound LOGIN;
GRANT USAGE ON SCHEMA tenancy TO app, bound;
SELECT tenancy.create_tenant('t' || i, 'Tenant ' || i, format('00000000-0000-0000-0000-%s', lpad(i::text, 12, '0')))
  FROM generate_series(1, 6) i;
CREATE TABLE orders (tenant_id uuid NOT NULL, id int NOT NULL, country text, PRIMARY KEY (tenant_id, id));
CREATE TABLE items (tenant_id uuid NOT NULL, id int NOT NULL, order_id int NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE countries (code text PRIMARY KEY, name text);
SELECT create_distributed_table('orders', 'tenant_id');
SELECT create_distributed_table('items', 'tenant_id', colocate_with => 'orders');
SELECT create_reference_table('countries');
-- tenant i has 3*i orders, each with two items
INSERT INTO orders SELECT format('00000000-0000-0000-0000-%s', lpad(t::text, 12, '0'))::uuid, t * 100 + k,
       CASE WHEN k % 2 = 0 THEN 'fr' ELSE 'de' END
  FROM generate_series(1, 6) t, generate_series(1, 3 * t) k;
INSERT INTO items SELECT tenant_id, id * 10 + j, id FROM orders, generate_series(1, 2) j;
INSERT INTO countries VALUES ('fr', 'France'), ('de', 'Germany');
GRANT SELECT, INSERT, UPDATE, DELETE ON orders, items, countries TO app, bound;
SELECT tenancy.enable_rls('orders');
SELECT tenancy.enable_rls('items');
SQL
is "the policy is on every shard, on the workers" \
   "$(for n in 1 2; do cq $n -c "SELECT count(*) FROM pg_policy p WHERE p.polname = 'tenancy_policy' AND p.polrelid::regclass::text ~ '^(orders|items)_[0-9]+$'"; done | paste -sd+ | bc)" "16"
is "the tenants' rows are spread over several shards" \
   "$(cq 0 -c "SELECT count(DISTINCT get_shard_id_for_distribution_column('orders', tenant_id)) > 1 FROM orders")" "t"
is "citus_context_problems(): none after CREATE EXTENSION" "$(cq 0 -c "SELECT count(*) FROM tenancy.citus_context_problems()")" "0"
is "verify(): citus_context ok after CREATE EXTENSION" \
   "$(cq 0 -c "SELECT status FROM tenancy.verify() WHERE check_name = 'citus_context'")" "ok"
errs=$(grep -h "ERROR" "${CITUS_DATA[@]/%/.log}" 2>/dev/null | head -3)
is "no node logged an error while Citus created the shards and policies" "$errs" ""

# ---- 2. Tenant context reaches the shards ------------------------------------
is "citus.propagate_set_commands is left at its default" "$(as 0 app -c "SHOW citus.propagate_set_commands")" "none"
is "no tenant: nothing visible (multi-shard)" "$(as 0 app -c "SELECT count(*) FROM orders")" "0"
is "no tenant, in a transaction block: nothing visible" "$(as 0 app -c "BEGIN" -c "SELECT count(*) FROM orders" -c "COMMIT")" "0"
t1=$(T 1) t2=$(T 2) t3=$(T 3) t4=$(T 4)
is "set_tenant: multi-shard count is the tenant's" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t3') IS NOT NULL" -c "SELECT count(*), count(DISTINCT tenant_id), min(tenant_id::text) FROM orders" -c "COMMIT")" "t 9|1|$t3"
is "router query on the tenant's key; on another tenant's key: nothing" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t3') IS NOT NULL" -c "SELECT count(*) FROM orders WHERE tenant_id = '$t3'" -c "SELECT count(*) FROM orders WHERE tenant_id = '$t2'" -c "SELECT count(*) FROM orders WHERE tenant_id = '$t3' AND id = 301" -c "COMMIT")" "t 9 0 1"
is "colocated join: the tenant's rows only" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t2') IS NOT NULL" -c "SELECT count(*), count(DISTINCT o.tenant_id) FROM orders o JOIN items i ON i.tenant_id = o.tenant_id AND i.order_id = o.id" -c "COMMIT")" "t 12|1"
is "join with a reference table: the tenant's rows only" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t2') IS NOT NULL" -c "SELECT c.name, count(*) FROM orders o JOIN countries c ON c.code = o.country GROUP BY 1 ORDER BY 1" -c "COMMIT")" "t France|3 Germany|3"
is "a write of the tenant's own row is accepted" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t1') IS NOT NULL" -c "INSERT INTO orders VALUES ('$t1', 999, 'fr')" -c "SELECT count(*) FROM orders" -c "ROLLBACK")" "t 4"
is "a write of another tenant's row: 42501" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t1') IS NOT NULL" -c "INSERT INTO orders VALUES ('$t2', 999, 'fr')" -c "ROLLBACK")" "t ERROR 42501"
is "an update moving a row to another tenant: Citus refuses to change the distribution column (0A000)" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t1') IS NOT NULL" -c "UPDATE items SET tenant_id = '$t2' WHERE id = 1011" -c "ROLLBACK")" "t ERROR 0A000"
is "update and delete reach only the tenant's rows" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t1') IS NOT NULL" -c "UPDATE orders SET country = 'de'" -c "DELETE FROM items" -c "SELECT count(*) FROM items" -c "ROLLBACK")" "t 0"
cq 0 -c "SELECT count(*) FROM items" > "$DIR/items_after"
is "  ... and were rolled back (superuser count)" "$(cat "$DIR/items_after")" "126"
is "after COMMIT the cached worker connections keep no tenant" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t4') IS NOT NULL" -c "SELECT count(*) FROM orders" -c "COMMIT" -c "SELECT count(*) FROM orders" -c "BEGIN" -c "SELECT count(*) FROM orders" -c "SHOW citus.propagate_set_commands" -c "COMMIT")" "t 12 0 0 none"
is "a tenant switch within a transaction reaches the open worker connections" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t1') IS NOT NULL" -c "SELECT count(*) FROM orders" -c "SELECT tenancy.set_tenant('t4') IS NOT NULL" -c "SELECT count(*) FROM orders" -c "SELECT count(*) FROM orders WHERE tenant_id = '$t1'" -c "COMMIT")" "t 3 t 12 0"
is "clear_tenant() within a transaction clears it on the workers" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t1') IS NOT NULL" -c "SELECT count(*) FROM orders" -c "SELECT tenancy.clear_tenant()" -c "SELECT count(*) FROM orders" -c "COMMIT")" "t 3  0"
is "ROLLBACK TO SAVEPOINT restores the earlier tenant on the workers" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t1') IS NOT NULL" -c "SELECT count(*) FROM orders" -c "SAVEPOINT s" -c "SELECT tenancy.set_tenant('t4') IS NOT NULL" -c "SELECT count(*) FROM orders" -c "ROLLBACK TO SAVEPOINT s" -c "SELECT count(*) FROM orders" -c "COMMIT")" "t 3 t 12 3"
is "a session-level tenant reaches the workers in its own transaction only (fail closed after)" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t2', false) IS NOT NULL" -c "SELECT count(*) FROM orders" -c "COMMIT" -c "SELECT tenancy.current_tenant() = '$t2'" -c "SELECT count(*) FROM orders")" "t 6 t 0"

# ---- 3. A role bound to a tenant ------------------------------------------------
cq 0 -c "SELECT tenancy.bind_role('bound', 't2')" >/dev/null || bail "bind_role failed"
is "the binding's role default reaches every worker" \
   "$(for n in 1 2; do cq $n -c "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting WHERE setrole = 'bound'::regrole"; done | tr '\n' ' ')" "tenancy.tenant_id=$t2 tenancy.tenant_id=$t2 "
is "the binding itself reaches every worker" \
   "$(for n in 1 2; do cq $n -c "SELECT tenant FROM tenancy.role_bindings WHERE role = 'bound'::regrole"; done | tr '\n' ' ')" "$t2 $t2 "
is "citus_context_problems(): the bindings agree on every node" "$(cq 0 -c "SELECT count(*) FROM tenancy.citus_context_problems()")" "0"
is "a bound role sees its tenant's rows only, without setting it (autocommit and in a block)" \
   "$(as 0 bound -c "SELECT count(*), count(DISTINCT tenant_id) FROM orders" -c "BEGIN" -c "SELECT count(*) FROM orders o JOIN items i ON i.tenant_id = o.tenant_id AND i.order_id = o.id" -c "COMMIT")" "6|1 12"
is "a bound role cannot set another tenant on the coordinator: 42501" \
   "$(as 0 bound -c "BEGIN" -c "SELECT tenancy.set_tenant('t1')" -c "ROLLBACK")" "ERROR 42501"
is "  ... nor on a worker it connects to directly: 42501" \
   "$(as 1 bound -c "SET tenancy.tenant_id = '$t1'")" "ERROR 42501"
is "a bound role's write of another tenant: 42501" \
   "$(as 0 bound -c "INSERT INTO orders VALUES ('$t1', 998, 'fr')")" "ERROR 42501"
cq 0 -c "SELECT tenancy.unbind_role('bound')" >/dev/null
is "unbind_role() removes the binding on every worker" \
   "$(for n in 1 2; do cq $n -c "SELECT count(*) FROM tenancy.role_bindings"; done | tr '\n' ' ')" "0 0 "

# ---- 4. Token mode ------------------------------------------------------------
cq 0 -c "ALTER SYSTEM SET tenancy.context_source = 'token'" -c "SELECT pg_reload_conf()" >/dev/null || bail "ALTER SYSTEM failed"
wait_for 10 bash -c "psql -X -At -h 127.0.0.1 -p ${CITUS_PORT[0]} -U app -d $CITUS_DB -c 'SHOW tenancy.context_source' | grep -qx token"
is "citus_context_problems(): token mode on the coordinator only is reported for each worker" \
   "$(cq 0 -c "SELECT string_agg(check_name || ' ' || node, ',' ORDER BY node) FROM tenancy.citus_context_problems()")" \
   "$(printf 'context_source 127.0.0.1:%s\n' "${CITUS_PORT[1]}" "${CITUS_PORT[2]}" | LC_ALL=C sort | paste -sd,)"
is "verify(): citus_context fails for each worker still in the other mode" \
   "$(cq 0 -c "SELECT string_agg(status || ' ' || split_part(detail, ',', 2), ';' ORDER BY detail) FROM tenancy.verify() WHERE check_name = 'citus_context'")" \
   "failure  context_source: tenancy.context_source is any on the worker;failure  context_source: tenancy.context_source is any on the worker"
is "verify() on a worker has no citus_context row" \
   "$(cq 1 -c "SELECT count(*) FROM tenancy.verify() WHERE check_name = 'citus_context'")" "0"
is "citus_context_problems() on a worker: 55000" "$(as 1 "$TAP_USER" -c "SELECT * FROM tenancy.citus_context_problems()")" "ERROR 55000"
citus_all "ALTER SYSTEM SET tenancy.context_source = 'token'" || bail "ALTER SYSTEM failed"
citus_all "SELECT pg_reload_conf()" >/dev/null
wait_for 10 bash -c "for p in ${CITUS_PORT[*]}; do psql -X -At -h 127.0.0.1 -p \$p -U app -d $CITUS_DB -c 'SHOW tenancy.context_source' | grep -qx token || exit 1; done"
ok $? "tenancy.context_source = token on every node"
is "citus_context_problems(): none once every node is in token mode" "$(cq 0 -c "SELECT count(*) FROM tenancy.citus_context_problems()")" "0"
is "token mode: a bare key is refused on the coordinator: 42501" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant('t1')" -c "ROLLBACK")" "ERROR 42501"
is "token mode: the forwarded token is verified by the workers; multi-shard and join see the tenant's rows" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant_token('$(tok t4)') = '$t4'" -c "SELECT count(*), count(DISTINCT tenant_id) FROM orders" -c "SELECT count(*) FROM orders o JOIN items i ON i.tenant_id = o.tenant_id AND i.order_id = o.id" -c "COMMIT")" "t 12|1 24"
is "token mode: a write of another tenant: 42501" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant_token('$(tok t4)') IS NOT NULL" -c "INSERT INTO orders VALUES ('$t1', 997, 'fr')" -c "ROLLBACK")" "t ERROR 42501"
is "token mode: after COMMIT nothing is visible" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant_token('$(tok t4)') IS NOT NULL" -c "SELECT count(*) FROM orders" -c "COMMIT" -c "SELECT count(*) FROM orders")" "t 12 0"
is "token mode: a token the coordinator verifies but the workers' keys do not: the workers refuse it (28000)" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant_token('$(tok t1_coord)') = '$t1'" -c "SELECT count(*) FROM orders" -c "ROLLBACK")" "t ERROR 28000"
is "token mode: on the coordinator tenancy.tenant_token admits no key (only set_tenant_token() does): 42501" \
   "$(as 0 app -c "BEGIN" -c "SET LOCAL tenancy.tenant_token = '$(tok t1)'" -c "SET LOCAL tenancy.tenant_id = '$t1'" -c "ROLLBACK")" "ERROR 42501"
is "token mode: a token naming the tenant by slug cannot be forwarded (22023)" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant_token('$(tok slug)')" -c "ROLLBACK")" "ERROR 22023"
cq 0 -c "SELECT tenancy.bind_role('bound', 't5')" >/dev/null || bail "bind_role failed"
is "token mode: a bound role's default is admitted on every node (the binding is on the workers)" \
   "$(as 0 bound -c "SELECT count(*), count(DISTINCT tenant_id) FROM orders")" "15|1"
is "direct to a worker: SET LOCAL tenancy.tenant_id: 42501" \
   "$(as 1 app -c "BEGIN" -c "SET LOCAL tenancy.tenant_id = '$t1'" -c "ROLLBACK")" "ERROR 42501"
is "direct to a worker: set_config(): 42501" \
   "$(as 1 app -c "BEGIN" -c "SELECT set_config('tenancy.tenant_id', '$t1', true)" -c "ROLLBACK")" "ERROR 42501"
is "direct to a worker: a forged token: 28000" \
   "$(as 2 app -c "BEGIN" -c "SET LOCAL tenancy.tenant_token = '$(tok t1_forged)'" -c "ROLLBACK")" "ERROR 28000"
is "direct to a worker: a valid token does not admit another tenant: 42501" \
   "$(as 2 app -c "BEGIN" -c "SET LOCAL tenancy.tenant_token = '$(tok t1)'" -c "SET LOCAL tenancy.tenant_id = '$t4'" -c "ROLLBACK")" "ERROR 42501"
is "direct to a worker: a valid token admits its own tenant, for the transaction" \
   "$(as 2 app -c "BEGIN" -c "SET LOCAL tenancy.tenant_token = '$(tok t1)'" -c "SET LOCAL tenancy.tenant_id = '$t1'" -c "SELECT tenancy.current_tenant() = '$t1'" -c "COMMIT" -c "SELECT tenancy.current_tenant() IS NULL")" "t t"

tap_end
