#!/usr/bin/env python3
"""External checks: third-party components against a real kvserve on 127.0.0.1.

  legacy-compat   the old service's framework (FastAPI + pydantic, tests/external/
                  old_service.py) and kvserve answer GET of a few thousand generated
                  paths under /get_value (tests/external/legacy_cases.py: mutated keys,
                  every UUID version, escapes that are not UTF-8, trailing and doubled
                  slashes) with the same status, Content-Type, Location and body bytes
  schemathesis-auth, schemathesis-open
                  property-based requests generated from the served /openapi.json;
                  every answer must match the spec (status, content type, schema,
                  headers), against a server with auth on and one with auth off
  swagger-ui      a real Chromium opens /docs of a server with auth on, runs "Try it out"
                  on GET /v1/keys/{key} and sees 401, enters a token with Swagger UI's
                  Authorize button, runs it again and sees 200 with the value
                  (tests/external/browser/swagger.mjs); screenshots of both answers are
                  kept in target/artifacts/
  jwt-interop     tokens made by PyJWT (HS256, RS256, ES256, EdDSA) are accepted, and
                  PyJWT-made attacks (alg none, key confusion, expiry, scope) refused
  k8s             the Kubernetes manifests render, validate strictly against the 1.30
                  schemas, agree with the binary's flags and probes, run with each
                  overlay's settings, and pass checkov; the Dockerfile passes checkov
                  (tests/external/k8s_check.py)
  clients         the client examples (examples/clients: Python requests, curl, JS fetch)
                  run against a rate-limited server and get the documented answers
  promtool        `promtool check metrics` accepts what /metrics serves
  rules           prometheus/rules.yml: `promtool check rules`, `promtool test rules
                  prometheus/rules.test.yml` (every alert fires and stays silent in a
                  case), severity/summary/description/runbook anchors in docs/RUNBOOK.md,
                  every metric the rules read served by kvserve (tests/external/rules_check.py)
  alerts          a real Prometheus with a shortened copy of the rules (durations / 60)
                  scrapes a live kvserve: a corrupt reload makes KvserveReloadFailing
                  pending then firing, a good one clears it, --max-in-flight 1 under
                  load fires KvserveShedding, a stopped kvserve fires KvserveDown
                  (tests/external/alerts_check.py)
  openapi-lint    Redocly CLI's recommended ruleset finds nothing in openapi/openapi.json,
                  warnings included (tests/external/lint/redocly.yaml)
  generated-clients
                  clients generated from openapi/openapi.json by openapi-python-client
                  and @hey-api/openapi-ts call every operation of the spec against a
                  real kvserve (HEAD, 304, 400, 404, 429, batch, legacy), typed results
                  asserted (tests/external/generated_clients/)
  prometheus      a real Prometheus scrapes kvserve, counts what was sent, and every
                  PromQL expression of grafana/kvserve.json returns data
                  (tests/external/prometheus_check.py)
  tls             curl and Python's ssl/urllib against TLS listeners: 200 with the CA
                  trusted; expired, wrong-host and self-signed server certificates
                  refused; plain HTTP to the TLS port fails cleanly; --admin-client-ca
                  admits only CA-signed client certificates (tests/external/tls_check.py)

Usage: run.py [--jobs N] KVSERVE_BINARY [CHECK ...]   (all checks by default)
Each check runs in its own process, N at a time (1 by default); a check's output is
printed whole when it ends. Ends with the line "N passed, N failed" and exits non-zero
on any failure.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.error
import urllib.request
from pathlib import Path

import k8s_check
from generated_clients import check as generated_clients_check
import alerts_check
import prometheus_check
import rules_check
import tls_check

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KEY = "72cf48f7-d604-4423-b012-4e2329f5117b"
KEYS = ROOT / "tests" / "fixtures" / "jwt"
SECRET = KEYS / "hs256.secret"
# Files CI keeps from a run (the Swagger UI screenshots).
ARTIFACTS = ROOT / "target" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def wait_for(url: str, want: int = 200, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if fetch(url)[0] == want:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer {want} within {seconds}s")


class Kvserve:
    """kvserve on two free loopback ports, stopped with SIGTERM on exit."""

    def __init__(self, binary: str, data: Path, extra: tuple[str, ...] = ()):
        self.api, self.admin = free_port(), free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [binary, "--data", str(data), "--addr", f"127.0.0.1:{self.api}",
             "--admin-addr", f"127.0.0.1:{self.admin}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(f"http://127.0.0.1:{self.admin}/readyz")
        self.url = f"http://127.0.0.1:{self.api}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        code = self.proc.wait(timeout=30)
        if code != 0:
            self.log.seek(0)
            sys.stderr.write(self.log.read().decode(errors="replace"))
            raise RuntimeError(f"kvserve exited with {code} after SIGTERM")


def legacy_compat(binary: str) -> None:
    """The old service and kvserve, GET of generated targets under /get_value
    (legacy_cases.py): the same status, Content-Type, Location and body bytes.
    Redirects are compared, not followed; both get the same Host header, so the
    absolute Location of a 307 is comparable."""
    import http.client
    import threading

    import legacy_cases

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "compat.data"
        data.write_text(
            f"{KEY} zsda pl focnygogk\n"
            "0d9c6e4e-5c39-4f76-9a57-2f0b7e4c1a11 héllo \"quoted\" back\\slash \t tab ☃\n"
            "11111111-1111-4111-8111-111111111111 \n"
            "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE upper case key\r\n"
            # Present keys of other versions than 4: a 422 uuid_version from both (UUID4).
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8 version one\n"
            "00000000-0000-0000-0000-000000000000 nil\n"
            "ffffffff-ffff-ffff-ffff-ffffffffffff max\n"
            "017f22e2-79b0-7cc3-98c4-dc0c0c07398f version seven\n",
            encoding="utf-8",
        )
        keys = [line.split(" ")[0] for line in data.read_text(encoding="utf-8").splitlines()]
        targets = legacy_cases.targets(keys)
        old_port = free_port()
        old = subprocess.Popen([sys.executable, str(HERE / "old_service.py"), str(data), str(old_port)])
        try:
            wait_for(f"http://127.0.0.1:{old_port}/get_value/{KEY}")
            with Kvserve(binary, data) as new:
                new_port = int(new.url.rsplit(":", 1)[1])
                local = threading.local()

                def get(port: int, target: str) -> tuple:
                    # One keep-alive connection per thread and server.
                    conns = local.__dict__.setdefault("conns", {})
                    for attempt in range(2):
                        conn = conns.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                        conns[port] = conn
                        try:
                            conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
                            conn.putheader("Host", "legacy.test:8080")
                            conn.endheaders()
                            resp = conn.getresponse()
                            body = resp.read()
                            return (resp.status, resp.getheader("content-type", ""),
                                    resp.getheader("location", ""), body)
                        except (http.client.HTTPException, OSError):
                            conn.close()
                            conns.pop(port, None)
                            if attempt:
                                raise
                    raise AssertionError("unreachable")

                def compare(target: str) -> tuple[int, str | None]:
                    want, got = get(old_port, target), get(new_port, target)
                    if got == want:
                        return want[0], None
                    return want[0], f"  GET {target[:100]}\n    old: {str(want)[:400]}\n    new: {str(got)[:400]}"

                started = time.monotonic()
                with ThreadPoolExecutor(max_workers=8) as pool:
                    results = list(pool.map(compare, targets))
                mismatches = [m for _, m in results if m]
                if mismatches:
                    raise AssertionError(f"legacy route differs from the old service on {len(mismatches)} of "
                                         f"{len(targets)} targets:\n" + "\n".join(mismatches[:40]))
                statuses: dict[int, int] = {}
                for status, _ in results:
                    statuses[status] = statuses.get(status, 0) + 1
                print(f"  {len(targets)} generated targets answered identically by both services "
                      f"in {time.monotonic() - started:.1f}s; statuses {dict(sorted(statuses.items()))}")
        finally:
            old.terminate()
            old.wait(timeout=10)


def mint(binary: str, scope: str = "kv:read") -> str:
    """A token from `kvserve token`, the way the README tells people to make one."""
    out = subprocess.run([binary, "token", "--secret-file", str(SECRET), "--scope", scope, "--ttl", "15m"],
                         capture_output=True, check=True)
    return out.stdout.decode().strip()


# Against the document each server serves at /openapi.json: with auth on it is
# openapi/openapi.json (tests/it/spec.rs checks), with auth off the same without the
# security requirements. One worker: CPython 3.11's parser is not thread-safe for the AST
# walks hypothesis does when several workers describe strategies at once.
# 412 is an expected answer to a valid conditional request (the file says why).
SCHEMATHESIS_CONFIG = ["--config-file", str(HERE / "schemathesis.toml")]
SCHEMATHESIS = ["--checks", "all", "--max-examples", "100", "--seed", "1", "--workers", "1", "--max-time", "60"]


def schemathesis_auth(binary: str) -> None:
    # Schemathesis also checks that requests without the token, or with a broken one,
    # are refused.
    with Kvserve(binary, ROOT / "data" / "sample.data", ("--jwt-hs256-secret-file", str(SECRET))) as server:
        subprocess.run(["schemathesis", *SCHEMATHESIS_CONFIG, "run", f"{server.url}/openapi.json",
                        "--header", f"Authorization: Bearer {mint(binary)}", *SCHEMATHESIS], check=True)


def schemathesis_open(binary: str) -> None:
    # Auth off, the default.
    with Kvserve(binary, ROOT / "data" / "sample.data") as server:
        subprocess.run(["schemathesis", *SCHEMATHESIS_CONFIG, "run", f"{server.url}/openapi.json", *SCHEMATHESIS],
                       check=True)


def swagger_ui(binary: str) -> None:
    browser = HERE / "browser"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with Kvserve(binary, ROOT / "data" / "sample.data", ("--jwt-hs256-secret-file", str(SECRET))) as server:
        subprocess.run(["node", str(browser / "swagger.mjs"), server.url, KEY, mint(binary)], check=True,
                       cwd=browser, env={**os.environ, "ARTIFACTS": str(ARTIFACTS)})


def jwt_interop(binary: str) -> None:
    import base64
    import hashlib
    import hmac
    import json as jsonlib

    import jwt  # PyJWT

    now = int(time.time())
    good = {"sub": "pyjwt", "scope": "kv:read", "exp": now + 300}
    path = f"/get_value/{KEY}"

    def status(server: Kvserve, token: str) -> int:
        request = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def hs256_with(secret: bytes, claims: dict) -> str:
        # PyJWT refuses a PEM key as an HMAC secret; an attacker signs by hand.
        signing_input = b64(jsonlib.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(jsonlib.dumps(claims).encode())
        return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())

    # (algorithm, server flags, signing key, public key an attacker would abuse)
    servers = [("HS256", ("--jwt-hs256-secret-file", str(SECRET)), SECRET.read_bytes().strip(), None)]
    for alg, stem in [("RS256", "rsa"), ("ES256", "ec"), ("EdDSA", "ed25519")]:
        public = KEYS / f"{stem}-public.pem"
        servers.append((alg, ("--jwt-public-key-file", str(public)), (KEYS / f"{stem}-private.pem").read_bytes(), public.read_bytes()))
    for alg, flags, signing_key, public in servers:
        name = alg
        with Kvserve(binary, ROOT / "data" / "sample.data", flags) as server:
            cases = [
                ("valid", jwt.encode(good, signing_key, algorithm=alg), 200),
                ("scp array", jwt.encode({"sub": "p", "scp": ["kv:read"], "exp": now + 300}, signing_key, algorithm=alg), 200),
                ("scp string", jwt.encode({"sub": "p", "scp": "email kv:read", "exp": now + 300}, signing_key, algorithm=alg), 200),
                ("scope array", jwt.encode({**good, "scope": ["openid", "kv:read"]}, signing_key, algorithm=alg), 200),
                ("scope a number", jwt.encode({**good, "scope": 7}, signing_key, algorithm=alg), 401),
                ("alg none", jwt.encode(good, None, algorithm="none"), 401),
                ("expired", jwt.encode({**good, "exp": now - 3600}, signing_key, algorithm=alg), 401),
                ("not yet valid", jwt.encode({**good, "nbf": now + 3600}, signing_key, algorithm=alg), 401),
                ("no scope", jwt.encode({"sub": "p", "exp": now + 300}, signing_key, algorithm=alg), 403),
                ("admin scope only", jwt.encode({**good, "scope": "kv:admin"}, signing_key, algorithm=alg), 403),
            ]
            if public is not None:
                cases.append(("HS256 with the public key as secret", hs256_with(public, good), 401))
            for label, token, want in cases:
                got = status(server, token)
                if got != want:
                    raise AssertionError(f"{name} server, {label} token: got {got}, want {want}")
            print(f"  {name}: {len(cases)} PyJWT tokens answered as expected")


def clients(binary: str) -> None:
    examples = ROOT / "examples" / "clients"
    # A tight rate limit, so the examples' 429 handling (Retry-After) is exercised.
    flags = ("--rate-limit", "5", "--rate-limit-burst", "5")
    with Kvserve(binary, ROOT / "data" / "sample.data", flags) as server:
        for command in (
            [sys.executable, str(examples / "client.py"), server.url],
            ["bash", str(examples / "curl.sh"), server.url],
            ["node", str(examples / "fetch.mjs"), server.url],
        ):
            done = subprocess.run(command, timeout=120, capture_output=True, text=True)
            sys.stdout.write(done.stdout)
            sys.stderr.write(done.stderr)
            if done.returncode != 0:
                raise AssertionError(f"{command[-2]} exited {done.returncode}")
            # Expected refusals (the 429s the examples wait out) are not errors: a passing
            # client prints nothing on stderr, so a red line in the log means red.
            if done.stderr.strip():
                raise AssertionError(f"{command[-2]} wrote to stderr in a passing run")


def promtool(binary: str) -> None:
    with Kvserve(binary, ROOT / "data" / "sample.data") as server:
        for path in [f"/v1/keys/{KEY}", "/v1/keys/abc", "/nope", f"/get_value/{KEY}"]:
            fetch(server.url + path)
        status, _, body = fetch(f"http://127.0.0.1:{server.admin}/metrics")
        assert status == 200, f"/metrics answered {status}"
        result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        if result.returncode != 0:
            raise AssertionError("promtool check metrics:\n" + result.stdout.decode() + result.stderr.decode())
        print(f"  promtool accepts {len(body.splitlines())} lines of /metrics")


def openapi_lint(binary: str) -> None:
    del binary  # the checked-in document is what generators and the server use
    lint = HERE / "lint"
    done = subprocess.run(
        [str(lint / "node_modules" / ".bin" / "redocly"), "lint", "--config", str(lint / "redocly.yaml"),
         "--format", "json", str(ROOT / "openapi" / "openapi.json")],
        capture_output=True, text=True, timeout=120)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"redocly lint ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    totals = report["totals"]
    if totals["errors"] or totals["warnings"]:
        found = [f"{p['severity']} {p['ruleId']}: {p['message']} at {p['location'][0]['pointer']}"
                 for p in report["problems"]]
        raise AssertionError("redocly lint:\n  " + "\n  ".join(found))
    print(f"  redocly lint: no problems ({totals['ignored']} ignored)")


def generated_clients(binary: str) -> None:
    generated_clients_check.check(binary, Kvserve)


# The longest first, so that with --jobs they start at once and the short ones fill in.
CHECKS = {
    "schemathesis-auth": schemathesis_auth,
    "schemathesis-open": schemathesis_open,
    "k8s": k8s_check.check,
    "swagger-ui": swagger_ui,
    "prometheus": prometheus_check.check,
    "alerts": alerts_check.check,
    "clients": clients,
    "generated-clients": generated_clients,
    "legacy-compat": legacy_compat,
    "jwt-interop": jwt_interop,
    "promtool": promtool,
    "rules": rules_check.check,
    "tls": tls_check.check,
    "openapi-lint": openapi_lint,
}


def run_one(binary: str, name: str) -> int:
    """One check in this process: its output is the check's own."""
    try:
        CHECKS[name](binary)
    except Exception as err:  # the parent reports it
        print(f"FAILED {name}: {err}", flush=True)
        return 1
    return 0


def main() -> int:
    args = sys.argv[1:]
    jobs = 1
    if args[:1] == ["--jobs"]:
        jobs, args = int(args[1]), args[2:]
    if args[:1] == ["--one"]:
        return run_one(os.path.abspath(args[2]), args[1])
    binary, names = os.path.abspath(args[0]), args[1:] or list(CHECKS)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        print(f"unknown check(s): {', '.join(unknown)}; known: {', '.join(CHECKS)}", file=sys.stderr)
        return 2

    # Each check runs in its own process with its output kept aside, printed whole when
    # it ends, so checks can run side by side (most of their time is spent waiting on
    # servers, browsers and schemathesis' time budget) and the log still reads in order.
    def one(name: str) -> tuple[str, int, bytes, float]:
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-u", __file__, "--one", name, binary],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return name, done.returncode, done.stdout, time.monotonic() - start

    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for name, code, output, seconds in pool.map(one, names):
            print(f"--- {name}", flush=True)
            sys.stdout.buffer.write(output)
            if code:
                failed.append(name)
                print(f"FAILED {name} ({seconds:.0f}s)", flush=True)
            else:
                print(f"ok {name} ({seconds:.0f}s)", flush=True)
    print(f"external: {len(names) - len(failed)} passed, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
