#!/usr/bin/env bash
# Install what tenancy needs to build and test, when it is missing.
# As root: installs with apt-get.  As another user: prints the command and fails.
set -euo pipefail

PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap postgresql-15-plpgsql-check
          libtap-parser-sourcehandler-pgtap-perl pgbouncer
          libssl-dev python3-jwt python3-cryptography
          prometheus-postgres-exporter curl)   # test/prometheus_exporter.sh

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

# squawk (the migration linter test/squawk.sh runs) from npm, into .tools/:
# with the machine's npm when there is one; Debian's nodejs/npm packages only
# where no Node.js exists (they conflict with a Node.js installed otherwise).
SQUAWK_VERSION=2.66.0
tools=$(cd "$(dirname "$0")/.." && pwd)/.tools
squawk_ok() { [ "$("$tools/node_modules/.bin/squawk" --version 2>/dev/null)" = "squawk $SQUAWK_VERSION" ]; }
if ! squawk_ok; then
    if ! command -v npm >/dev/null && ! command -v node >/dev/null; then
        missing+=(nodejs npm)
    fi
fi
install_squawk() {
    squawk_ok && return 0
    echo "tenancy: installing squawk-cli@$SQUAWK_VERSION into $tools" >&2
    npm install --silent --no-audit --no-fund --prefix "$tools" "squawk-cli@$SQUAWK_VERSION" >&2 && squawk_ok \
        || { echo "tenancy: could not install squawk-cli with npm" >&2; exit 1; }
}
[ ${#missing[@]} -eq 0 ] && { install_squawk; exit 0; }

cmd="apt-get update && apt-get install -y ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "tenancy: missing packages: ${missing[*]}" >&2
    echo "tenancy: install them as root with:" >&2
    echo "    $cmd" >&2
    exit 1
fi

echo "tenancy: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq </dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
# The Debian package starts a cluster on 5432 (and, under systemd, the
# exporter's service on 9187); tenancy's tests use their own.
install_squawk
