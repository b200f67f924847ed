#!/usr/bin/env python3
"""Derived copies of prometheus/rules.yml, the one source of kvserve's rules.

  generate.py k8s [--runbook-base URL] [--check]
      writes k8s/optional/prometheusrule.yaml, the same groups in a Prometheus
      Operator PrometheusRule; --check only says whether the file is up to date
      (tests/external/k8s_check.py runs it).
  generate.py rules [--runbook-base URL]
      prints rules.yml with the runbook links rewritten, for a Prometheus that loads
      the file directly.
  generate.py shortened [--runbook-base URL]
      prints a copy for a live test against a real Prometheus that scrapes every
      second: every duration (range windows, `for:`, group intervals) divided by 60,
      so a minute becomes a second, and a range window at least 4s so that rate()
      sees two samples (tests/external/prometheus_check.py uses it).

--runbook-base URL: the runbook_url annotations are relative to the repository root
(docs/RUNBOOK.md#kvservedown); with a base they become URL + docs/RUNBOOK.md#...,
e.g. --runbook-base https://git.example.com/ops/kvserve/blob/main/

Needs PyYAML.
"""

import argparse
import copy
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "prometheus" / "rules.yml"
PROMETHEUS_RULE = ROOT / "k8s" / "optional" / "prometheusrule.yaml"

K8S_HEADER = """\
# GENERATED from prometheus/rules.yml by `python3 prometheus/generate.py k8s`: edit that
# file and run the command again (tests/external/k8s_check.py fails when they differ).
#
# Prometheus Operator PrometheusRule with kvserve's recording rules and alerts (needs
# the operator's CRDs, so it is not part of k8s/base). Add it to your overlay next to
# ../../optional/servicemonitor.yaml; the Prometheus that selects it may need the
# `release` label adjusted (its ruleSelector). The runbook links are relative to the
# repository (docs/RUNBOOK.md#...); to make them absolute, regenerate with
# `--runbook-base https://<where your repository is browsable>/` or patch the
# annotations in your overlay.
"""

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION = re.compile(r"^(\d+)([smhdw])$")


def load() -> dict:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


def with_runbook_base(doc: dict, base: str | None) -> dict:
    doc = copy.deepcopy(doc)
    if base:
        for group in doc["groups"]:
            for rule in group["rules"]:
                notes = rule.get("annotations", {})
                if "runbook_url" in notes:
                    notes["runbook_url"] = base.rstrip("/") + "/" + notes["runbook_url"]
    return doc


def shorten_duration(text: str, floor: int) -> str:
    match = DURATION.match(text)
    if not match:
        raise ValueError(f"not a simple duration: {text!r}")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    return f"{max(seconds // 60, floor)}s"


def shortened(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for group in doc["groups"]:
        if "interval" in group:
            group["interval"] = shorten_duration(group["interval"], 1)
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[(\w+)\]", lambda m: f"[{shorten_duration(m.group(1), 4)}]", rule["expr"])
            if "for" in rule:
                rule["for"] = shorten_duration(rule["for"], 0)
    return doc


class Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, text: str):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


Dumper.add_representer(str, _str)


def dump(doc) -> str:
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=200, allow_unicode=True)


def prometheus_rule(doc: dict) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "kvserve",
            "namespace": "kvserve",
            "labels": {
                "app.kubernetes.io/name": "kvserve",
                "app.kubernetes.io/part-of": "kvserve",
                "release": "prometheus",
            },
        },
        "spec": {"groups": doc["groups"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["k8s", "rules", "shortened"])
    parser.add_argument("--runbook-base")
    parser.add_argument("--check", action="store_true", help="k8s: fail if the file is not up to date")
    args = parser.parse_args()
    doc = with_runbook_base(load(), args.runbook_base)
    if args.what == "k8s":
        text = K8S_HEADER + dump(prometheus_rule(doc))
        if args.check:
            current = PROMETHEUS_RULE.read_text(encoding="utf-8") if PROMETHEUS_RULE.exists() else ""
            if current != text:
                print(f"{PROMETHEUS_RULE.relative_to(ROOT)} is not what prometheus/rules.yml generates: "
                      "run python3 prometheus/generate.py k8s", file=sys.stderr)
                return 1
            return 0
        PROMETHEUS_RULE.write_text(text, encoding="utf-8")
        return 0
    sys.stdout.write(dump(shortened(doc) if args.what == "shortened" else doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
