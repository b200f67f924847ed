#!/usr/bin/env python3
"""Real-component check of kvserve's /metrics, the Prometheus example and the Grafana dashboard.

A real Prometheus server (Debian's `prometheus` package, /usr/bin/prometheus) scrapes a
real kvserve's admin listener every second and evaluates prometheus/rules.yml (the
shortened copy of `prometheus/generate.py shortened`: durations / 60, so the recorded
series the dashboard's SLO panels read exist within seconds); then
  - the target is up and `up{job="kvserve"} == 1`,
  - N requests sent to the API listener raise sum(kvserve_http_requests_total) and
    sum(kvserve_http_request_duration_seconds_count) by exactly N, split by method, route
    template and status exactly as sent (the admin listener, scraped, is not counted),
  - kvserve_lookups_total{result="found"|"missing"} and the cache counters have moved
    (kvserve runs with its LRU on: off, it counts no hits or misses),
  - every PromQL expression of grafana/kvserve.json (panels, panels in collapsed rows,
    annotations) is accepted by Prometheus, and every panel's returns data (at least one
    value that is not NaN),
  - every query variable's label_values() finds values.

Only loopback addresses are used; every wait is bounded; both processes are stopped at
the end, also on failure.

Usage: prometheus_check.py KVSERVE_BINARY   (or import it and call check(binary))
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "kvserve.json"
DATA = ROOT / "data" / "sample.data"
PROMETHEUS = "/usr/bin/prometheus"
JOB = "kvserve"
SCRAPE_SECONDS = 1
N = 200

FOUND = "72cf48f7-d604-4423-b012-4e2329f5117b"  # in data/sample.data
MISSING = "00000000-0000-4000-8000-000000000000"  # version 4: the legacy route takes no other

# (method, path, body, expected status, expected route label), sent in turn until N are sent.
REQUESTS = [
    ("GET", f"/v1/keys/{FOUND}", None, 200, "/v1/keys/{key}"),
    ("GET", f"/v1/keys/{MISSING}", None, 404, "/v1/keys/{key}"),
    ("GET", "/v1/keys/abc", None, 400, "/v1/keys/{key}"),
    ("GET", f"/v1/keys/{FOUND}/value", None, 200, "/v1/keys/{key}/value"),
    ("POST", "/v1/keys/batch", {"keys": [FOUND, MISSING]}, 200, "/v1/keys/batch"),
    ("GET", f"/get_value/{FOUND}", None, 200, "/get_value/{key}"),
    ("GET", f"/get_value/{MISSING}", None, 404, "/get_value/{key}"),
    ("GET", "/get_value/abc", None, 422, "/get_value/{key}"),
    ("GET", "/no/such/route", None, 404, "unmatched"),
    ("GET", "/openapi.json", None, 200, "/openapi.json"),
]

# Grafana's built-in interval variables, as an operator's Grafana would fill them in.
GRAFANA_INTERVALS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}


def step(msg: str) -> None:
    print(f"  {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, method: str = "GET", body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"content-type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until(what: str, predicate, seconds: float, interval: float = 0.1):
    """Call predicate until it returns a truthy value (returned) or `seconds` pass (raises)."""
    deadline = time.monotonic() + seconds
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError) as err:
            last_error = err
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {seconds}s" + (f" (last error: {last_error})" if last_error else ""))


class Process:
    """A child process whose output goes to a temporary file, shown when something fails."""

    def __init__(self, name: str, argv: list[str], cwd: str | None = None):
        self.name = name
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")

    def output(self, tail: int = 4000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-tail:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode


class Prometheus:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        status, body = http(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise PromQLError(f"{path} {params}: HTTP {status}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PromQLError(f"{expr}: unexpected result type {data['resultType']}")
        return data["result"]

    def scalar(self, expr: str) -> float:
        """The single value of `expr`; an empty result counts as 0 (no series yet)."""
        result = self.query(expr)
        if len(result) > 1:
            raise AssertionError(f"{expr}: expected one series, got {len(result)}")
        return float(result[0]["value"][1]) if result else 0.0

    def by(self, expr: str, labels: tuple[str, ...]) -> Counter:
        return Counter({tuple(r["metric"].get(l, "") for l in labels): float(r["value"][1])
                        for r in self.query(expr)})


class PromQLError(Exception):
    pass


def prometheus_config(admin_port: int) -> str:
    return (
        "global:\n"
        f"  scrape_interval: {SCRAPE_SECONDS}s\n"
        f"  evaluation_interval: {SCRAPE_SECONDS}s\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB}\n"
        "    metrics_path: /metrics\n"
        f"    scrape_timeout: {SCRAPE_SECONDS}s\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{admin_port}']\n"
    )


# --- the dashboard -----------------------------------------------------------------------

def all_panels(panels: list[dict]):
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def grafana_to_promql(expr: str, variables: set[str]) -> str:
    """Fill in Grafana variables: interval macros by fixed windows, template variables
    (only used in =~ matchers) by a regex matching every value."""
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        raise ValueError(f"unknown variable ${name} in {expr!r}")

    # Template variables as regex matchers: label=~"$var" / "${var}" / "${var:regex}".
    def matcher(match: re.Match) -> str:
        if match.group(1) not in variables:
            raise ValueError(f"unknown template variable ${match.group(1)} in {expr!r}")
        return '=~".+"'

    expr = re.sub(r'=~"\$\{?(\w+)(?::\w+)?\}?"', matcher, expr)
    if re.search(r"\$\{?(?!__)\w", expr):
        raise ValueError(f"template variable outside a =~ matcher in {expr!r}")
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def load_dashboard() -> tuple[dict, list[tuple[str, str]], list[tuple[str, str]], list[dict]]:
    """The dashboard, its panel expressions and annotation expressions as (where, expr),
    and its query variables; checks the structure an import relies on."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    problems = []
    if dashboard.get("uid") != "kvserve":
        problems.append(f"uid is {dashboard.get('uid')!r}, not 'kvserve'")
    if dashboard.get("schemaVersion", 0) < 39:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')} < 39")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource/prometheus")
    uses_var = {"type": "prometheus", "uid": "${datasource}"}

    panel_exprs = []
    ids = Counter()
    for panel in all_panels(dashboard["panels"]):
        ids[panel.get("id")] += 1
        if panel.get("type") == "row":
            continue
        where = f"panel {panel.get('title')!r}"
        if panel.get("datasource") != uses_var:
            problems.append(f"{where}: datasource is {panel.get('datasource')}, not {uses_var}")
        if not panel.get("targets"):
            problems.append(f"{where}: no targets")
        for target in panel.get("targets", []):
            if target.get("datasource", uses_var) != uses_var:
                problems.append(f"{where} {target.get('refId')}: datasource is {target.get('datasource')}")
            if not target.get("expr"):
                problems.append(f"{where} {target.get('refId')}: no expr")
                continue
            panel_exprs.append((f"{where} {target.get('refId')}", target["expr"]))
    problems += [f"panel id {i} used {n} times" for i, n in ids.items() if n > 1]

    annotation_exprs = [(f"annotation {a.get('name')!r}", a["expr"])
                        for a in dashboard.get("annotations", {}).get("list", []) if a.get("expr")]
    queries = [v for v in variables.values() if v.get("type") == "query"]
    for v in queries:
        if v.get("datasource") != uses_var:
            problems.append(f"variable {v['name']}: datasource is {v.get('datasource')}")
    if problems:
        raise AssertionError("dashboard structure:\n  " + "\n  ".join(problems))
    names = set(variables)
    panel_exprs = [(w, e, grafana_to_promql(e, names)) for w, e in panel_exprs]
    annotation_exprs = [(w, e, grafana_to_promql(e, names)) for w, e in annotation_exprs]
    return dashboard, panel_exprs, annotation_exprs, queries


def check_variables(prom: Prometheus, queries: list[dict], names: set[str]) -> None:
    for v in queries:
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", q)
        if not m:
            raise AssertionError(f"variable {v['name']}: unsupported query {q!r}")
        selector, label = grafana_to_promql(m.group(1), names), m.group(2)
        values = prom.api(f"label/{label}/values", **{"match[]": selector})
        if not values:
            raise AssertionError(f"variable {v['name']}: {q} finds no values")
        step(f"variable ${v['name']}: {q} -> {values}")


# --- the check ---------------------------------------------------------------------------

def send_requests(api: str, n: int) -> Counter:
    """Send n requests; return the count per (method, route, status) they should produce."""
    sent = Counter()
    wrong = []
    for i in range(n):
        method, path, body, want, route = REQUESTS[i % len(REQUESTS)]
        status, _ = http(api + path, method, body)
        if status != want:
            wrong.append(f"{method} {path}: {status}, expected {want}")
        sent[(method, route, str(status))] += 1
    if wrong:
        raise AssertionError("unexpected statuses:\n  " + "\n  ".join(sorted(set(wrong))))
    return sent


def check(binary: str) -> None:
    if not os.path.exists(PROMETHEUS):
        raise RuntimeError(f"{PROMETHEUS} not found: apt-get install prometheus")
    started = time.monotonic()
    dashboard, panel_exprs, annotation_exprs, queries = load_dashboard()
    step(f"dashboard: {len(panel_exprs)} panel expressions, {len(annotation_exprs)} annotation "
         f"expressions, {len(queries)} query variables")

    tmp = tempfile.mkdtemp(prefix="kvserve-prom-")
    kvserve = prometheus = None
    try:
        api_port, admin_port, prom_port = free_port(), free_port(), free_port()
        # The LRU on (it is off by default with memory storage, and counts nothing then),
        # so the cache panels have something to show.
        kvserve = Process("kvserve", [binary, "--data", str(DATA), "--addr", f"127.0.0.1:{api_port}",
                                      "--admin-addr", f"127.0.0.1:{admin_port}",
                                      "--cache-capacity", "1000"])
        api, admin = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{admin_port}"

        def ready() -> bool:
            kvserve.check_running()
            return http(f"{admin}/readyz", timeout=2)[0] == 200
        wait_until("kvserve /readyz", ready, 30)
        step(f"kvserve ready: api {api}, admin {admin}")

        config = Path(tmp) / "prometheus.yml"
        rules = subprocess.run([sys.executable, str(ROOT / "prometheus" / "generate.py"), "shortened"],
                               capture_output=True, text=True, check=True).stdout
        (Path(tmp) / "rules.yml").write_text(rules)
        config.write_text(prometheus_config(admin_port) + "rule_files:\n  - rules.yml\n")
        prometheus = Process("prometheus", [
            PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={Path(tmp) / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h",
        ], cwd=tmp)
        prom = Prometheus(prom_port)

        def prom_ready() -> bool:
            prometheus.check_running()
            return http(f"{prom.url}/-/ready", timeout=2)[0] == 200
        wait_until("prometheus /-/ready", prom_ready, 30)
        step(f"prometheus {prom.url} ready")

        def target_up():
            prometheus.check_running()
            targets = prom.api("targets", state="active")["activeTargets"]
            return [t for t in targets if t["labels"].get("job") == JOB and t["health"] == "up"]
        target = wait_until("kvserve target up in /api/v1/targets", target_up, 20, 0.2)[0]
        step(f"target {target['scrapeUrl']} is up")
        # A few scrapes, so that rate() over the samples has at least two points.
        wait_until("3 scrapes of kvserve",
                   lambda: prom.scalar(f'count_over_time(up{{job="{JOB}"}}[1m])') >= 3, 15, 0.2)

        # Scraping the admin listener must not count as API requests.
        if prom.scalar("sum(kvserve_http_requests_total)") != 0:
            raise AssertionError("kvserve_http_requests_total is not 0 before any API request")

        def wait_scraped_after(t: float, what: str) -> None:
            """Until a scrape that started after t is committed: the scrape loop is sequential,
            so once a scrape started 1.5 intervals after t, the one before it (also after t) is
            in the TSDB."""
            def scraped():
                prometheus.check_running()
                mine = [x for x in prom.api("targets", state="active")["activeTargets"]
                        if x["labels"].get("job") == JOB]
                return mine and mine[0]["health"] == "up" and \
                    _rfc3339(mine[0]["lastScrape"]) > t + 1.5 * SCRAPE_SECONDS
            wait_until(what, scraped, 15, 0.2)

        # Warm-up: one request of each kind, so that every labelled series exists before the
        # measured requests (rate() ignores the jump from "no series" to its first value, and
        # the panels below should show real rates and quantiles, not 0 and NaN).
        send_requests(api, len(REQUESTS))
        wait_scraped_after(time.time(), "a scrape after the warm-up requests")
        step(f"warm-up: {len(REQUESTS)} requests, one of each kind, scraped")

        total = "sum(kvserve_http_requests_total)"
        count = "sum(kvserve_http_request_duration_seconds_count)"
        split = "sum by (method, route, status) (kvserve_http_requests_total)"
        labels = ("method", "route", "status")
        before, before_count = prom.scalar(total), prom.scalar(count)
        before_split = prom.by(split, labels)
        step(f"before: {total} = {before:g}, {count} = {before_count:g}")

        sent = send_requests(api, N)
        step(f"sent {N} requests: " + ", ".join(f"{m} {r} {s} x{n}" for (m, r, s), n in sorted(sent.items())))
        wait_scraped_after(time.time(), "a scrape after the requests")
        after, after_count = prom.scalar(total), prom.scalar(count)
        step(f"after: {total} = {after:g} (+{after - before:g}), {count} = {after_count:g} "
             f"(+{after_count - before_count:g})")
        if after - before != N:
            raise AssertionError(f"{total} rose by {after - before:g}, expected exactly {N}")
        if after_count - before_count != N:
            raise AssertionError(f"{count} rose by {after_count - before_count:g}, expected exactly {N}")
        delta = prom.by(split, labels)
        delta.subtract(before_split)
        delta = Counter({k: v for k, v in delta.items() if v})
        if delta != Counter({k: float(v) for k, v in sent.items()}):
            raise AssertionError(
                "kvserve_http_requests_total by (method, route, status) rose by\n  "
                + "\n  ".join(f"{k}: {v:g}" for k, v in sorted(delta.items()))
                + "\nbut the requests sent were\n  "
                + "\n  ".join(f"{k}: {v}" for k, v in sorted(sent.items())))
        step("per (method, route, status) increase matches the requests sent")

        # The requests looked up found and missing keys: the counters behind the lookup and
        # cache panels must have moved (counted since start: the warm-up may have filled the
        # cache, so the measured requests alone need not reach the dataset).
        moved = {
            'kvserve_lookups_total{result="found"}': prom.scalar('sum(kvserve_lookups_total{result="found"})'),
            'kvserve_lookups_total{result="missing"}': prom.scalar('sum(kvserve_lookups_total{result="missing"})'),
            "kvserve_cache_hits_total + kvserve_cache_misses_total":
                prom.scalar("sum(kvserve_cache_hits_total) + sum(kvserve_cache_misses_total)"),
            "kvserve_cache_capacity": prom.scalar("sum(kvserve_cache_capacity)"),
        }
        if not all(moved.values()):
            raise AssertionError("counters still 0 after found and missing lookups: "
                                 + ", ".join(k for k, v in moved.items() if not v))
        step("lookups and cache counters moved: " + ", ".join(f"{k} = {v:g}" for k, v in moved.items()))

        up = prom.query(f'up{{job="{JOB}"}}')
        if len(up) != 1 or up[0]["value"][1] != "1":
            raise AssertionError(f'up{{job="{JOB}"}} is {up}, expected one series equal to 1')
        step(f'up{{job="{JOB}"}} == 1')

        check_variables(prom, queries, {v["name"] for v in dashboard["templating"]["list"]})

        # The SLO panels read recorded series: wait for an evaluation that saw the requests.
        recorded = ("kvserve:slo_availability_errors:ratio_rate30d", "kvserve:slo_latency_slow:ratio_rate30d",
                    "kvserve:slo_availability_errors:ratio_rate1h", "kvserve:slo_latency_slow:ratio_rate1h")
        wait_until("the SLO recording rules evaluated", lambda: all(
            any(r["value"][1] != "NaN" for r in prom.query(name)) for name in recorded), 20, 0.5)
        step("recording rules evaluated: " + ", ".join(recorded))

        failures = []
        for where, original, expr in panel_exprs:
            try:
                result = prom.query(expr)
            except PromQLError as err:
                failures.append(f"{where}: {original}\n      rejected: {err}")
                continue
            if not result:
                failures.append(f"{where}: {original}\n      returned no data (as run: {expr})")
            elif all(r["value"][1] == "NaN" for r in result):
                failures.append(f"{where}: {original}\n      returned only NaN (as run: {expr})")
            else:
                shown = ", ".join(f"{_short(r['metric'])}={r['value'][1]}" for r in result[:3])
                step(f"ok ({len(result)} series) {expr}  [{shown}{', ...' if len(result) > 3 else ''}]")
        for where, original, expr in annotation_exprs:
            try:
                prom.query(expr)  # an annotation is usually empty: it only has to parse
                step(f"ok (parses) {expr}")
            except PromQLError as err:
                failures.append(f"{where}: {original}\n      rejected: {err}")
        if failures:
            raise AssertionError(f"{len(failures)} of {len(panel_exprs) + len(annotation_exprs)} "
                                 "dashboard expressions failed:\n  " + "\n  ".join(failures))
        step(f"all {len(panel_exprs)} panel expressions return data, "
             f"{len(annotation_exprs)} annotation expressions parse")
        kvserve.check_running()
        prometheus.check_running()
    except Exception:
        for proc in (kvserve, prometheus):
            if proc is not None and not proc.log.closed:
                sys.stderr.write(f"--- {proc.name} output (tail)\n{proc.output()}\n")
        raise
    finally:
        for proc in (prometheus, kvserve):
            if proc is not None:
                proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    step(f"done in {time.monotonic() - started:.1f}s")


def _rfc3339(stamp: str) -> float:
    """Seconds since the epoch of Prometheus' lastScrape (RFC 3339 with nanoseconds)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp)
    if not m:
        raise ValueError(f"unexpected timestamp {stamp!r}")
    base = datetime.fromisoformat(m.group(1) + (m.group(3).replace("Z", "+00:00")))
    return base.timestamp() + float("0." + (m.group(2) or "0"))


def _short(metric: dict) -> str:
    shown = {k: v for k, v in metric.items() if k not in ("job", "instance")}
    return "{" + ",".join(f"{k}={v}" for k, v in shown.items()) + "}"


if __name__ == "__main__":
    check(os.path.abspath(sys.argv[1]))
    print("prometheus check passed")
