#!/usr/bin/env bash
# TAP: signed tenant tokens (issue 16), on a server of its own whose keys
# file (tenancy.token_keys_file, in the data directory, mode 0600) holds an
# HS256 secret, an Ed25519, an RSA and a P-256 public key.  The tokens are
# minted by a real JWT library (python3-jwt, python3-cryptography), never by
# the extension; the algorithm-confusion token (HS256 with the public key as
# the secret), which the library refuses to make, and alg "none" are built
# by hand.  Every refusal is made by an application role inside a
# transaction whose tenant is globex, and must leave it globex.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
tap_tmpdir DIR token
port=$(tap_free_port)
q() { psql_at "$DIR" "$port" -d postgres "$@"; }

plan 51

python3 - "$DIR" <<'PY' || bail "python3 could not mint the tokens (python3-jwt, python3-cryptography)"
import base64, hashlib, hmac, json, os, sys, time
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

d = sys.argv[1]
now = int(time.time())
b64 = lambda b: base64.b64encode(b).decode()
b64url = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
der = lambda k: b64(k.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
hs1, hs2, hs_other = os.urandom(32), os.urandom(48), os.urandom(32)
ed, ed_other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
es = ec.generate_private_key(ec.SECP256R1())

def keys(name, lines):
    with open(os.path.join(d, name), "w") as f:
        f.write("# kid alg key\n\n" + "\n".join(lines) + "\n")
keys("keys_v1", ["hs1 HS256 " + b64(hs1), "ed1 EdDSA " + der(ed), "rs1 RS256 " + der(rs), "es1 ES256 " + der(es)])
keys("keys_v2", ["hs1 HS256 " + b64(hs1), "hs2 HS256 " + b64(hs2), "ed1 EdDSA " + der(ed)])
keys("keys_v3", ["hs2 HS256 " + b64(hs2), "ed1 EdDSA " + der(ed)])
keys("keys_bad", ["hs1 HS256 c2hvcnQ="])
with open(os.path.join(d, "hs1.secret"), "w") as f:
    f.write(b64(hs1))

def claims(**kw):
    c = {"tenant_id": "acme", "sub": "alice", "exp": now + 3600, "iat": now}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}
tokens = {}
def mint(name, key, alg, kid, **kw):
    tokens[name] = jwt.encode(claims(**kw), key, algorithm=alg, headers={"kid": kid} if kid else None)

mint("hs", hs1, "HS256", "hs1")
mint("hs_nokid", hs1, "HS256", None, tenant_id="bbbbbbbb-0000-0000-0000-000000000002", sub="bob")
mint("ed", ed, "EdDSA", "ed1")
mint("rs", rs, "RS256", "rs1")
mint("es", es, "ES256", "es1")
mint("hs_wrongkey", hs_other, "HS256", "hs1")
mint("ed_wrongkey", ed_other, "EdDSA", "ed1")
mint("kid_unknown", hs1, "HS256", "nosuch")
mint("expired", hs1, "HS256", "hs1", exp=now - 3600, iat=now - 7200)
mint("expired_in_leeway", hs1, "HS256", "hs1", exp=now - 5)
mint("nbf_future", hs1, "HS256", "hs1", nbf=now + 3600)
mint("iat_future", hs1, "HS256", "hs1", iat=now + 3600)
mint("no_exp", hs1, "HS256", "hs1", exp=None)
mint("no_claim", hs1, "HS256", "hs1", tenant_id=None)
mint("claim_bool", hs1, "HS256", "hs1", tenant_id=True)
mint("claim_array", hs1, "HS256", "hs1", tenant_id=["acme"])
mint("unknown", hs1, "HS256", "hs1", tenant_id="nosuch")
mint("suspended", hs1, "HS256", "hs1", tenant_id="initech")
mint("org", hs1, "HS256", "hs1", tenant_id=None, org_id="acme")
mint("bob", hs1, "HS256", "hs1", sub="bob")
mint("no_sub", hs1, "HS256", "hs1", sub=None)
mint("iss_aud", hs1, "HS256", "hs1", iss="https://login.example", aud=["other", "tenancy"])
mint("iss_wrong", hs1, "HS256", "hs1", iss="https://evil.example", aud="tenancy")
mint("hs2", hs2, "HS256", "hs2")
mint("hs2_initech_key", hs2, "HS256", "hs2", tenant_id="cccccccc-0000-0000-0000-000000000003")
# Forged: globex's payload under acme's signature.
h, p, s = tokens["hs"].split(".")
tokens["forged"] = h + "." + b64url(json.dumps(claims(tenant_id="globex")).encode()) + "." + s
# alg none, by hand.
tokens["none"] = b64url(b'{"alg":"none","typ":"JWT"}') + "." + p + "."
# Algorithm confusion, by hand: HS256 keyed with the RSA and Ed25519 public
# keys (PEM, as a naive verifier would use them).
for name, key, kid in (("confusion_rs", rs, "rs1"), ("confusion_ed", ed, "ed1"), ("confusion_nokid", rs, None)):
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hdr = {"alg": "HS256", "typ": "JWT"}
    if kid:
        hdr["kid"] = kid
    signing = b64url(json.dumps(hdr).encode()) + "." + p
    tokens[name] = signing + "." + b64url(hmac.new(pem, signing.encode(), hashlib.sha256).digest())
tokens["truncated"] = tokens["hs"][:-6]
tokens["short_sig"] = h + "." + p + "." + b64url(base64.urlsafe_b64decode(s + "=")[:-3])
tokens["two_parts"] = h + "." + p
tokens["not_b64url"] = h + "." + p.replace(p[3], "*", 1) + "." + s
tokens["oversized"] = jwt.encode(claims(pad="x" * 9000), hs1, algorithm="HS256", headers={"kid": "hs1"})
for name, t in tokens.items():
    with open(os.path.join(d, name + ".jwt"), "w") as f:
        f.write(t)
PY
tok() { cat "$DIR/$1.jwt"; }

# The keys file is in the data directory, readable by the server only.
own_server_init "$DIR/data" "$port" "$DIR" "shared_preload_libraries = 'tenancy'" \
    "tenancy.worker_enabled = off" "tenancy.token_keys_file = 'token_keys'"
install -m 600 "$DIR/keys_v1" "$DIR/data/token_keys"
own_server_run "$DIR/data"

q >/dev/null <<'SQL'
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('globex', 'Globex', 'bbbbbbbb-0000-0000-0000-000000000002');
SELECT tenancy.create_tenant('initech', 'Initech', 'cccccccc-0000-0000-0000-000000000003');
SELECT tenancy.suspend_tenant('initech');
SELECT tenancy.add_member('acme', 'alice');
CREATE ROLE tok_app;
CREATE ROLE tok_monitor IN ROLE pg_monitor;
-- The outcome of one call: "ok <tenant> <user key>", or "<SQLSTATE>
-- <tenant after the refusal> <message>".
CREATE FUNCTION public.try_token(t text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenancy.set_tenant_token(t);
    RETURN 'ok ' || tenancy.current_tenant_text() || ' ' || coalesce(tenancy.current_user_key(), '-');
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ' ' || coalesce(tenancy.current_tenant_text(), '-') || ' ' || SQLERRM;
END
$$;
-- The outcome of setting the tenant another way: "set <tenant>" or the SQLSTATE.
CREATE FUNCTION public.try_other(how text, k text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF how = 'set_config' THEN
        PERFORM pg_catalog.set_config('tenancy.tenant_id', k, true);
    ELSE
        PERFORM tenancy.set_tenant(k);
    END IF;
    RETURN 'set ' || coalesce(tenancy.current_tenant_text(), '-');
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;
SQL
ACME=aaaaaaaa-0000-0000-0000-000000000001
GLOBEX=bbbbbbbb-0000-0000-0000-000000000002
# try TOKEN-NAME [SETTING...]: as tok_app, in a transaction whose tenant is
# globex (settings made first, as the superuser).
try() {
    local t=$1 s sets=''
    shift
    for s in "$@"; do sets+="SET $s;"$'\n'; done
    q -v t="$(tok "$t")" <<SQL
$sets
SET ROLE tok_app;
BEGIN;
SELECT tenancy.set_tenant('globex') \\g /dev/null
SELECT public.try_token(:'t');
COMMIT;
SQL
}

# Valid tokens, one per algorithm, and the user key.
is "HS256 token: tenant acme, user alice" "$(try hs)" "ok $ACME alice"
is "EdDSA (Ed25519) token" "$(try ed)" "ok $ACME alice"
is "RS256 token" "$(try rs)" "ok $ACME alice"
is "ES256 token" "$(try es)" "ok $ACME alice"
is "a token without kid is tried against the keys of its algorithm; a tenant key as claim" \
    "$(try hs_nokid)" "ok $GLOBEX bob"
is "the set_tenant_token() result is the key; the tenant lasts the transaction" \
    "$(q -v t="$(tok ed)" <<'SQL'
SET ROLE tok_app;
BEGIN;
SELECT tenancy.set_tenant_token(:'t');
COMMIT;
SELECT coalesce(tenancy.current_tenant_text(), 'none') || ' ' || coalesce(tenancy.current_user_key(), 'none');
SQL
)" "$ACME
none none"

# Signatures and keys.
like "forged payload: 28000, tenant unchanged" "$(try forged)" "^28000 $GLOBEX tenant token refused"
like "HS256 with the wrong secret: 28000" "$(try hs_wrongkey)" "^28000 $GLOBEX "
like "EdDSA signed by another key: 28000" "$(try ed_wrongkey)" "^28000 $GLOBEX "
like "alg none: 28000" "$(try none)" "^28000 $GLOBEX "
like "HS256 keyed with the RSA public key (kid rs1): 28000" "$(try confusion_rs)" "^28000 $GLOBEX "
like "HS256 keyed with the Ed25519 public key (kid ed1): 28000" "$(try confusion_ed)" "^28000 $GLOBEX "
like "HS256 keyed with a public key, no kid: 28000 (only HS256 keys are tried)" "$(try confusion_nokid)" "^28000 $GLOBEX "
like "a kid that matches no key: 28000" "$(try kid_unknown)" "^28000 $GLOBEX "

# Malformed tokens.
like "truncated by 6 characters (an impossible base64url length): 22P02" "$(try truncated)" "^22P02 $GLOBEX malformed tenant token"
like "a signature 3 bytes short: 28000" "$(try short_sig)" "^28000 $GLOBEX tenant token refused"
like "two parts only: 22P02" "$(try two_parts)" "^22P02 $GLOBEX malformed tenant token"
like "a character outside base64url: 22P02" "$(try not_b64url)" "^22P02 $GLOBEX "
like "over 8 kB: 22P02" "$(try oversized)" "^22P02 $GLOBEX "

# Times.
like "expired: 28000" "$(try expired)" "^28000 $GLOBEX tenant token has expired"
is "expired 5 s ago, within the 30 s leeway: accepted" "$(try expired_in_leeway)" "ok $ACME alice"
like "and refused with no leeway" "$(try expired_in_leeway 'tenancy.token_leeway = 0')" "^28000 $GLOBEX tenant token has expired"
like "nbf in the future: 28000" "$(try nbf_future)" "^28000 $GLOBEX tenant token is not valid yet"
like "iat in the future: 28000" "$(try iat_future)" "^28000 $GLOBEX tenant token is not valid yet"
like "no exp: 28000" "$(try no_exp)" "^28000 $GLOBEX tenant token refused"
is "no exp, with tenancy.token_require_exp off: accepted" "$(try no_exp 'tenancy.token_require_exp = off')" "ok $ACME alice"

# The tenant claim.
like "no tenant claim: 22023" "$(try no_claim)" "^22023 $GLOBEX tenant token has no claim \"tenant_id\""
like "a boolean tenant claim: 22023" "$(try claim_bool)" "^22023 $GLOBEX "
like "an array tenant claim: 22023" "$(try claim_array)" "^22023 $GLOBEX "
like "an unknown tenant: 42704" "$(try unknown)" "^42704 $GLOBEX "
like "a suspended tenant: 42501" "$(try suspended)" "^42501 $GLOBEX tenant \"initech\" is suspended"
is "tenancy.token_tenant_claim = org_id" "$(try org 'tenancy.token_tenant_claim = org_id')" "ok $ACME alice"

# Membership, issuer, audience.
is "membership required: alice is a member of acme" "$(try hs 'tenancy.token_require_membership = on')" "ok $ACME alice"
like "membership required: bob is not: 42501" "$(try bob 'tenancy.token_require_membership = on')" \
    "^42501 $GLOBEX user \"bob\" is not a member"
like "membership required, no sub: 42501" "$(try no_sub 'tenancy.token_require_membership = on')" "^42501 $GLOBEX "
is "issuer and audience (in an array) match" \
    "$(try iss_aud "tenancy.token_issuer = 'https://login.example'" "tenancy.token_audience = 'tenancy'")" "ok $ACME alice"
like "wrong issuer: 28000" "$(try iss_wrong "tenancy.token_issuer = 'https://login.example'")" "^28000 $GLOBEX "
like "no aud while one is required: 28000" "$(try hs "tenancy.token_audience = 'tenancy'")" "^28000 $GLOBEX "
like "an application role cannot relax the checks (token_leeway is superuser-only)" \
    "$(q -c "SET ROLE tok_app" -c "SET tenancy.token_leeway = 3600" 2>&1)" "permission denied to set parameter"

# Keys nobody else can read: a pg_monitor member sees the path, never a key.
secret=$(cat "$DIR/hs1.secret")
mon=$(q -c "SET ROLE tok_monitor" -c "SHOW ALL" -c "SELECT string_agg(setting, ' ') FROM pg_settings" \
        -c "SELECT current_setting('tenancy.token_keys_file')" \
        -c "SELECT count(*) FROM pg_db_role_setting" 2>&1)
ok "$(case "$mon" in *"$secret"*) echo 1;; *token_keys*) echo 0;; *) echo 1;; esac)" \
    "pg_monitor: SHOW ALL, pg_settings, current_setting() show the keys file's path, no key"
like "pg_monitor: pg_read_file() of the keys file is refused" \
    "$(q -c "SET ROLE tok_monitor" -c "SELECT pg_read_file('token_keys')" 2>&1)" "permission denied"
like "pg_monitor: pg_file_settings is refused" \
    "$(q -c "SET ROLE tok_monitor" -c "SELECT * FROM pg_file_settings" 2>&1)" "permission denied"

# Rotation: hs1 and hs2 both valid, then hs1 removed.  One session keeps
# its verified hs1 token cached across the reloads: the cache is dropped
# with the keys.
rot=$(q -v hs="$(tok hs)" -v hs2="$(tok hs2)" <<SQL
SET ROLE tok_app;
SELECT public.try_token(:'hs');
\! install -m 600 '$DIR/keys_v2' '$DIR/data/token_keys.new' && mv '$DIR/data/token_keys.new' '$DIR/data/token_keys'
SELECT pg_sleep(1.1) \\g /dev/null
SELECT public.try_token(:'hs');
SELECT public.try_token(:'hs2');
\! install -m 600 '$DIR/keys_v3' '$DIR/data/token_keys.new' && mv '$DIR/data/token_keys.new' '$DIR/data/token_keys'
SELECT pg_sleep(1.1) \\g /dev/null
SELECT public.try_token(:'hs');
SELECT public.try_token(:'hs2');
SQL
)
expect "rotation: hs1; hs1 and hs2; then hs1 refused (even cached), hs2 valid" \
    "ok $ACME alice|ok $ACME alice|ok $ACME alice|28000 - tenant token refused|ok $ACME alice" "$(printf '%s' "$rot" | tr '\n' '|')"

# A keys file others may read is refused; a malformed one names its line.
chmod 640 "$DIR/data/token_keys"
like "a keys file with group access: F0000" "$(try hs2)" "^F0000 $GLOBEX "
install -m 600 "$DIR/keys_bad" "$DIR/data/token_keys"
like "an HS256 secret shorter than 32 bytes: F0000 at line 3" "$(try hs2)" "^F0000 $GLOBEX invalid tenant token keys file \"token_keys\" at line 3"
install -m 600 "$DIR/keys_v3" "$DIR/data/token_keys"
is "a good file again: accepted" "$(try hs2)" "ok $ACME alice"

# The user key follows the tenant: switching the tenant otherwise hides it.
is "set_tenant() after a token: current_user_key() is NULL" \
    "$(q -v t="$(tok hs2)" <<'SQL'
SET ROLE tok_app;
BEGIN;
SELECT tenancy.set_tenant_token(:'t') \g /dev/null
SELECT tenancy.set_tenant('globex') \g /dev/null
SELECT coalesce(tenancy.current_user_key(), 'none');
SQL
)" "none"
# Token-only mode (tenancy.context_source = token): for a role that is not a
# superuser the verified token sets the tenant, and nothing else does.
tm=$(q -v t="$(tok hs2)" -v g="$GLOBEX" <<'SQL'
SET tenancy.context_source = 'token';
SET ROLE tok_app;
BEGIN;
SELECT public.try_token(:'t');
SELECT public.try_other('set_config', :'g');
SELECT public.try_other('set_tenant', 'globex');
SELECT tenancy.current_tenant_text();
COMMIT;
SQL
)
expect "token mode: set_tenant_token() sets the tenant" "ok $ACME alice" "$(printf '%s\n' "$tm" | sed -n 1p)"
expect "token mode: set_config() and set_tenant() refused (42501), the token's tenant stays" \
    "42501|42501|$ACME" "$(printf '%s\n' "$tm" | sed -n '2,4p' | paste -sd'|')"
# Issue 17: tenancy.tenant_token (what a Citus coordinator forwards) is
# verified when set, but on a node that is not a Citus worker it admits no
# tenant: set_tenant_token() alone, with its registry and membership
# checks, sets the tenant here (the token's tenant is suspended initech).
like "token mode, one node: a verified tenancy.tenant_token does not admit its key (42501)" \
    "$(q -v t="$(tok hs2_initech_key)" -v a="cccccccc-0000-0000-0000-000000000003" -v VERBOSITY=sqlstate <<'SQL' 2>&1
SET tenancy.context_source = 'token';
SET ROLE tok_app;
BEGIN;
SET LOCAL tenancy.tenant_token = :'t';
SET LOCAL tenancy.tenant_id = :'a';
ROLLBACK;
SQL
)" "^ERROR:  42501$"
like "no key material in the server log" "$(grep -c -F "$secret" "$DIR/data.log")" "^0$"

tap_end
