-- wrk script: GET a key picked at random from a sample of existing keys.
--   KEYS_FILE   file with one key per line (the sample)
--   KEYS_DIST   "uniform" (default) or "zipf" (s = 1.0 over the sample's ranks)
--   KEYS_PATH   path template, "%s" is the key (default "/v1/keys/%s")
--   KEYS_RATE   if set, aim at this many requests per second in total (connections
--               pace themselves with wrk's delay(); used for "p99 at half the peak")
--   KEYS_BATCH  if set (N > 0), POST {"keys": [N keys]} to KEYS_PATH (used as is) instead
--               of GETs: the bodies are built once, in init(), a pool of about 200,000
--               keys per wrk thread (at least 64 bodies), so the client spends its CPU
--               sending rather than formatting JSON
--   KEYS_BATCH_JOIN  batch mode only: if set, GET string.format(KEYS_PATH, the N keys joined
--               by this separator) instead of POSTing JSON (webdis MGET: KEYS_PATH=/MGET/%s,
--               KEYS_BATCH_JOIN=/; used by peers.sh)
-- At the end, prints one JSON line with throughput and latency percentiles.

local keys = {}
local cdf = {}
local path = os.getenv("KEYS_PATH") or "/v1/keys/%s"
local zipf = os.getenv("KEYS_DIST") == "zipf"
local pause_ms = nil -- set by init() when KEYS_RATE asks for a fixed rate
local batch = tonumber(os.getenv("KEYS_BATCH") or "") or 0
local bodies = {} -- batch mode: the request bodies (or paths), built by init()
local join = os.getenv("KEYS_BATCH_JOIN")

local function load()
  for line in io.lines(os.getenv("KEYS_FILE")) do
    keys[#keys + 1] = line
  end
  if zipf then
    local total = 0
    for rank = 1, #keys do
      total = total + 1 / rank
      cdf[rank] = total
    end
    for rank = 1, #keys do
      cdf[rank] = cdf[rank] / total
    end
  end
end

local function zipf_rank()
  local u, lo, hi = math.random(), 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

local function pick()
  return keys[zipf and zipf_rank() or math.random(#keys)]
end

local function build_bodies()
  for b = 1, math.max(64, math.floor(200000 / batch)) do
    local picked = {}
    for k = 1, batch do
      picked[k] = join and pick() or '"' .. pick() .. '"'
    end
    if join then
      bodies[b] = string.format(path, table.concat(picked, join))
    else
      bodies[b] = '{"keys":[' .. table.concat(picked, ",") .. ']}'
    end
  end
end

function init(args)
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
  load()
  if batch > 0 then
    build_bodies()
  end
  local rate = tonumber(os.getenv("KEYS_RATE") or "")
  local connections = tonumber(os.getenv("KEYS_CONNECTIONS") or "64")
  if rate and rate > 0 then
    -- Each connection waits this long before each request (plus the answer time).
    pause_ms = 1000 * connections / rate
  end
end

function delay()
  return pause_ms or 0
end

local batch_headers = { ["Content-Type"] = "application/json" }

function request()
  if batch > 0 and join then
    return wrk.format("GET", bodies[math.random(#bodies)])
  elseif batch > 0 then
    return wrk.format("POST", path, batch_headers, bodies[math.random(#bodies)])
  end
  return wrk.format("GET", string.format(path, pick()))
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.1f, "errors": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6), errors,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
