#!/usr/bin/env bash
# Smoke test of a running nvllm: the original design's requests, in order,
# with curl. Checks status codes and the fields that matter; stops at the
# first unexpected answer with a non-zero exit.
#
#   NVLLM_PASSWORD=... tests/test.sh
#
# BASE_URL        default http://127.0.0.1:5000
# NVLLM_USERNAME  default admin (needs a role that may write nodes)
# NVLLM_PASSWORD  required
set -euo pipefail

BASE_URL="${BASE_URL:-http://127.0.0.1:5000}"
BASE_URL="${BASE_URL%/}"
NVLLM_USERNAME="${NVLLM_USERNAME:-admin}"
: "${NVLLM_PASSWORD:?set NVLLM_PASSWORD to the password of ${NVLLM_USERNAME}}"
NODE_ID="node-001"
TRACE_ID="smoke-$$-$RANDOM"
PYTHON="${PYTHON:-python3}"

command -v curl >/dev/null || { echo "FAIL: curl is required" >&2; exit 2; }
command -v "$PYTHON" >/dev/null || { echo "FAIL: $PYTHON is required" >&2; exit 2; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
BODY="$WORK/body"
HEADERS="$WORK/headers"
STEP=""

fail() {
    echo "FAIL [$STEP]: $*" >&2
    if [[ -s "$BODY" ]]; then
        echo "  body: $(head -c 2000 "$BODY")" >&2
    fi
    exit 1
}

# call METHOD PATH [JSON]: sets $STATUS, leaves the body in $BODY and the
# response headers in $HEADERS.
call() {
    local method="$1" path="$2" data="${3-}"
    local args=(-sS -X "$method" -o "$BODY" -D "$HEADERS" -w '%{http_code}'
                -H "X-Trace-ID: $TRACE_ID" --max-time 10)
    if [[ -n "${TOKEN-}" ]]; then
        args+=(-H "Authorization: Bearer $TOKEN")
    fi
    if [[ -n "$data" ]]; then
        args+=(-H "Content-Type: application/json" --data-binary "$data")
    fi
    STATUS="$(curl "${args[@]}" "$BASE_URL$path")" || fail "curl could not reach $BASE_URL$path"
}

expect_status() {
    [[ "$STATUS" == "$1" ]] || fail "expected HTTP $1, got $STATUS"
}

# check PYTHON_EXPR...: each expression sees the response JSON as `d` and
# must be true. Non-ASCII text is compared as written (the seed's GPU节点1).
check() {
    "$PYTHON" - "$BODY" "$@" <<'PY' || fail "unexpected answer"
import json, sys
with open(sys.argv[1], encoding="utf-8") as handle:
    d = json.load(handle)
for expr in sys.argv[2:]:
    if not eval(expr, {"d": d}):
        print(f"  check failed: {expr}", file=sys.stderr)
        sys.exit(1)
PY
}

# The envelope every /api answer carries, with our trace id echoed.
check_envelope() {
    local code="$1"
    check "d['code'] == $code" "d['trace_id'] == '$TRACE_ID'"
    grep -qi "^X-Trace-ID: $TRACE_ID" "$HEADERS" || fail "X-Trace-ID header not echoed"
}

ok() {
    echo "ok   $STEP"
}

STEP="login as $NVLLM_USERNAME"
LOGIN_BODY="$("$PYTHON" -c 'import json, sys; print(json.dumps({"username": sys.argv[1], "password": sys.argv[2]}))' \
    "$NVLLM_USERNAME" "$NVLLM_PASSWORD")"
call POST /api/user/login "$LOGIN_BODY"
expect_status 200
check_envelope 200
check "d['status'] == 'success'" "d['message'] == 'success'" "isinstance(d['data']['token'], str)" \
      "d['data']['expires_in'] > 0"
TOKEN="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"]["token"])' "$BODY")"
ok

STEP="no token is 401"
SAVED_TOKEN="$TOKEN"
TOKEN=""
call GET /api/node/node/all
expect_status 401
check_envelope 401
check "d['status'] == 'error'" "d['error']"
grep -qi '^WWW-Authenticate: Bearer' "$HEADERS" || fail "no WWW-Authenticate: Bearer"
TOKEN="$SAVED_TOKEN"
ok

STEP="register $NODE_ID"
call POST /api/node/node/register '{
  "node_id": "node-001",
  "node_type": "worker",
  "node_address": "192.168.1.100",
  "node_port": 8000,
  "node_status": "online",
  "node_info": {
    "running": 0,
    "waiting": 0,
    "kv_cache": 0
  },
  "remark": "GPU节点1",
  "timeout": 60
}'
expect_status 200
check_envelope 200
check "d['data']['node_id'] == 'node-001'" "d['data']['node_type'] == 'worker'" \
      "d['data']['node_address'] == '192.168.1.100'" "d['data']['node_port'] == 8000" \
      "d['data']['node_status'] == 'online'" "d['data']['remark'] == 'GPU节点1'" \
      "d['data']['timeout'] == 60" \
      "{k: d['data']['node_info'][k] for k in ('running', 'waiting', 'kv_cache')} == {'running': 0, 'waiting': 0, 'kv_cache': 0}" \
      "len(d['data']['create_time']) == 19 and d['data']['create_time'][10] == 'T'" \
      "len(d['data']['update_time']) == 19"
CREATE_TIME="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"]["create_time"])' "$BODY")"
ok

STEP="update $NODE_ID"
call PUT "/api/node/node/update/$NODE_ID" '{
  "node_type": "worker",
  "node_address": "192.168.1.100",
  "node_port": 8001,
  "node_status": "online",
  "node_info": {
    "running": 2,
    "waiting": 1,
    "kv_cache": 1024
  },
  "remark": "GPU节点1-更新",
  "timeout": 120
}'
expect_status 200
check_envelope 200
check "d['data']['node_port'] == 8001" "d['data']['remark'] == 'GPU节点1-更新'" \
      "d['data']['timeout'] == 120" "d['data']['create_time'] == '$CREATE_TIME'"
ok

STEP="partial update merges node_info"
call PUT "/api/node/node/update/$NODE_ID" '{"node_info": {"waiting": 5}}'
expect_status 200
check_envelope 200
check "d['data']['node_info']['running'] == 2" "d['data']['node_info']['waiting'] == 5" \
      "d['data']['node_info']['kv_cache'] == 1024" "d['data']['node_port'] == 8001"
ok

STEP="get_node $NODE_ID"
call GET "/api/node/node/get_node/$NODE_ID"
expect_status 200
check_envelope 200
check "d['data']['node_id'] == 'node-001'" "d['data']['node_port'] == 8001" \
      "d['data']['remark'] == 'GPU节点1-更新'" "d['data']['node_status'] == 'online'" \
      "d['data']['node_info']['running'] == 2" "d['data']['node_info']['waiting'] == 5" \
      "d['data']['node_info']['kv_cache'] == 1024" "d['data']['create_time'] == '$CREATE_TIME'"
ok

STEP="status $NODE_ID"
call GET "/api/node/node/status/$NODE_ID"
expect_status 200
check_envelope 200
check "d['data']['node_id'] == 'node-001'" "d['data']['node_info']['running'] == 2" \
      "d['data']['node_info']['waiting'] == 5" "d['data']['node_info']['kv_cache'] == 1024" \
      "d['data']['alive'] is True" "d['data']['seconds_since_update'] >= 0"
ok

STEP="all"
call GET /api/node/node/all
expect_status 200
check_envelope 200
check "isinstance(d['data'], list)" "'node-001' in [n['node_id'] for n in d['data']]" \
      "[n['node_id'] for n in d['data']] == sorted(n['node_id'] for n in d['data'])"
ok

STEP="delete $NODE_ID"
call DELETE "/api/node/node/delete/$NODE_ID"
expect_status 200
check_envelope 200
ok

STEP="get_node $NODE_ID after delete is 404"
call GET "/api/node/node/get_node/$NODE_ID"
expect_status 404
check_envelope 404
check "d['status'] == 'error'" "d['message'] == 'error'" "d['error']"
ok

STEP="update $NODE_ID after delete is 404, not a new node"
call PUT "/api/node/node/update/$NODE_ID" '{"node_info": {"running": 1}}'
expect_status 404
check_envelope 404
call GET "/api/node/node/all"
expect_status 200
check "'node-001' not in [n['node_id'] for n in d['data']]"
ok

echo "smoke test passed against $BASE_URL"
