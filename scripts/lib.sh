# Shared by the scripts: installing dependencies and a throwaway PostgreSQL.

# better-sqlite3 compiles against Node's own headers when no prebuilt binary can be fetched.
export npm_config_nodedir="${npm_config_nodedir:-/usr}"

ensure_node_modules() {
  # A linked node_modules (a second checkout sharing the first one's) belongs to that checkout.
  [ -L node_modules ] && return 0
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "installing dependencies (better-sqlite3 may take a few minutes to compile)"
    npm ci --no-audit --no-fund || return 1
  fi
}

# Starts PostgreSQL in a temporary folder, listening on 127.0.0.1 only, on a free port.
# Sets PG_URL and PG_DIR. Installs Debian's postgresql first when root and missing.
start_throwaway_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing PostgreSQL from Debian"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || return 1
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  [ -n "$bin" ] || return 1
  PG_DIR=$(mktemp -d /tmp/pledger-pg.XXXXXX)
  local port
  port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
  # initdb refuses to run as root: the cluster belongs to the postgres user then.
  local run=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$PG_DIR"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log"; return 1; }
  "${run[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
    -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null || { cat "$PG_DIR/server.log"; return 1; }
  PG_BIN="$bin"
  PG_RUN=("${run[@]}")
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "PostgreSQL running on 127.0.0.1:$port"
}

stop_throwaway_postgres() {
  [ -n "${PG_DIR:-}" ] || return 0
  "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1
  rm -rf "$PG_DIR"
}

# hledger and bean-check: the billing tests check the journal exports with them.
# Installs Debian's packages when missing (needs root).
ensure_ledger_tools() {
  command -v hledger >/dev/null && command -v bean-check >/dev/null && return 0
  command -v apt-get >/dev/null || return 1
  echo "installing hledger and beancount from Debian"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hledger beancount >/dev/null)
}

# Debian's monitoring-plugins (the node tests run check_tcp, check_http... as command
# promises), supervisor (the node benchmark compares its restart latency) and haproxy
# (in front of several masters in the concurrency test). Installs
# what is missing when root; otherwise the tests that need them say so and skip.
ensure_debian_packages() {
  local missing=()
  [ -x /usr/lib/nagios/plugins/check_tcp ] || missing+=(monitoring-plugins-basic)
  command -v supervisord >/dev/null || missing+=(supervisor)
  # The concurrency test puts several masters behind a real load balancer.
  [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  echo "installing ${missing[*]} from Debian"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null)
}
