#!/usr/bin/env bash
# TAP (red team, issue 17): a client that connects to a Citus worker
# directly, under tenancy.context_source = token on every node, with a
# tenant token it once held.  The worker must not admit the token's tenant
# once the token has expired, nor once its key is removed from the worker's
# keys file (README: "a removed key stops working within a second, even for
# a token a backend verified before"), even when the token was set for the
# session before; a forged token and another tenant stay refused.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
source "$(dirname "${BASH_SOURCE[0]}")/lib/citus.bash"
citus_installed || citus_skip_all "test/red_citus_token.sh"

plan 8
tap_tmpdir DIR red_citus_token

python3 - "$DIR" <<'PY' || bail "python3 could not mint the tokens (python3-jwt)"
import base64, os, sys, time
import jwt
d = sys.argv[1]
now = int(time.time())
shared, gone = os.urandom(32), os.urandom(32)
b64 = lambda b: base64.b64encode(b).decode()
for name, lines in (("keys", ["shared HS256 " + b64(shared), "gone HS256 " + b64(gone)]),
                    ("keys_after", ["shared HS256 " + b64(shared)])):
    with open(os.path.join(d, name), "w") as f:
        f.write("\n".join(lines) + "\n")
def mint(name, key, kid, tenant, exp):
    t = jwt.encode({"tenant_id": tenant, "sub": "u-" + name, "exp": exp, "iat": now},
                   key, algorithm="HS256", headers={"kid": kid})
    with open(os.path.join(d, name + ".jwt"), "w") as f:
        f.write(t)
mint("t1", shared, "shared", "00000000-0000-0000-0000-000000000001", now + 3600)
mint("t1_short", shared, "shared", "00000000-0000-0000-0000-000000000001", now + 25)
mint("t1_gone", gone, "gone", "00000000-0000-0000-0000-000000000001", now + 3600)
PY
[ "$(id -u)" -eq 0 ] && chown -R "$TAP_USER" "$DIR"
tok() { cat "$DIR/$1.jwt"; }

citus_cluster_start "$DIR" "tenancy.token_keys_file = 'token_keys'" "tenancy.token_leeway = 0"
for n in 0 1 2; do install -m 600 -o "$TAP_USER" "$DIR/keys" "${CITUS_DATA[n]}/token_keys"; done
t1=00000000-0000-0000-0000-000000000001

# as ROLE on node N: psql output, or "ERROR <SQLSTATE>" when it fails
as() {
    local n=$1 role=$2; shift 2
    psql -X -q -At -v ON_ERROR_STOP=1 -v VERBOSITY=sqlstate -h 127.0.0.1 -p "${CITUS_PORT[n]}" \
        -U "$role" -d "$CITUS_DB" "$@" 2>&1 | sed -E 's/^(psql:[^ ]* )?ERROR: +/ERROR /' | tr '\n' ' ' | sed 's/ $//'
}

cq 0 >/dev/null <<SQL || bail "setup failed"
SET client_min_messages = warning;
CREATE EXTENSION tenancy;
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA tenancy TO app;
SELECT tenancy.create_tenant('t1', 'Tenant 1', '$t1');
SQL
citus_all "ALTER SYSTEM SET tenancy.context_source = 'token'" || bail "ALTER SYSTEM failed"
citus_all "SELECT pg_reload_conf()" >/dev/null
wait_for 10 bash -c "for p in ${CITUS_PORT[*]}; do psql -X -At -h 127.0.0.1 -p \$p -U app -d $CITUS_DB -c 'SHOW tenancy.context_source' | grep -qx token || exit 1; done"
ok $? "tenancy.context_source = token on every node"

is "direct to a worker: a valid token admits its tenant (the route works)" \
   "$(as 1 app -c "SET tenancy.tenant_token = '$(tok t1)'" -c "SET tenancy.tenant_id = '$t1'" -c "SELECT tenancy.current_tenant() = '$t1'")" "t"
is "direct to a worker: a bare key is refused (42501)" \
   "$(as 1 app -c "SET tenancy.tenant_id = '$t1'")" "ERROR 42501"

# A token set for the session, then its key removed from the worker's file.
is "direct to a worker: a key removed from the keys file no longer admits a token set before" \
   "$(as 1 app -c "SET tenancy.tenant_token = '$(tok t1_gone)'" \
        -c "\\! install -m 600 -o $TAP_USER $DIR/keys_after ${CITUS_DATA[1]}/token_keys" \
        -c "SELECT pg_sleep(2)" -c "SET tenancy.tenant_id = '$t1'" \
        -c "SELECT tenancy.current_tenant() = '$t1'")" " ERROR 42501"
is "  ... while the file without it is in force (a fresh session refuses the token: 28000)" \
   "$(as 1 app -c "SET tenancy.tenant_token = '$(tok t1_gone)'")" "ERROR 28000"

# A token set for the session, used again after its exp.
now=$(date +%s)
exp=$(python3 -c "import jwt,sys; print(jwt.decode(open('$DIR/t1_short.jwt').read(), options={'verify_signature': False})['exp'])")
wait=$((exp - now + 2)); [ "$wait" -lt 1 ] && wait=1
is "direct to a worker: a token set before its exp admits nothing after it" \
   "$(as 1 app -c "SET tenancy.tenant_token = '$(tok t1_short)'" -c "SELECT pg_sleep($wait)" \
        -c "SET tenancy.tenant_id = '$t1'" -c "SELECT tenancy.current_tenant() = '$t1'")" " ERROR 42501"

# A suspended tenant.  The coordinator refuses its token (set_tenant_token()
# reads the registry); a worker has no registry to read.
cq 0 -c "SELECT tenancy.suspend_tenant('t1')" >/dev/null || bail "suspend_tenant failed"
is "a suspended tenant's token is refused on the coordinator (42501)" \
   "$(as 0 app -c "BEGIN" -c "SELECT tenancy.set_tenant_token('$(tok t1)')" -c "ROLLBACK")" "ERROR 42501"
got=$(as 1 app -c "BEGIN" -c "SET LOCAL tenancy.tenant_token = '$(tok t1)'" -c "SET LOCAL tenancy.tenant_id = '$t1'" \
        -c "SELECT tenancy.current_tenant() = '$t1'" -c "ROLLBACK")
# Known, not fixed (red team report): the worker admits it.  RED_KNOWN=1
# runs the assertion.
if [ "${RED_KNOWN:-0}" = 1 ]; then
    is "direct to a worker: a suspended tenant's valid token is refused" "$got" "ERROR 42501"
else
    skip "known finding, not fixed: direct to a worker, a suspended tenant's valid token is admitted (got '$got'; RED_KNOWN=1 asserts)"
fi

tap_end
