#!/usr/bin/env bash
# make demo: one agent session through vigil, then its audit trail.
#
# Starts a throwaway PostgreSQL 15 (password auth; the stored password in a
# file only vigil reads), `vigil dev issuer` (an Entra-shaped token issuer)
# and `vigil gateway`, mints an access token for an app with the app role
# Db.Write, runs a short psql session with the token as the password,
# and prints `vigil audit sessions` and `vigil audit show`. Everything runs
# in a temp dir on loopback and is removed at the end (KEEP=1 keeps it).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../lib.sh
. "$ROOT/test/lib.sh"

setup demo
log "work dir $WORK"

log "starting PostgreSQL 15 (password auth, user app_rw, database demo)"
start_postgres

log "starting vigil dev issuer"
start_issuer
echo "authority $AUTHORITY, tenant $TENANT"

write_config
log "starting vigil gateway --config $WORK/vigil.yaml"
sed -n '/^identity:/,$p' "$WORK/vigil.yaml"
start_gateway

APP_ID=$(new_guid)
log "minting a token: app $APP_ID, role Db.Write, audience api://vigil"
TOKEN=$("$VIGIL" dev token --issuer "$AUTHORITY" --audience api://vigil \
	--role Db.Write --app-id "$APP_ID")
[ -n "$TOKEN" ] || die "vigil dev token printed nothing"

log "agent session: psql through vigil on 127.0.0.1:$GW_PORT with the token as password"
# The agent knows only the gateway's address and its own token.
PGPASSWORD=$TOKEN "$PGBIN/psql" -X -e -v ON_ERROR_STOP=0 \
	"host=127.0.0.1 port=$GW_PORT user=agent dbname=demo sslmode=disable \
application_name=demo-agent" <<'SQL' || true
-- Personal data is masked on its way to the agent (default policy).
SELECT id, name, email, card_number, note FROM customers ORDER BY id;
-- Writes the agent's grant allows.
INSERT INTO invoices (customer, amount) VALUES (1, 99.90) RETURNING id, amount;
UPDATE invoices SET amount = amount * 1.1 WHERE customer = 1;
SELECT customer, count(*) AS invoices, sum(amount) AS total FROM invoices GROUP BY customer;
-- Denied: a DELETE without WHERE never reaches the server.
DELETE FROM invoices;
-- Denied: agents change no schema.
ALTER TABLE invoices ADD COLUMN paid boolean;
-- An ordinary error, recorded with its SQLSTATE.
SELECT amount / 0 FROM invoices;
SELECT count(*) AS invoices_left FROM invoices;
SQL

log "an agent's TRUNCATE waits for a DBA's approval (default policy: group:dba decides)"
PGPASSWORD=$TOKEN "$PGBIN/psql" -X -e \
	"host=127.0.0.1 port=$GW_PORT user=agent dbname=demo sslmode=disable \
application_name=demo-agent" -c "TRUNCATE import_scratch" >"$WORK/held.out" 2>&1 &
HELD=$!
# A person: a user token with the dba group, through the Azure CLI's app.
DBA_TOKEN=$("$VIGIL" dev token --issuer "$AUTHORITY" --audience api://vigil --group dba \
	--name "Dana DBA" --upn dana@example.com --oid "$(new_guid)" \
	--app-id 04b07795-8ddb-461a-bbee-02f9e1bf7b46)
REQUEST=
for _ in $(seq 1 100); do
	REQUEST=$(VIGIL_TOKEN=$DBA_TOKEN "$VIGIL" approvals list --config "$WORK/vigil.yaml" --json |
		grep -o '"id" *: *"[a-z2-7]\{16\}"' | head -n 1 | sed 's/.*: *"\(.*\)"/\1/') || true
	[ -n "$REQUEST" ] && break
	sleep 0.1
done
[ -n "$REQUEST" ] || die "the TRUNCATE was not held for approval"
log "vigil approvals list (as dana@example.com)"
VIGIL_TOKEN=$DBA_TOKEN "$VIGIL" approvals list --config "$WORK/vigil.yaml"
log "vigil approvals approve $REQUEST"
VIGIL_TOKEN=$DBA_TOKEN "$VIGIL" approvals approve --config "$WORK/vigil.yaml" "$REQUEST" \
	--reason "scratch table, safe to empty"
wait "$HELD" || die "the approved TRUNCATE failed: $(cat "$WORK/held.out")"
cat "$WORK/held.out"

log "vigil audit sessions"
"$VIGIL" audit sessions --config "$WORK/vigil.yaml"

SESSIONS=$("$VIGIL" audit sessions --config "$WORK/vigil.yaml" --json |
	grep -o '"session_id" *: *"[^"]*"' | sed 's/.*: *"\(.*\)"/\1/')
[ -n "$SESSIONS" ] || die "no session found in the journal"

for SESSION in $SESSIONS; do
	log "vigil audit show $SESSION"
	"$VIGIL" audit show --config "$WORK/vigil.yaml" "$SESSION"
done

log "stopping the gateway: it writes a final signed checkpoint"
kill -TERM "$GW_PID"
wait "$GW_PID" 2>/dev/null || true

log "vigil audit verify: hash chains, seq gaps, signed checkpoints"
"$VIGIL" audit verify --config "$WORK/vigil.yaml"
