#!/usr/bin/env bash
# Make sure the services the test suite talks to are there. PostgreSQL: the project's machines run
# one on 127.0.0.1:5432; on a machine without one, install Debian's and start it. The suite never
# skips the PostgreSQL half: if this fails, the tests fail loudly.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root (or sudo) to run: $*" >&2; exit 1; fi; }

# Debian's openssl: the S/MIME interoperability tests run the real command line tool.
if ! command -v openssl >/dev/null; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl
fi

# Debian's swaks: the submission tests send with it, as an operator would by hand.
if ! command -v swaks >/dev/null; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q swaks
fi

# Debian's IMAP clients: the IMAP server is tested with mbsync (isync) and offlineimap, as users
# synchronise with it.
if ! command -v mbsync >/dev/null || ! command -v offlineimap >/dev/null; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q isync offlineimap3
fi

# Debian's OpenLDAP server: the directory publication tests start their own slapd on 127.0.0.1.
# The package's own instance is not wanted (it would listen on every interface): stop it.
if [ ! -x /usr/sbin/slapd ]; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slapd ldap-utils
  as_root systemctl disable --now slapd >/dev/null 2>&1 || as_root service slapd stop >/dev/null 2>&1 || true
fi

if [ -n "${COLOMBE_TEST_POSTGRES:-}" ]; then
  exit 0  # the operator of this run chose a server
fi
if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
  exit 0
fi
echo "no PostgreSQL on 127.0.0.1:5432: installing and starting Debian's" >&2
if ! command -v pg_ctlcluster >/dev/null; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 1
done
pg_isready -h 127.0.0.1 -p 5432
# The suite connects as postgres/postgres over TCP (Debian asks for a password there).
as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
