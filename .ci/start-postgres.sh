#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the integration tests and print its URL.
#
#   ATTNOPS_TEST_POSTGRES_URL=$(.ci/start-postgres.sh)   # start (or reuse) it
#   .ci/start-postgres.sh stop                           # stop it
#
# The cluster is private to the tests: its own data folder (ATTNOPS_PG_DATA, default
# $TMPDIR/attnops-postgres), loopback only, a free port from 55432 up, trust auth, no fsync.
# It leaves any system cluster (5432) alone. Installs the `postgresql` Debian package when
# no server binaries are found and this is root. Progress goes to stderr; stdout is the URL.
set -euo pipefail

DATA=${ATTNOPS_PG_DATA:-${TMPDIR:-/tmp}/attnops-postgres}
ROLE=attnops

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(bindir)" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "no PostgreSQL server binaries; install the postgresql package" >&2
        exit 1
    fi
    echo "installing postgresql (apt-get)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
BIN=$(bindir)

# The server refuses to run as root: run it as the package's `postgres` user then.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
running() { as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

if [ "${1:-}" = stop ]; then
    if running; then as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast >&2; fi
    exit 0
fi

if ! running; then
    if [ ! -s "$DATA/PG_VERSION" ]; then
        mkdir -p "$DATA"
        if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DATA"; fi
        chmod 700 "$DATA"
        as_owner "$BIN/initdb" -D "$DATA" -U "$ROLE" --auth=trust --encoding=UTF8 \
            --no-sync >"$DATA.initdb.log" 2>&1 || { cat "$DATA.initdb.log" >&2; exit 1; }
    fi
    port=${ATTNOPS_PG_PORT:-55432}
    while (: >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    # Durability is worthless for a test cluster; speed is not.
    as_owner "$BIN/pg_ctl" start -D "$DATA" -w -t 60 -l "$DATA/server.log" -o \
        "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$DATA \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
         -c max_connections=200" >&2 || { tail -n 20 "$DATA/server.log" >&2; exit 1; }
fi

# Line 4 of postmaster.pid is the port the running server listens on.
port=$(sed -n 4p "$DATA/postmaster.pid")
if ! as_owner "$BIN/psql" -h 127.0.0.1 -p "$port" -U "$ROLE" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$ROLE'" | grep -q 1; then
    as_owner "$BIN/createdb" -h 127.0.0.1 -p "$port" -U "$ROLE" "$ROLE" >&2
fi
echo "postgresql://$ROLE@127.0.0.1:$port/$ROLE"
