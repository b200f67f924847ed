// Every operation of openapi/openapi.json through the fetch client @hey-api/openapi-ts
// generated (compiled beside it by check.py with `tsc --strict`, so the results are
// used at their generated types), against the servers in the JSON config of argv[2].
// Prints the (operationId, status) of each call as JSON on its last line.
import { readFileSync } from 'node:fs';
import { createClient } from './client';
import { batchGet, getKey, getValue, headKey, headValue, legacyGetValue, legacyHeadValue } from './sdk.gen';
import type { KeyValue, LegacyNotFound, LegacyValidationError, Problem } from './types.gen';

type Config = { url: string; limited_url: string; token: string; key: string; value: string; missing: string };
const cfg: Config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { key, value, missing } = cfg;
const calls: [string, number][] = [];

function check(cond: unknown, what: string): asserts cond {
  if (!cond) throw new Error(what);
}

const client = createClient({ baseUrl: cfg.url, auth: () => cfg.token });
const stranger = createClient({ baseUrl: cfg.url, auth: () => 'not.a.token' });
const limited = createClient({ baseUrl: cfg.limited_url, auth: () => cfg.token });

function seen(op: string, response: Response, want: number) {
  check(response.status === want, `${op}: ${response.status}, want ${want}`);
  calls.push([op, want]);
}

function isProblem(error: unknown, kind: string, status: number): Problem {
  const problem = error as Problem;
  check(problem && problem.type === `urn:kvserve:problem:${kind}`, `not a ${kind} problem: ${JSON.stringify(error)}`);
  check(problem.status === status, `problem status ${problem.status}`);
  return problem;
}

async function main() {
  // getKey: 200 typed, 304 with the ETag, 404, 400, 401.
  const ok = await getKey({ client, path: { key } });
  seen('getKey', ok.response, 200);
  const kv: KeyValue | undefined = ok.data;
  check(kv && kv.key === key && kv.value === value, `getKey data ${JSON.stringify(kv)}`);
  const etag = ok.response.headers.get('ETag');
  check(etag && etag.startsWith('"'), 'getKey ETag');
  check(ok.response.headers.get('Cache-Control')?.startsWith('private'), 'Cache-Control');
  const same = await getKey({ client, path: { key }, headers: { 'If-None-Match': etag } });
  seen('getKey', same.response, 304);
  check(same.response.headers.get('ETag') === etag, '304 ETag');
  const nf = await getKey({ client, path: { key: missing } });
  seen('getKey', nf.response, 404);
  isProblem(nf.error, 'key-not-found', 404);
  const bad = await getKey({ client, path: { key: 'not-a-uuid' } });
  seen('getKey', bad.response, 400);
  isProblem(bad.error, 'invalid-key', 400);
  const anon = await getKey({ client: stranger, path: { key } });
  seen('getKey', anon.response, 401);
  isProblem(anon.error, 'unauthorized', 401);
  check(anon.response.headers.get('WWW-Authenticate')?.startsWith('Bearer'), 'WWW-Authenticate');

  // headKey: statuses and headers only.
  const head = await headKey({ client, path: { key } });
  seen('headKey', head.response, 200);
  check(head.response.headers.get('ETag') === etag, 'HEAD ETag');
  seen('headKey', (await headKey({ client, path: { key }, headers: { 'If-None-Match': etag } })).response, 304);
  seen('headKey', (await headKey({ client, path: { key: missing } })).response, 404);
  seen('headKey', (await headKey({ client, path: { key: 'not-a-uuid' } })).response, 400);

  // getValue / headValue: the raw text.
  const raw = await getValue({ client, path: { key } });
  seen('getValue', raw.response, 200);
  const text: string | undefined = raw.data;
  check(text === value, `getValue data ${JSON.stringify(text)}`);
  const rawEtag = raw.response.headers.get('ETag') ?? '';
  seen('getValue', (await getValue({ client, path: { key }, headers: { 'If-None-Match': rawEtag } })).response, 304);
  const rawNf = await getValue({ client, path: { key: missing } });
  seen('getValue', rawNf.response, 404);
  isProblem(rawNf.error, 'key-not-found', 404);
  const rawHead = await headValue({ client, path: { key } });
  seen('headValue', rawHead.response, 200);
  check(rawHead.response.headers.get('ETag') === rawEtag, 'headValue ETag');
  seen('headValue', (await headValue({ client, path: { key: missing } })).response, 404);

  // batchGet: typed result, and a refused body.
  const batch = await batchGet({ client, body: { keys: [key, key.toUpperCase(), missing] } });
  seen('batchGet', batch.response, 200);
  check(batch.data && batch.data.values[key] === value, `batch values ${JSON.stringify(batch.data)}`);
  check(JSON.stringify(batch.data.missing) === JSON.stringify([missing]), 'batch missing');
  const badBatch = await batchGet({ client, body: { keys: ['nope'] } });
  seen('batchGet', badBatch.response, 400);
  isProblem(badBatch.error, 'invalid-key', 400);

  // The legacy route: the old service's bodies.
  const legacy = await legacyGetValue({ client, path: { key } });
  seen('legacyGetValue', legacy.response, 200);
  check(legacy.data?.value === value, 'legacy value');
  check(legacy.response.headers.get('Deprecation') === '@1795651200', 'Deprecation');
  const gone = await legacyGetValue({ client, path: { key: missing } });
  seen('legacyGetValue', gone.response, 404);
  check((gone.error as LegacyNotFound).detail === 'Key not found', 'legacy 404 body');
  const invalid = await legacyGetValue({ client, path: { key: 'not-a-uuid' } });
  seen('legacyGetValue', invalid.response, 422);
  const detail = (invalid.error as LegacyValidationError).detail[0];
  check(detail.loc.join('/') === 'path/key' && detail.input === 'not-a-uuid', 'legacy 422 body');
  const legacyHead = await legacyHeadValue({ client, path: { key } });
  seen('legacyHeadValue', legacyHead.response, 200);
  check(legacyHead.response.headers.get('Deprecation') === '@1795651200', 'HEAD Deprecation');
  seen('legacyHeadValue', (await legacyHeadValue({ client, path: { key: missing } })).response, 404);

  // 429 from the rate-limited server, after 200s that carry the RateLimit fields.
  for (let i = 0; ; i++) {
    check(i < 10, 'the rate-limited server never answered 429');
    const r = await getKey({ client: limited, path: { key } });
    check(r.response.headers.get('RateLimit') && r.response.headers.get('RateLimit-Policy'), 'RateLimit fields');
    if (r.response.status === 429) {
      isProblem(r.error, 'rate-limited', 429);
      check(Number(r.response.headers.get('Retry-After')) >= 1, 'Retry-After');
      calls.push(['getKey', 429]);
      break;
    }
    check(r.response.status === 200 && r.data?.key === key, `limited: ${r.response.status}`);
  }
  console.log(JSON.stringify(calls));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
