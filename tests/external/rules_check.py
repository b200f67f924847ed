#!/usr/bin/env python3
"""Static and unit checks of kvserve's alerting rules (prometheus/rules.yml).

  - `promtool check rules` accepts prometheus/rules.yml, the shortened copy the live
    check uses (prometheus/generate.py shortened) and k8s/optional/prometheusrule.yaml's
    groups; `promtool check config` accepts prometheus/prometheus.yml, which loads the
    rules;
  - `promtool test rules prometheus/rules.test.yml` passes, and it has, for every
    alert, a case where it fires and one where it stays silent;
  - every alert has a severity label (critical or warning), a summary, a description
    and a runbook_url docs/RUNBOOK.md#<anchor> whose anchor is a heading of
    docs/RUNBOOK.md (GitHub's anchors: lower case, punctuation dropped, spaces to -);
  - every kvserve_* and process_* metric the rules read is served by a live kvserve's
    /metrics (histograms by their _bucket/_count series).

Usage: rules_check.py KVSERVE_BINARY   (or import it and call check(binary))
"""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import prometheus_check as pc

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "prometheus"
RULES = PROM / "rules.yml"
TESTS = PROM / "rules.test.yml"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
SEVERITIES = {"critical", "warning"}


def run(argv: list[str], **kwargs) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def github_anchor(heading: str) -> str:
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def runbook_anchors() -> set[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def alerts(doc: dict) -> list[dict]:
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def check_annotations(doc: dict) -> None:
    anchors = runbook_anchors()
    problems = []
    for rule in alerts(doc):
        name, notes = rule["alert"], rule.get("annotations", {})
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity label not one of {sorted(SEVERITIES)}")
        for key in ("summary", "description", "runbook_url"):
            if not notes.get(key):
                problems.append(f"{name}: no {key} annotation")
        url = notes.get("runbook_url", "")
        m = re.fullmatch(r"docs/RUNBOOK\.md#([\w-]+)", url)
        if not m:
            problems.append(f"{name}: runbook_url {url!r} is not docs/RUNBOOK.md#<anchor>")
        elif m.group(1) not in anchors:
            problems.append(f"{name}: docs/RUNBOOK.md has no heading with the anchor #{m.group(1)}")
    if problems:
        raise AssertionError("alert annotations:\n  " + "\n  ".join(problems))
    pc.step(f"{len(alerts(doc))} alerts: severity, summary, description, runbook anchor in docs/RUNBOOK.md")


def check_unit_tests(doc: dict) -> None:
    tests = yaml.safe_load(TESTS.read_text(encoding="utf-8"))
    fired, silent = set(), set()
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {r["alert"] for r in alerts(doc)}
    problems = [f"{n}: no test case where it fires" for n in sorted(names - fired)]
    problems += [f"{n}: no test case where it stays silent" for n in sorted(names - silent)]
    problems += [f"{n}: tested but not an alert of rules.yml" for n in sorted((fired | silent) - names)]
    if problems:
        raise AssertionError("prometheus/rules.test.yml:\n  " + "\n  ".join(problems))
    out = run(["promtool", "test", "rules", TESTS.name], cwd=PROM)
    pc.step(f"promtool test rules: {len(tests['tests'])} tests pass; every alert fires and stays silent "
            f"in at least one ({out.strip().splitlines()[-1].strip()})")


def metric_names(doc: dict) -> set[str]:
    names = set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b((?:kvserve|process)_[a-z0-9_]+)", rule["expr"]))
    return names


def check_metrics_served(binary: str, doc: dict) -> None:
    with pc_kvserve(binary) as admin:
        # The request series exist once a request was answered.
        pc.http(f"http://127.0.0.1:{admin.api}/v1/keys/{pc.FOUND}")
        _, body = pc.http(f"http://127.0.0.1:{admin.admin}/metrics")
    served = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", body.decode(), re.M))
    missing = sorted(n for n in metric_names(doc) if n not in served)
    if missing:
        raise AssertionError(f"rules read metrics a live kvserve does not serve: {missing}")
    pc.step(f"the {len(metric_names(doc))} metric names the rules read are all served by kvserve")


class pc_kvserve:
    """A kvserve on free loopback ports (`api`, `admin`), ready."""

    def __init__(self, binary: str):
        self.api, self.admin = pc.free_port(), pc.free_port()
        self.proc = pc.Process("kvserve", [binary, "--data", str(pc.DATA), "--addr", f"127.0.0.1:{self.api}",
                                           "--admin-addr", f"127.0.0.1:{self.admin}"])

    def __enter__(self) -> "pc_kvserve":
        try:
            pc.wait_until("kvserve ready", lambda: pc.http(f"http://127.0.0.1:{self.admin}/readyz")[0] == 200, 30)
        except Exception:
            self.proc.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stop()


def check(binary: str) -> None:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    run(["promtool", "check", "rules", str(RULES)])
    with tempfile.TemporaryDirectory() as tmp:
        short = Path(tmp) / "short.yml"
        short.write_text(run([sys.executable, str(PROM / "generate.py"), "shortened"]))
        run(["promtool", "check", "rules", str(short)])
        k8s = Path(tmp) / "k8s.yml"
        rule = yaml.safe_load((ROOT / "k8s" / "optional" / "prometheusrule.yaml").read_text())
        k8s.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        run(["promtool", "check", "rules", str(k8s)])
    run(["promtool", "check", "config", str(PROM / "prometheus.yml")])
    pc.step("promtool check rules: rules.yml, its shortened copy and the PrometheusRule; "
            "check config: prometheus.yml (loads rules.yml)")
    check_annotations(doc)
    check_metrics_served(binary, doc)
    check_unit_tests(doc)


if __name__ == "__main__":
    check(sys.argv[1])
