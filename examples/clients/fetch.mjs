// A kvserve client in JavaScript (fetch, Node 18+ or a browser): single and batch
// lookups, 404, 429 with Retry-After, conditional requests.
// Usage: node examples/clients/fetch.mjs [BASE_URL] [TOKEN]
const base = process.argv[2] ?? "http://127.0.0.1:8000";
const headers = process.argv[3] ? { Authorization: `Bearer ${process.argv[3]}` } : {};

async function send(path, init = {}) {
  for (let attempt = 0; attempt < 10; attempt++) {
    const resp = await fetch(base + path, { ...init, headers: { ...headers, ...init.headers } });
    if (resp.status !== 429 && resp.status !== 503) return resp;
    const wait = Number(resp.headers.get("Retry-After") ?? "1");
    await new Promise((done) => setTimeout(done, wait * 1000));
  }
  throw new Error(`still refused after retries: ${path}`);
}

async function getValue(key) {
  const resp = await send(`/v1/keys/${key}`);
  if (resp.status === 404) return null;
  if (!resp.ok) throw new Error((await resp.json()).detail);
  return (await resp.json()).value;
}

const key = "72cf48f7-d604-4423-b012-4e2329f5117b";
const missing = "00000000-0000-0000-0000-000000000000";
const value = await getValue(key);
if (!value || (await getValue(missing)) !== null) throw new Error("single lookups");
const batch = await (await send("/v1/keys/batch", {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ keys: [key, missing] }),
})).json();
if (batch.values[key] !== value || batch.missing[0] !== missing) throw new Error("batch");
const first = await send(`/v1/keys/${key}`);
const again = await send(`/v1/keys/${key}`, { headers: { "If-None-Match": first.headers.get("ETag") } });
if (again.status !== 304) throw new Error("conditional request");
console.log("fetch client: all answers as documented");
