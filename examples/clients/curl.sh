#!/usr/bin/env bash
# A kvserve client in curl: the same calls as client.py. Usage: curl.sh [BASE_URL] [TOKEN]
# Exits non-zero if an answer is not what the contract says (CI runs it).
set -euo pipefail
BASE=${1:-http://127.0.0.1:8000}
AUTH=()
[ -n "${2:-}" ] && AUTH=(-H "Authorization: Bearer $2")
KEY=72cf48f7-d604-4423-b012-4e2329f5117b
MISSING=00000000-0000-0000-0000-000000000000

# --retry honours Retry-After on 429 and 503. It rewrites its output file before a
# retry, so bodies go to a real file, not /dev/null.
BODY=$(mktemp)
trap 'rm -f "$BODY"' EXIT
code() { curl -sS --retry 5 -o "$BODY" -w '%{http_code}' "${AUTH[@]}" "$@"; }

# A single key: 200 and the JSON body.
curl -sS --fail --retry 5 "${AUTH[@]}" "$BASE/v1/keys/$KEY" | grep -q '"value"'
# The raw value.
curl -sS --fail --retry 5 -o "$BODY" "${AUTH[@]}" "$BASE/v1/keys/$KEY/value"
# An unknown key: 404 problem+json.
[ "$(code "$BASE/v1/keys/$MISSING")" = 404 ]
# A batch.
curl -sS --fail --retry 5 "${AUTH[@]}" -H 'content-type: application/json' \
  -d "{\"keys\": [\"$KEY\", \"$MISSING\"]}" "$BASE/v1/keys/batch" | grep -q "\"missing\":\[\"$MISSING\"\]"
# Conditional request with the ETag: 304.
ETAG=$(curl -sS --retry 5 -D - -o "$BODY" "${AUTH[@]}" "$BASE/v1/keys/$KEY" | tr -d '\r' | awk -F': ' 'tolower($1) == "etag" { print $2 }')
[ "$(code -H "If-None-Match: $ETAG" "$BASE/v1/keys/$KEY")" = 304 ]
# Rate limited: --retry waits for Retry-After and tries again.
for _ in $(seq 1 20); do curl -sS --fail --retry 5 -o "$BODY" "${AUTH[@]}" "$BASE/v1/keys/$KEY"; done
echo "curl client: all answers as documented"
