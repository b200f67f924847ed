#!/usr/bin/env python3
"""kvserve's alerts, live: a real Prometheus evaluates prometheus/rules.yml against a real
kvserve and the alerts it shows in /api/v1/alerts are checked.

The rules are the shortened copy `prometheus/generate.py shortened` makes: every
duration divided by 60 (a `for: 5m` is 5s, a [5m] window 5s, at least 4s for a
window), with Prometheus scraping and evaluating every second. Then, in turn:

  1. none of the three alerts below is active on a healthy kvserve with
     --max-in-flight 1 and light traffic;
  2. a reload of a corrupt data file (POST /admin/reload, 422): KvserveReloadFailing
     goes pending, then firing; the good file back and a reload (200) clear it;
  3. concurrent requests against --max-in-flight 1 (many answered 503 overloaded):
     KvserveShedding fires; it clears once the load stops;
  4. kvserve stopped: KvserveDown fires.

Only loopback addresses are used; every wait is bounded; both processes are stopped at
the end, also on failure.

Usage: alerts_check.py KVSERVE_BINARY   (or import it and call check(binary))
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import prometheus_check as pc

ROOT = pc.ROOT
GENERATE = ROOT / "prometheus" / "generate.py"


def config(admin_port: int) -> str:
    return pc.prometheus_config(admin_port) + "rule_files:\n  - rules.yml\n"


class Alerts:
    def __init__(self, prom: pc.Prometheus, prometheus: pc.Process):
        self.prom, self.prometheus = prom, prometheus

    def states(self) -> dict[str, str]:
        """alertname -> pending/firing, for the alerts active now."""
        self.prometheus.check_running()
        out = {}
        for alert in self.prom.api("alerts")["alerts"]:
            name, state = alert["labels"]["alertname"], alert["state"]
            if out.get(name) != "firing":
                out[name] = state
        return out

    def wait(self, name: str, state: str | None, seconds: float) -> float:
        """Until `name` is in `state` (None: not active); returns the seconds it took."""
        start = time.monotonic()
        pc.wait_until(f"{name} {state or 'inactive'}", lambda: self.states().get(name) == state, seconds, 0.2)
        return time.monotonic() - start


def load(url: str, stop: threading.Event, counts: dict) -> None:
    """Batch requests in a loop until `stop`: each holds the one in-flight slot for a while."""
    body = {"keys": [pc.FOUND] * 500}
    while not stop.is_set():
        try:
            status, _ = pc.http(url, "POST", body, timeout=5)
        except OSError:
            status = "error"
        counts[status] = counts.get(status, 0) + 1


def check(binary: str) -> None:
    if not os.path.exists(pc.PROMETHEUS):
        raise RuntimeError(f"{pc.PROMETHEUS} not found: apt-get install prometheus")
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="kvserve-alerts-")
    kvserve = prometheus = None
    try:
        data = Path(tmp) / "data" / "alerts.data"
        data.parent.mkdir()
        good = pc.DATA.read_bytes()
        data.write_bytes(good)
        api_port, admin_port, prom_port = pc.free_port(), pc.free_port(), pc.free_port()
        api, admin = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{admin_port}"
        kvserve = pc.Process("kvserve", [
            binary, "--data", str(data), "--addr", f"127.0.0.1:{api_port}",
            "--admin-addr", f"127.0.0.1:{admin_port}", "--max-in-flight", "1",
        ])
        pc.wait_until("kvserve /readyz", lambda: pc.http(f"{admin}/readyz", timeout=2)[0] == 200, 30)

        rules = subprocess.run([sys.executable, str(GENERATE), "shortened"], capture_output=True, text=True,
                               check=True).stdout
        (Path(tmp) / "rules.yml").write_text(rules)
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text(config(admin_port))
        prometheus = pc.Process("prometheus", [
            pc.PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={Path(tmp) / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h",
        ], cwd=tmp)
        prom = pc.Prometheus(prom_port)
        alerts = Alerts(prom, prometheus)
        pc.wait_until("prometheus /-/ready", lambda: pc.http(f"{prom.url}/-/ready", timeout=2)[0] == 200, 30)
        groups = prom.api("rules")["groups"]
        pc.step(f"prometheus {prom.url} ready with the shortened rules: "
                f"{sum(len(g['rules']) for g in groups)} rules in {len(groups)} groups")
        pc.wait_until("6 scrapes of kvserve",
                      lambda: prom.scalar(f'count_over_time(up{{job="{pc.JOB}"}}[1m])') >= 6, 20, 0.2)

        # 1. healthy: light traffic, one request at a time; nothing fires.
        for _ in range(20):
            pc.http(f"{api}/v1/keys/{pc.FOUND}")
            time.sleep(0.1)
        time.sleep(6)
        # Only the alerts this check drives must be silent: on a loaded machine a debug
        # build can be slower than 5 ms often enough for the (shortened) latency alerts.
        active = alerts.states()
        driven = {n: s for n, s in active.items() if n in ("KvserveReloadFailing", "KvserveShedding", "KvserveDown")}
        if driven:
            raise AssertionError(f"alerts active on a healthy kvserve: {driven}")
        pc.step("healthy kvserve, light traffic: KvserveReloadFailing, KvserveShedding, KvserveDown inactive"
                + (f" (also active: {active})" if active else ""))

        # 2. a corrupt file is refused; the old data stays; the alert goes pending, firing.
        data.write_text("this line is broken\n")
        status, body = pc.http(f"{admin}/admin/reload", "POST")
        if status != 422:
            raise AssertionError(f"reload of a corrupt file answered {status}: {body[:300]!r}")
        took = alerts.wait("KvserveReloadFailing", "pending", 15)
        pc.step(f"corrupt file reloaded (422): KvserveReloadFailing pending after {took:.1f}s")
        took = alerts.wait("KvserveReloadFailing", "firing", 20)
        pc.step(f"KvserveReloadFailing firing {took:.1f}s later (for: 5s)")
        if pc.http(f"{api}/v1/keys/{pc.FOUND}")[0] != 200:
            raise AssertionError("the old dataset is not served while the reload alert fires")
        data.write_bytes(good)
        status, body = pc.http(f"{admin}/admin/reload", "POST")
        if status != 200:
            raise AssertionError(f"reload of the good file answered {status}: {body[:300]!r}")
        took = alerts.wait("KvserveReloadFailing", None, 15)
        pc.step(f"good file reloaded (200): KvserveReloadFailing cleared after {took:.1f}s")

        # 3. concurrent load against --max-in-flight 1: 503 overloaded; shedding fires.
        stop, counts = threading.Event(), {}
        threads = [threading.Thread(target=load, args=(f"{api}/v1/keys/batch", stop, counts)) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            took = alerts.wait("KvserveShedding", "firing", 40)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
        pc.step(f"8 clients against --max-in-flight 1 ({counts}): KvserveShedding firing after {took:.1f}s")
        took = alerts.wait("KvserveShedding", None, 30)
        pc.step(f"load stopped: KvserveShedding cleared after {took:.1f}s")

        # 4. kvserve stopped: the target is down.
        kvserve.stop()
        took = alerts.wait("KvserveDown", "firing", 30)
        pc.step(f"kvserve stopped: KvserveDown firing after {took:.1f}s (for: 2s)")
        prometheus.check_running()
    except Exception:
        for proc in (kvserve, prometheus):
            if proc is not None and not proc.log.closed:
                sys.stderr.write(f"--- {proc.name} output (tail)\n{proc.output()}\n")
        raise
    finally:
        for proc in (prometheus, kvserve):
            if proc is not None and not proc.log.closed:
                proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    pc.step(f"done in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    check(os.path.abspath(sys.argv[1]))
    print("alerts check passed")
