#!/usr/bin/env bash
# End-to-end check of the compose stack (deploy/compose/compose.yaml), after
#   docker compose -f deploy/compose/compose.yaml up -d --build
#
# Drives the token-exchange flow against Keycloak with curl, then shows where the events went:
#   1. client-credentials token for the exchanger orders-gateway           (CLIENT_LOGIN)
#   2. password grant for the demo user alice on the public web-frontend   (LOGIN)
#   3. standard token exchange (V2): orders-gateway trades alice's token for one for orders-api
#   4. the same exchanger asks for reports-api, which it was never granted  -> refused
#   5. impersonation attempt (requested_subject=bob)                        -> refused
#   6. with the legacy-v1 profile: a V1 exchange legacy-gateway -> legacy-api
# and finally counts the token-exchange events in ClickHouse and prints the Grafana URL.
#
# Needs curl and jq. Uses the same variables (and dev-only defaults) as compose.yaml.
# Exit status: 0 when every step behaved as expected and the events reached ClickHouse.
set -euo pipefail

KEYCLOAK_URL="${KEYCLOAK_URL:-http://127.0.0.1:8080}"
EDGE_URL="${EDGE_URL:-http://127.0.0.1:8787}"
WORKER_URL="${WORKER_URL:-http://127.0.0.1:8788}"
CLICKHOUSE_URL="${CLICKHOUSE_URL:-http://127.0.0.1:8123}"
GRAFANA_URL="${GRAFANA_URL:-http://127.0.0.1:3000}"
REALM="${REALM:-kcaudit-demo}"
LEGACY_REALM="${LEGACY_REALM:-kcaudit-legacy}"
KC_ORDERS_GATEWAY_SECRET="${KC_ORDERS_GATEWAY_SECRET:-dev-orders-gateway-change-me}"
KC_LEGACY_GATEWAY_SECRET="${KC_LEGACY_GATEWAY_SECRET:-dev-legacy-gateway-change-me}"
KC_DEMO_USER_PASSWORD="${KC_DEMO_USER_PASSWORD:-dev-user-password-change-me}"
KCAUDIT_CLICKHOUSE_PASSWORD="${KCAUDIT_CLICKHOUSE_PASSWORD:-dev-clickhouse-change-me}"
WAIT_SECS="${WAIT_SECS:-180}"

readonly TE_GRANT="urn:ietf:params:oauth:grant-type:token-exchange"
readonly ACCESS_TOKEN_TYPE="urn:ietf:params:oauth:token-type:access_token"

failures=0

log() { printf '==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
    printf '    FAILED: %s\n' "$*" >&2
    failures=$((failures + 1))
}

for tool in curl jq; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "e2e.sh: $tool is required" >&2
        exit 2
    }
done

# wait_for URL WHAT: poll until URL answers 2xx or WAIT_SECS pass.
wait_for() {
    local url=$1 what=$2 deadline=$((SECONDS + WAIT_SECS))
    until curl -fsS -o /dev/null --max-time 5 "$url"; do
        if ((SECONDS > deadline)); then
            echo "e2e.sh: $what did not come up at $url within ${WAIT_SECS}s (docker compose ps / logs)" >&2
            exit 1
        fi
        sleep 3
    done
    ok "$what is up ($url)"
}

# token_request REALM OUTFILE CURL_ARGS...: POST to the realm's token endpoint; prints the HTTP status.
token_request() {
    local realm=$1 out=$2
    shift 2
    curl -sS -o "$out" -w '%{http_code}' --max-time 15 \
        "$KEYCLOAK_URL/realms/$realm/protocol/openid-connect/token" "$@"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

log "waiting for the stack"
wait_for "$KEYCLOAK_URL/realms/$REALM/.well-known/openid-configuration" "Keycloak realm $REALM (imported by keycloak-config)"
wait_for "$EDGE_URL/readyz" "kcaudit-edge"
wait_for "$WORKER_URL/readyz" "kcaudit-worker"

log "1. client-credentials token for the exchanger orders-gateway"
status=$(token_request "$REALM" "$tmp/cc.json" \
    -d grant_type=client_credentials -d client_id=orders-gateway --data-urlencode "client_secret=$KC_ORDERS_GATEWAY_SECRET")
if [ "$status" = 200 ]; then ok "HTTP 200, service-account token issued"; else fail "HTTP $status: $(cat "$tmp/cc.json")"; fi

log "2. password grant for alice on the public client web-frontend"
status=$(token_request "$REALM" "$tmp/user.json" \
    -d grant_type=password -d client_id=web-frontend -d username=alice --data-urlencode "password=$KC_DEMO_USER_PASSWORD" -d scope=openid)
user_token=$(jq -r '.access_token // empty' "$tmp/user.json")
if [ "$status" = 200 ] && [ -n "$user_token" ]; then
    ok "HTTP 200, audience of alice's token: $(cut -d. -f2 <<<"$user_token" | tr '_-' '/+' | base64 -d 2>/dev/null | jq -c '.aud' 2>/dev/null || echo '?')"
else
    fail "HTTP $status: $(cat "$tmp/user.json")"
    echo "e2e.sh: without a user token the exchanges cannot run" >&2
    exit 1
fi

log "3. standard token exchange (V2): orders-gateway -> audience orders-api"
status=$(token_request "$REALM" "$tmp/te.json" \
    -d "grant_type=$TE_GRANT" -d client_id=orders-gateway --data-urlencode "client_secret=$KC_ORDERS_GATEWAY_SECRET" \
    --data-urlencode "subject_token=$user_token" -d "subject_token_type=$ACCESS_TOKEN_TYPE" \
    -d "requested_token_type=$ACCESS_TOKEN_TYPE" -d audience=orders-api)
if [ "$status" = 200 ] && jq -e '.access_token' "$tmp/te.json" >/dev/null; then
    ok "HTTP 200, issued_token_type $(jq -r '.issued_token_type' "$tmp/te.json")"
else
    fail "HTTP $status: $(cat "$tmp/te.json")"
fi

log "4. exchange to an audience orders-gateway was never granted (reports-api): must be refused"
status=$(token_request "$REALM" "$tmp/te-denied.json" \
    -d "grant_type=$TE_GRANT" -d client_id=orders-gateway --data-urlencode "client_secret=$KC_ORDERS_GATEWAY_SECRET" \
    --data-urlencode "subject_token=$user_token" -d "subject_token_type=$ACCESS_TOKEN_TYPE" -d audience=reports-api)
if [ "$status" -ge 400 ] && [ "$status" -lt 500 ]; then
    ok "refused: HTTP $status $(jq -c '{error, error_description}' "$tmp/te-denied.json" 2>/dev/null || true)"
else
    fail "expected a 4xx refusal, got HTTP $status: $(cat "$tmp/te-denied.json")"
fi

log "5. impersonation attempt (requested_subject=bob): must be refused"
status=$(token_request "$REALM" "$tmp/imp.json" \
    -d "grant_type=$TE_GRANT" -d client_id=orders-gateway --data-urlencode "client_secret=$KC_ORDERS_GATEWAY_SECRET" \
    --data-urlencode "subject_token=$user_token" -d "subject_token_type=$ACCESS_TOKEN_TYPE" -d requested_subject=bob)
if [ "$status" -ge 400 ] && [ "$status" -lt 500 ]; then
    ok "refused: HTTP $status $(jq -c '{error, error_description}' "$tmp/imp.json" 2>/dev/null || true)"
else
    fail "expected a 4xx refusal, got HTTP $status: $(cat "$tmp/imp.json")"
fi

if curl -fsS -o /dev/null --max-time 5 "$KEYCLOAK_URL/realms/$LEGACY_REALM/.well-known/openid-configuration"; then
    log "6. legacy V1 exchange in $LEGACY_REALM: legacy-gateway -> audience legacy-api"
    status=$(token_request "$LEGACY_REALM" "$tmp/legacy-user.json" \
        -d grant_type=password -d client_id=legacy-frontend -d username=carol --data-urlencode "password=$KC_DEMO_USER_PASSWORD")
    legacy_token=$(jq -r '.access_token // empty' "$tmp/legacy-user.json")
    if [ "$status" != 200 ] || [ -z "$legacy_token" ]; then
        fail "password grant for carol: HTTP $status: $(cat "$tmp/legacy-user.json")"
    else
        status=$(token_request "$LEGACY_REALM" "$tmp/legacy-te.json" \
            -d "grant_type=$TE_GRANT" -d client_id=legacy-gateway --data-urlencode "client_secret=$KC_LEGACY_GATEWAY_SECRET" \
            --data-urlencode "subject_token=$legacy_token" -d "subject_token_type=$ACCESS_TOKEN_TYPE" \
            -d "requested_token_type=$ACCESS_TOKEN_TYPE" -d audience=legacy-api)
        if [ "$status" = 200 ]; then ok "HTTP 200 (V1 permission on legacy-api)"; else fail "HTTP $status: $(cat "$tmp/legacy-te.json")"; fi
    fi
else
    log "6. skipped: realm $LEGACY_REALM is not imported (compose profile legacy-v1)"
fi

# ClickHouse over HTTP: the events written by kcaudit-worker (the edge answered Keycloak only after
# Kafka had them; the worker inserts in batches of up to a second).
ch() {
    curl -sS --max-time 10 -u "kcaudit:$KCAUDIT_CLICKHOUSE_PASSWORD" --data-binary "$1" "$CLICKHOUSE_URL/"
}

log "waiting for the token-exchange events in ClickHouse"
expected=3
deadline=$((SECONDS + 90))
count=0
while :; do
    count=$(ch "SELECT count() FROM kcaudit.events WHERE realm IN ('$REALM', '$LEGACY_REALM') AND event_type LIKE 'TOKEN_EXCHANGE%'" 2>/dev/null | tr -d '[:space:]')
    [[ "$count" =~ ^[0-9]+$ ]] || count=0
    if ((count >= expected)) || ((SECONDS > deadline)); then break; fi
    sleep 3
done
if ((count >= expected)); then
    ok "$count token-exchange events in kcaudit.events"
else
    fail "only $count of at least $expected token-exchange events reached ClickHouse (docker compose logs kcaudit-edge kcaudit-worker)"
fi
ch "SELECT realm, event_type, outcome, exchanger, arrayStringConcat(audiences, ' ') AS audiences, requested_subject, error
    FROM kcaudit.events WHERE event_type LIKE 'TOKEN_EXCHANGE%' ORDER BY event_time FORMAT PrettyCompactMonoBlock" || true
ch "SELECT rule, severity, exchanger, reason FROM kcaudit.findings ORDER BY event_time DESC LIMIT 20 FORMAT PrettyCompactMonoBlock" || true

cat <<EOF

Grafana: $GRAFANA_URL  (user admin; password \$GRAFANA_ADMIN_PASSWORD, default "admin")
  Dashboards > kcaudit > "Token exchange overview", "Impersonation", "Failures", "Findings triage"
  (time range: last 15 minutes). ClickHouse: $CLICKHOUSE_URL (user kcaudit). kcaudit metrics:
  $EDGE_URL/metrics (edge), $WORKER_URL/metrics (worker).
EOF

if ((failures > 0)); then
    echo "e2e.sh: $failures step(s) failed" >&2
    exit 1
fi
echo "e2e.sh: all steps passed"
