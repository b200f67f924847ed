"""generated-clients: clients generated from openapi/openapi.json by two independent
generators call every operation of the spec against a real kvserve, and the typed
results are asserted.

- openapi-python-client (PyPI): httpx + attrs models (python_client.py drives it);
- @hey-api/openapi-ts (npm): a fetch client in TypeScript, compiled with the
  driver (driver.ts) by `tsc --strict` and run with node.

Both are generated at test time into a temporary folder. The servers: one with a JWT
key (HS256, the bearer scheme the spec declares), one more per client with a rate limit
of 1/s and a burst of 1 for the 429. The operations are enumerated from the spec: an
operationId no client called fails the check, so a new operation cannot be skipped.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jwt

from . import python_client

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SPEC = ROOT / "openapi" / "openapi.json"
SAMPLE = ROOT / "data" / "sample.data"
SECRET = ROOT / "tests" / "fixtures" / "jwt" / "hs256.secret"
MISSING = "00000000-0000-4000-8000-000000000000"  # version 4: the legacy route takes no other
# What each client must have seen besides one call of every operation.
SCENARIOS = {("headKey", 200), ("headKey", 304), ("getKey", 304), ("getKey", 404),
             ("getKey", 400), ("getKey", 429), ("batchGet", 200), ("batchGet", 400)}

TSCONFIG = {
    "compilerOptions": {
        "target": "ES2022", "module": "commonjs", "moduleResolution": "node",
        "strict": True, "skipLibCheck": True, "lib": ["ES2022", "DOM"],
        "types": ["node"], "typeRoots": [str(HERE / "node_modules" / "@types")],
        "outDir": "out",
    },
    "include": ["src/**/*.ts"],
}


def operation_ids() -> set[str]:
    spec = json.loads(SPEC.read_text())
    return {op["operationId"] for item in spec["paths"].values() for op in item.values()}


def sample_entry() -> tuple[str, str]:
    first = SAMPLE.read_text(encoding="utf-8").splitlines()[0]
    key, value = first.split(" ", 1)
    return key.lower(), value


def timed(label: str, command: list[str], **kwargs) -> subprocess.CompletedProcess:
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{label} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    print(f"  {label}: {time.monotonic() - start:.1f}s")
    return done


def python_calls(tmp: Path, cfg: dict) -> list[tuple[str, int]]:
    tool = Path(sys.executable).with_name("openapi-python-client")
    timed("openapi-python-client generate",
          [str(tool), "generate", "--path", str(SPEC), "--meta", "none",
           "--output-path", str(tmp / "kvserve_client")])
    try:
        return python_client.run(tmp, "kvserve_client", cfg)
    except Exception as err:  # the generated code's frames say where it broke
        raise AssertionError("the Python client failed:\n" + traceback.format_exc()) from err


def typescript_calls(tmp: Path, cfg: dict) -> list[tuple[str, int]]:
    bin_dir = HERE / "node_modules" / ".bin"
    project = tmp / "ts"
    timed("@hey-api/openapi-ts generate",
          [str(bin_dir / "openapi-ts"), "-i", str(SPEC), "-o", str(project / "src"),
           "-c", "@hey-api/client-fetch"])
    shutil.copy(HERE / "driver.ts", project / "src" / "driver.ts")
    (project / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    timed("tsc --strict", [str(bin_dir / "tsc"), "-p", str(project)])
    config = project / "config.json"
    config.write_text(json.dumps(cfg))
    done = timed("node driver", ["node", str(project / "out" / "driver.js"), str(config)])
    return [tuple(call) for call in json.loads(done.stdout.strip().splitlines()[-1])]


def check(binary: str, kvserve) -> None:
    """`kvserve` is run.py's Kvserve helper (binary, data, flags)."""
    auth = ("--jwt-hs256-secret-file", str(SECRET))
    limited = (*auth, "--rate-limit", "1", "--rate-limit-burst", "1")
    token = jwt.encode({"sub": "generated-client", "scope": "kv:read", "exp": int(time.time()) + 600},
                       SECRET.read_bytes().strip(), algorithm="HS256")
    key, value = sample_entry()
    want = operation_ids()
    with tempfile.TemporaryDirectory() as tmp, kvserve(binary, SAMPLE, auth) as server:
        for name, calls_of in (("openapi-python-client", python_calls),
                               ("@hey-api/openapi-ts", typescript_calls)):
            with kvserve(binary, SAMPLE, limited) as throttled:
                cfg = {"url": server.url, "limited_url": throttled.url, "token": token,
                       "key": key, "value": value, "missing": MISSING}
                work = Path(tmp) / name.strip("@").replace("/", "-")
                work.mkdir()
                calls = set(calls_of(work, cfg))
            called = {op for op, _ in calls}
            if called != want:
                raise AssertionError(f"{name}: operations not called: {sorted(want - called)}; "
                                     f"not in the spec: {sorted(called - want)}")
            if not SCENARIOS <= calls:
                raise AssertionError(f"{name}: scenarios not seen: {sorted(SCENARIOS - calls)}")
            print(f"  {name}: {len(want)} operations, {len(calls)} (operation, status) pairs: "
                  + ", ".join(f"{op} {status}" for op, status in sorted(calls)))


if __name__ == "__main__":
    sys.exit("run through tests/external/run.py generated-clients")
