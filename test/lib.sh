# Shared by test/demo/demo.sh and test/bench/bench.sh: a throwaway
# PostgreSQL 15, the dev issuer and vigil gateway, all in one temp dir and
# all stopped by cleanup (installed as an EXIT trap by setup).
# Source it from bash; it expects ROOT (the repository) to be set.

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
VIGIL=${VIGIL:-$ROOT/bin/vigil}
PIDS=()
PG_STARTED=""

# log prints a step on stderr.
log() {
	if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else echo "==> $*" >&2; fi
}

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# as_pg runs a PostgreSQL binary as an unprivileged user when we are root
# (PostgreSQL refuses to run as root).
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$PG_OS_USER" -- "$@"
	else
		"$@"
	fi
}

# port_free PORT succeeds when nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port prints a loopback port nothing listens on.
free_port() {
	local p i
	for i in $(seq 1 100); do
		p=$((20000 + RANDOM % 40000))
		if port_free "$p"; then echo "$p"; return; fi
	done
	die "no free port found"
}

# wait_port PORT NAME LOGFILE PID waits (up to 30 s) until something
# listens on PORT, and gives up early when process PID has exited.
wait_port() {
	local i
	for i in $(seq 1 300); do
		if ! port_free "$1"; then return; fi
		kill -0 "$4" 2>/dev/null || break
		sleep 0.1
	done
	tail -n 30 "$3" >&2 || true
	die "$2 is not listening on 127.0.0.1:$1"
}

cleanup() {
	local rc=$?
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "$PG_STARTED" ]; then
		as_pg "$PGBIN/pg_ctl" stop -D "$WORK/pg/data" -m fast -w >/dev/null 2>&1 || true
	fi
	if [ -n "${KEEP:-}" ]; then
		echo "kept $WORK" >&2
	elif [ -n "${WORK:-}" ]; then
		rm -rf "$WORK"
	fi
	exit "$rc"
}

# setup makes the work dir, checks the tools and installs the trap.
setup() {
	[ -x "$PGBIN/postgres" ] || die "PostgreSQL 15 not found in $PGBIN; run 'make deps'"
	[ -x "$VIGIL" ] || die "$VIGIL not found; run 'make build'"
	if [ "$(id -u)" -eq 0 ]; then
		PG_OS_USER=${PGTEST_OS_USER:-vigiltest}
		id "$PG_OS_USER" >/dev/null 2>&1 || PG_OS_USER=postgres
		id "$PG_OS_USER" >/dev/null 2>&1 ||
			die "running as root needs an unprivileged user for PostgreSQL; run 'make deps'"
	fi
	WORK=$(mktemp -d /tmp/vigil-"$1".XXXXXX)
	chmod 755 "$WORK"
	trap cleanup EXIT
	trap 'exit 130' INT TERM
}

# start_postgres starts a cluster in $WORK/pg on a free port with
# `password` authentication for TCP from 127.0.0.1, creates the login role
# app_rw with the password kept in $WORK/app_rw.password and a database
# demo it owns. Sets PG_PORT.
start_postgres() {
	mkdir -p "$WORK/pg"
	[ "$(id -u)" -ne 0 ] || chown "$PG_OS_USER" "$WORK/pg"
	as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres -E UTF8 --no-locale \
		--auth-local=trust --auth-host=password --no-sync >"$WORK/initdb.log" 2>&1 ||
		{ cat "$WORK/initdb.log" >&2; die "initdb failed"; }
	PG_PORT=$(free_port)
	cat >>"$WORK/pg/data/postgresql.conf" <<-CONF
		listen_addresses = '127.0.0.1'
		port = $PG_PORT
		unix_socket_directories = '$WORK/pg'
		fsync = off
		synchronous_commit = off
	CONF
	cat >"$WORK/pg/data/pg_hba.conf" <<-HBA
		local all all trust
		host  all all 127.0.0.1/32 password
	HBA
	as_pg "$PGBIN/pg_ctl" start -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w -t 60 \
		>/dev/null || { tail -n 30 "$WORK/pg/server.log" >&2; die "PostgreSQL did not start"; }
	PG_STARTED=1

	# The stored credential: only vigil reads this file, never the agent.
	head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$WORK/app_rw.password"
	chmod 600 "$WORK/app_rw.password"
	as_pg "$PGBIN/psql" -q -X -v ON_ERROR_STOP=1 -h "$WORK/pg" -p "$PG_PORT" -U postgres \
		-d postgres -v pw="$(cat "$WORK/app_rw.password")" >/dev/null <<-'SQL'
		CREATE ROLE app_rw LOGIN PASSWORD :'pw';
		CREATE DATABASE demo OWNER app_rw;
		\c demo
		SET ROLE app_rw;
		CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card_number text,
		  note text);
		INSERT INTO customers VALUES
		  (1, 'Acme Corp', 'billing@acme.example', '4111111111111111', 'pays on time'),
		  (2, 'Globex', 'ap@globex.example', '5500005555555559', 'call ap@globex.example first');
		CREATE TABLE invoices (id serial PRIMARY KEY, customer int REFERENCES customers,
		  amount numeric);
		INSERT INTO invoices (customer, amount) VALUES (1, 120.50), (2, 75);
		CREATE TABLE import_scratch (line text);
		INSERT INTO import_scratch VALUES ('leftover');
	SQL
}

# start_issuer starts `vigil dev issuer` on a free port chosen by the
# kernel and reads the authority URL and tenant it prints. Sets AUTHORITY
# and TENANT.
start_issuer() {
	"$VIGIL" dev issuer --listen 127.0.0.1:0 >"$WORK/issuer.out" 2>"$WORK/issuer.log" &
	PIDS+=($!)
	local i
	AUTHORITY="" TENANT=""
	for i in $(seq 1 300); do
		AUTHORITY=$(sed -n 's/^authority: *//p' "$WORK/issuer.out")
		TENANT=$(sed -n 's/^tenant: *//p' "$WORK/issuer.out")
		if [ -n "$AUTHORITY" ] && [ -n "$TENANT" ]; then return; fi
		kill -0 "${PIDS[-1]}" 2>/dev/null || break
		sleep 0.1
	done
	cat "$WORK/issuer.log" >&2
	die "vigil dev issuer did not print its authority and tenant"
}

# write_config writes $WORK/vigil.yaml for the demo-db connection and sets
# GW_PORT.
write_config() {
	GW_PORT=$(free_port)
	HTTP_PORT=$(free_port)
	cat >"$WORK/vigil.yaml" <<-YAML
		# vigil.yaml written by test/lib.sh for make demo / make bench.
		# Annotated reference: docs/vigil.example.yaml.

		identity:
		  provider: entra
		  tenants: [$TENANT]   # the dev issuer's tenant
		  audiences: [api://vigil]
		  authority: $AUTHORITY   # vigil dev issuer instead of Entra

		connections:
		  - name: demo-db
		    type: postgres
		    listen: 127.0.0.1:$GW_PORT        # agents connect here
		    upstream: 127.0.0.1:$PG_PORT      # the real PostgreSQL
		    credential:
		      auth: password
		      user: app_rw                    # vigil logs in as app_rw ...
		      password_file: app_rw.password  # ... with this password; agents never see it
		    access: role:Db.Write             # tokens with this app role get in
		    record: full                      # statements and parameters

		policy:
		  mode: enforce                       # the default bundle built into vigil (policy/bundle)

		audit:
		  dir: ./vigil-data                   # the journal, beside this file

		server:
		  http: 127.0.0.1:$HTTP_PORT          # health, the approvals API and page
	YAML
}

# start_gateway runs vigil gateway on $WORK/vigil.yaml and waits for its
# listener.
start_gateway() {
	"$VIGIL" gateway --config "$WORK/vigil.yaml" ${GATEWAY_FLAGS:-} \
		>"$WORK/gateway.log" 2>&1 &
	GW_PID=$!
	PIDS+=($!)
	wait_port "$GW_PORT" "vigil gateway" "$WORK/gateway.log" "${PIDS[-1]}"
}

# new_guid prints a random GUID.
new_guid() { cat /proc/sys/kernel/random/uuid; }
