-- wrk script for benches/load/compress.sh: a single-key value or a batch, with or
-- without Accept-Encoding.
--   KEYS_FILE  one key per line, picked at random
--   MODE       "value" (GET /v1/keys/{key}/value, default) or "batch" (POST
--              /v1/keys/batch of BATCH random keys, default 100)
--   ACCEPT     the Accept-Encoding value ("" sends none)
-- At the end, prints one JSON line: requests, bytes read (headers and bodies), errors.

local keys = {}
local mode = os.getenv("MODE") or "value"
local accept = os.getenv("ACCEPT") or ""
local batch = tonumber(os.getenv("BATCH") or "100")

function init(args)
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
  for line in io.lines(os.getenv("KEYS_FILE")) do
    keys[#keys + 1] = line
  end
end

function request()
  local headers = {}
  if accept ~= "" then
    headers["Accept-Encoding"] = accept
  end
  if mode == "batch" then
    local parts = {}
    for i = 1, batch do
      parts[i] = '"' .. keys[math.random(#keys)] .. '"'
    end
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", "/v1/keys/batch", headers, '{"keys":[' .. table.concat(parts, ",") .. ']}')
  end
  return wrk.format("GET", "/v1/keys/" .. keys[math.random(#keys)] .. "/value", headers)
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format('{"requests": %d, "bytes": %d, "rps": %.1f, "errors": %d}\n',
    summary.requests, summary.bytes, summary.requests / (summary.duration / 1e6), errors))
end
