#!/usr/bin/env bash
# A kvserve client in curl: the same calls as client.py. Usage: curl.sh [BASE_URL] [TOKEN]
# Exits non-zero if an answer is not what the contract says (CI runs it).
set -euo pipefail
BASE=${1:-http://127.0.0.1:8000}
AUTH=()
[ -n "${2:-}" ] && AUTH=(-H "Authorization: Bearer $2")
KEY=72cf48f7-d604-4423-b012-4e2329f5117b
MISSING=00000000-0000-0000-0000-000000000000

# --retry honours Retry-After on 429 and 503 (curl retries them with or without
# --fail). It rewrites its output file before a retry, so bodies go to a real file,
# not /dev/null. No --fail: it would print "curl: (22) ... 429" for every retried
# attempt, a red line in a passing run. Each answer's final status is checked
# instead, and an unexpected one is said loudly.
BODY=$(mktemp)
trap 'rm -f "$BODY"' EXIT
# expect STATUS CURL_ARGS...: one request (retried on 429/503), its final status checked.
expect() {
  local want=$1 got
  shift
  got=$(curl -sS --retry 5 -o "$BODY" -w '%{http_code}' "${AUTH[@]}" "$@")
  if [ "$got" != "$want" ]; then
    echo "curl client: expected $want, got $got for: $*" >&2
    cat "$BODY" >&2
    exit 1
  fi
}

# A single key: 200 and the JSON body.
expect 200 "$BASE/v1/keys/$KEY"
grep -q '"value"' "$BODY"
# The raw value.
expect 200 "$BASE/v1/keys/$KEY/value"
# An unknown key: 404 problem+json.
expect 404 "$BASE/v1/keys/$MISSING"
# A batch.
expect 200 -H 'content-type: application/json' \
  -d "{\"keys\": [\"$KEY\", \"$MISSING\"]}" "$BASE/v1/keys/batch"
grep -q "\"missing\":\[\"$MISSING\"\]" "$BODY"
# Conditional request with the ETag: 304.
ETAG=$(curl -sS --retry 5 -D - -o "$BODY" "${AUTH[@]}" "$BASE/v1/keys/$KEY" | tr -d '\r' | awk -F': ' 'tolower($1) == "etag" { print $2 }')
expect 304 -H "If-None-Match: $ETAG" "$BASE/v1/keys/$KEY"
# Rate limited: --retry waits for Retry-After and tries again.
for _ in $(seq 1 20); do expect 200 "$BASE/v1/keys/$KEY"; done
echo "curl client: all answers as documented"
