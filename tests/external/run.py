#!/usr/bin/env python3
"""External checks: third-party components against a real kvserve on 127.0.0.1.

  legacy-compat   the old service's framework (FastAPI + pydantic, tests/external/
                  old_service.py) and kvserve answer GET /get_value/{key} with the same
                  status, Content-Type and body bytes, for good and bad keys alike
  schemathesis    property-based requests generated from openapi/openapi.json; every
                  answer must match the spec (status, content type, schema, headers)
  swagger-ui      a real Chromium opens /docs, runs "Try it out" on GET /v1/keys/{key}
                  and sees the value (tests/external/browser/swagger.mjs)
  promtool        `promtool check metrics` accepts what /metrics serves
  prometheus      a real Prometheus scrapes kvserve, counts what was sent, and every
                  PromQL expression of grafana/kvserve.json returns data
                  (tests/external/prometheus_check.py)

Usage: run.py KVSERVE_BINARY [CHECK ...]   (all checks by default)
Ends with the line "N passed, N failed" and exits non-zero on any failure.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import prometheus_check

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KEY = "72cf48f7-d604-4423-b012-4e2329f5117b"


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

    def __init__(self, binary: str, data: Path):
        self.api, self.admin = free_port(), free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [binary, "--data", str(data), "--addr", f"127.0.0.1:{self.api}",
             "--admin-addr", f"127.0.0.1:{self.admin}"],
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
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "compat.data"
        data.write_text(
            f"{KEY} zsda pl focnygogk\n"
            "0d9c6e4e-5c39-4f76-9a57-2f0b7e4c1a11 héllo \"quoted\" back\\slash \t tab ☃\n"
            "11111111-1111-4111-8111-111111111111 \n"
            "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE upper case key\r\n",
            encoding="utf-8",
        )
        old_port = free_port()
        old = subprocess.Popen([sys.executable, str(HERE / "old_service.py"), str(data), str(old_port)])
        try:
            wait_for(f"http://127.0.0.1:{old_port}/get_value/{KEY}")
            with Kvserve(binary, data) as new:
                keys = [
                    KEY, KEY.upper(), KEY.replace("-", ""), "{" + KEY + "}", "urn:uuid:" + KEY,
                    "0d9c6e4e-5c39-4f76-9a57-2f0b7e4c1a11", "11111111-1111-4111-8111-111111111111",
                    "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "00000000-0000-0000-0000-000000000000",
                    "abc", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", KEY[:-1], KEY + "0", KEY.replace("-", "_"),
                    "x" * 100, "a" * 10_000, "%E2%98%83", "%20", "72cf48f7-d604-4423-b012-4e2329f5117%C3%A9",
                    "{" + KEY, "urn:uuid:xyz", "12345678-1234-1234-1234-1234567890ab-ff", "1-2-3-4-5",
                    "72cf48f7d6044423b0124e2329f5117g",
                ]
                mismatches = []
                for key in keys:
                    want = fetch(f"http://127.0.0.1:{old_port}/get_value/{key}")
                    got = fetch(f"{new.url}/get_value/{key}")
                    if got != want:
                        mismatches.append(f"  /get_value/{key[:60]}\n    old: {str(want)[:400]}\n    new: {str(got)[:400]}")
                if mismatches:
                    raise AssertionError("legacy route differs from the old service:\n" + "\n".join(mismatches))
                print(f"  {len(keys)} keys answered identically by both services")
        finally:
            old.terminate()
            old.wait(timeout=10)


def schemathesis(binary: str) -> None:
    with Kvserve(binary, ROOT / "data" / "sample.data") as server:
        # One worker: CPython 3.11's parser is not thread-safe for the AST walks
        # hypothesis does when several workers describe strategies at once.
        subprocess.run(
            ["schemathesis", "run", str(ROOT / "openapi" / "openapi.json"), "--url", server.url,
             "--checks", "all", "--max-examples", "100", "--seed", "1", "--workers", "1",
             "--max-time", "60"],
            check=True,
        )


def swagger_ui(binary: str) -> None:
    browser = HERE / "browser"
    with Kvserve(binary, ROOT / "data" / "sample.data") as server:
        subprocess.run(["node", str(browser / "swagger.mjs"), server.url, KEY], check=True, cwd=browser)


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


CHECKS = {
    "legacy-compat": legacy_compat,
    "schemathesis": schemathesis,
    "swagger-ui": swagger_ui,
    "promtool": promtool,
    "prometheus": prometheus_check.check,
}


def main() -> int:
    binary, names = sys.argv[1], sys.argv[2:] or list(CHECKS)
    passed = failed = 0
    for name in names:
        print(f"--- {name}", flush=True)
        try:
            CHECKS[name](os.path.abspath(binary))
        except Exception as err:  # report every check, then fail
            failed += 1
            print(f"FAILED {name}: {err}", flush=True)
        else:
            passed += 1
            print(f"ok {name}", flush=True)
    print(f"external: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
