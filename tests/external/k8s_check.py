#!/usr/bin/env python3
"""Static checks of the container image recipe and the Kubernetes manifests (issue 6).

  render      `kubectl kustomize` renders k8s/base and every k8s/overlays/* directory
  schema      every rendered document validates offline and strictly against the
              Kubernetes OpenAPI schemas of KUBE_VERSION (pip `kubernetes-validate`);
              k8s/optional/servicemonitor.yaml (a Prometheus Operator CRD, no schema
              shipped) is checked for the fields the operator needs instead;
              k8s/optional/prometheusrule.yaml (PrometheusRule, a CRD too) is what
              `prometheus/generate.py k8s` makes of prometheus/rules.yml (the same
              groups, rules, labels and annotations), in the namespace `kvserve`
  agreement   the manifests agree with the code: every KVSERVE_* name used under k8s/
              and in the Dockerfile is an env name `kvserve serve --help` lists; probes
              are /readyz and /livez on the container port `admin` (9000); the API port
              `http` is 8000 and KVSERVE_ADDR / KVSERVE_ADMIN_ADDR bind 0.0.0.0 on those
              ports; terminationGracePeriodSeconds exceeds the preStop sleep plus
              KVSERVE_SHUTDOWN_TIMEOUT; the scrape annotations and the ServiceMonitor
              point at 9000 /metrics; KVSERVE_DATA and the JWT secret file lie on a mount
              (or, for the data, in the image); every namespaced object is in `kvserve`.
              Instances (one Deployment each, several in k8s/overlays/sharded): their
              KVSERVE_KEY_PREFIXES partition the 16 hex digits; every Service, PDB and
              topology spread selects the pods of exactly one Deployment, every HPA
              targets one, each Deployment has its own API and admin Service. Ingresses
              (ingress-nginx, use-regex): backends are existing Services and ports that
              reach the API port; the paths, matched as nginx does (`~* "^<path>"`), send
              every hex digit, upper or lower case, in every key form, on
              /v1/keys/{key}, /v1/keys/{key}/value and /get_value/{key}, to exactly one
              Service: the one of the Deployment that owns the digit; each shard's
              /shards/<KVSERVE_KEY_PREFIXES>/v1/keys/batch reaches that shard as
              /v1/keys/batch, the plain /v1/keys/batch reaches none; /openapi.json and
              /docs reach one instance
  settings    the binary starts with each overlay's effective KVSERVE_* settings (the
              listeners moved to loopback ports, the data and secret files replaced by
              local stand-ins) and /readyz answers 200: values parse, combinations are
              accepted. The instances of an overlay run at once; where it has an Ingress,
              every key of the sample data is requested on each per-key route at the
              instance the Ingress paths pick (200 and the value) and at every other one
              (421), each shard's batch path is posted its keys (200) and a foreign key
              (421), and /openapi.json and /docs answer 200 through the routing
  checkov     `checkov --framework kubernetes` on the rendered overlays and
              `checkov --framework dockerfile` on the Dockerfile: zero failed checks.
              Checks that cannot apply are skipped in the manifests themselves
              (`checkov.io/skipN` annotations, `# checkov:skip=` in the Dockerfile), each
              with its reason; the skips are printed.

Needs kubectl on PATH and the packages of tests/external/requirements-k8s.txt
(`kubernetes-validate`, `checkov`, which brings PyYAML). Offline: checkov runs with
--skip-download.

Usage: k8s_check.py KVSERVE_BINARY   (or import it and call check(binary))
Prints one line per step; raises (exits non-zero) on the first failing step.
"""

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
SERVICEMONITOR = K8S / "optional" / "servicemonitor.yaml"
PROMETHEUS_RULE = K8S / "optional" / "prometheusrule.yaml"
RULES = ROOT / "prometheus" / "rules.yml"
SAMPLE = ROOT / "data" / "sample.data"

# The Kubernetes version the manifests target; kubernetes-validate ships its schemas.
KUBE_VERSION = "1.30"
NAMESPACE = "kvserve"
API_PORT, ADMIN_PORT = 8000, 9000
# A pod may take this long to load its file before the startup probe gives up.
MIN_STARTUP_SECONDS = 600
# Kinds that are CustomResourceDefinitions: kubernetes-validate has no schema for them,
# so they are skipped by name in the schema step and checked field by field instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "IngressClass", "CustomResourceDefinition"}
ENV_NAME = re.compile(r"\bKVSERVE_[A-Z0-9_]*[A-Z0-9]\b")
HEX = "0123456789abcdef"
# A key whose first hex digit is filled in: every probe of the routing varies only that.
PROBE_KEY = "{}2cf48f7-d604-4423-b012-4e2329f5117b"
# The forms of a key kvserve parses in a path (docs/API.md), as the client sends
# them; nginx matches the decoded path, so braces appear as `{` `}`.
KEY_FORMS = {
    "hyphenated": lambda k: k,
    "upper case": lambda k: k.upper(),
    "simple": lambda k: k.replace("-", ""),
    "braced": lambda k: "{" + k + "}",
    "urn": lambda k: "urn:uuid:" + k,
}
# The per-key routes: (path template, what the answer holds).
KEY_ROUTES = (("/v1/keys/{}", "json"), ("/v1/keys/{}/value", "text"), ("/get_value/{}", "json"))
BATCH_PATH = "/v1/keys/batch"
# The batch route of one shard through the Ingress (ingress.yaml, docs/KUBERNETES.md "Scaling out").
SHARD_BATCH_PATH = "/shards/{}/v1/keys/batch"


def step(message: str) -> None:
    print(f"k8s-check: {message}", flush=True)


class CheckError(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckError(message)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


def tool(name: str) -> str:
    """`name` from PATH, else next to this Python (a venv's bin/)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    expect(found is not None, f"`{name}` not found on PATH (see tests/external/requirements-k8s.txt)")
    return found


def duration_seconds(text: str) -> float:
    """A humantime duration as kvserve takes it: `30s`, `500ms`, `1m 30s`, `2h`."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip())
    expect(bool(parts) and all(u in units for _, u in parts), f"unreadable duration {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------ render

def render_all() -> dict[str, list[dict]]:
    """{'base': docs, 'overlays/dev': docs, ...} from `kubectl kustomize`."""
    kubectl = tool("kubectl")
    targets = [K8S / "base"] + sorted(
        p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
    rendered = {}
    for target in targets:
        name = str(target.relative_to(K8S))
        result = run([kubectl, "kustomize", str(target)])
        expect(result.returncode == 0, f"kubectl kustomize {name} failed:\n{result.stderr}")
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        expect(bool(docs), f"{name} renders nothing")
        rendered[name] = docs
        kinds = ", ".join(sorted({d["kind"] for d in docs}))
        step(f"render: k8s/{name}: {len(docs)} objects ({kinds})")
    expect(any(n.startswith("overlays/") for n in rendered), "no overlay under k8s/overlays")
    return rendered


# ------------------------------------------------------------------ schema

def validate_schemas(rendered: dict[str, list[dict]]) -> dict:
    import kubernetes_validate

    for name, docs in rendered.items():
        for doc in docs:
            what = f"k8s/{name}: {doc['kind']}/{doc['metadata']['name']}"
            if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
                # A CRD: no schema ships with kubernetes-validate; checked below instead.
                check_servicemonitor(doc, rendered)
                continue
            try:
                used = kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = "/".join(str(p) for p in err.path)
                raise CheckError(f"{what} is invalid for Kubernetes {KUBE_VERSION} at {path}: "
                                 f"{err.message}") from None
            except kubernetes_validate.SchemaNotFoundError as err:
                raise CheckError(f"{what}: no Kubernetes {KUBE_VERSION} schema ({err})") from None
            expect(used == KUBE_VERSION, f"{what}: validated against {used}, not {KUBE_VERSION}")
        step(f"schema: k8s/{name}: {len(docs)} objects valid (Kubernetes {KUBE_VERSION}, strict)")

    expect(SERVICEMONITOR.is_file(), f"missing {SERVICEMONITOR.relative_to(ROOT)}")
    monitors = [d for d in yaml.safe_load_all(SERVICEMONITOR.read_text()) if d]
    expect(len(monitors) == 1, f"{SERVICEMONITOR.name}: want one document, got {len(monitors)}")
    monitor = monitors[0]
    # ServiceMonitor is a Prometheus Operator CRD: skipped by name in the schema step
    # (CRD_KINDS), checked here for what the operator needs.
    check_servicemonitor(monitor, rendered)
    step(f"schema: {SERVICEMONITOR.relative_to(ROOT)}: ServiceMonitor fields complete "
         f"(CRD, skipped by name in schema validation)")
    check_prometheus_rule()
    return monitor


def check_prometheus_rule() -> None:
    """k8s/optional/prometheusrule.yaml carries prometheus/rules.yml unchanged: compared
    parsed (the same groups, rules, labels, annotations) and as the generator's text."""
    where = PROMETHEUS_RULE.relative_to(ROOT)
    expect(PROMETHEUS_RULE.is_file(), f"missing {where}")
    docs = [d for d in yaml.safe_load_all(PROMETHEUS_RULE.read_text()) if d]
    expect(len(docs) == 1, f"{where}: want one document, got {len(docs)}")
    rule = docs[0]
    expect((rule.get("apiVersion"), rule.get("kind")) == ("monitoring.coreos.com/v1", "PrometheusRule"),
           f"{where}: apiVersion/kind must be monitoring.coreos.com/v1 PrometheusRule")
    meta = rule.get("metadata") or {}
    expect(bool(meta.get("name")), f"{where}: metadata.name missing")
    expect(meta.get("namespace") == NAMESPACE, f"{where}: metadata.namespace must be {NAMESPACE}")
    source = yaml.safe_load(RULES.read_text())
    expect((rule.get("spec") or {}).get("groups") == source["groups"],
           f"{where}: spec.groups differ from prometheus/rules.yml; run python3 prometheus/generate.py k8s")
    generated = run([sys.executable, str(ROOT / "prometheus" / "generate.py"), "k8s", "--check"])
    expect(generated.returncode == 0, f"{where}: {generated.stderr.strip()}")
    alerts = sum(1 for g in source["groups"] for r in g["rules"] if "alert" in r)
    step(f"schema: {where}: the {alerts} alerts and the recording rules of prometheus/rules.yml")


def check_servicemonitor(monitor: dict, rendered: dict[str, list[dict]]) -> None:
    where = "ServiceMonitor"
    expect((monitor.get("apiVersion"), monitor.get("kind")) in CRD_KINDS,
           f"{where}: apiVersion/kind must be monitoring.coreos.com/v1 ServiceMonitor")
    meta = monitor.get("metadata") or {}
    expect(bool(meta.get("name")), f"{where}: metadata.name missing")
    expect(meta.get("namespace") == NAMESPACE, f"{where}: metadata.namespace must be {NAMESPACE}")
    spec = monitor.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    expect(bool(selector), f"{where}: spec.selector.matchLabels missing")
    expect(NAMESPACE in ((spec.get("namespaceSelector") or {}).get("matchNames") or [NAMESPACE]),
           f"{where}: namespaceSelector does not include {NAMESPACE}")
    endpoints = spec.get("endpoints") or []
    expect(bool(endpoints), f"{where}: spec.endpoints missing")
    # It must select the admin Service of the base, by labels, and scrape its admin port.
    services = [d for d in rendered["base"] if d["kind"] == "Service"
                and all((d["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
    expect(len(services) == 1, f"{where}: selector {selector} matches {len(services)} Services "
                               f"of k8s/base, want exactly one")
    service = services[0]
    for endpoint in endpoints:
        expect(endpoint.get("path", "/metrics") == "/metrics", f"{where}: path must be /metrics")
        expect(endpoint.get("scheme", "http") == "http", f"{where}: scheme must be http")
        ports = [p for p in service["spec"]["ports"] if p.get("name") == endpoint.get("port")]
        expect(len(ports) == 1, f"{where}: Service {service['metadata']['name']} has no port "
                                f"named {endpoint.get('port')!r}")
        port = ports[0]
        deployment = only(rendered["base"], "Deployment")
        target = resolve_port(container(deployment), port.get("targetPort", port["port"]))
        expect(target == ADMIN_PORT, f"{where}: scrapes container port {target}, not {ADMIN_PORT}")


# ------------------------------------------------------------------ agreement

def help_env_names(binary: str) -> set[str]:
    result = run([binary, "serve", "--help"])
    expect(result.returncode == 0, f"{binary} serve --help failed:\n{result.stderr}")
    names = set(re.findall(r"\[env: (KVSERVE_[A-Z0-9_]+)=", result.stdout))
    expect(len(names) > 10, f"found only {sorted(names)} in `serve --help`")
    return names


def only(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    expect(len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}")
    return found[0]


def kvserve_deployments(docs: list[dict], where: str) -> list[dict]:
    """Every Deployment running a `kvserve` container (one per shard in k8s/overlays/sharded)."""
    found = [d for d in docs if d["kind"] == "Deployment"
             and any(c["name"] == "kvserve" for c in d["spec"]["template"]["spec"]["containers"])]
    expect(bool(found), f"{where}: no Deployment with a `kvserve` container")
    return found


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "kvserve"]
    expect(len(found) == 1, f"Deployment {deployment['metadata']['name']}: no container `kvserve`")
    return found[0]


def resolve_port(ctr: dict, port) -> int:
    """A probe's or Service's port (number or container port name) as a number."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in ctr.get("ports", []) if p.get("name") == port]
    expect(len(named) == 1, f"container port named {port!r} not found")
    return named[0]


def effective_env(docs: list[dict], ctr: dict) -> dict[str, str]:
    """The container's environment: envFrom ConfigMaps, then env (which wins)."""
    env: dict[str, str] = {}
    for source in ctr.get("envFrom", []):
        ref = source.get("configMapRef")
        expect(ref is not None, "only configMapRef envFrom is expected (secrets are files)")
        env.update(only(docs, "ConfigMap", ref["name"]).get("data", {}))
    for var in ctr.get("env", []):
        expect("value" in var, f"env {var['name']}: only literal values are expected")
        env[var["name"]] = var["value"]
    return env


def mount_for(ctr: dict, spec: dict, path: str) -> tuple[dict, dict] | None:
    """(volumeMount, volume) under which `path` lies, if any."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in ctr.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(root):
            return mount, volumes[mount["name"]]
    return None


def pod_labels(deployment: dict) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"].get("labels") or {}


def selected(selector: dict | None, deployments: list[dict]) -> list[str]:
    """Names of the Deployments whose pods a label selector (a plain map: a Service's
    selector, or a matchLabels) selects."""
    if not selector:
        return []
    return [d["metadata"]["name"] for d in deployments
            if all(pod_labels(d).get(k) == v for k, v in selector.items())]


def match_labels(selector: dict, what: str) -> dict:
    expect(not selector.get("matchExpressions"), f"{what}: matchExpressions are not expected")
    return selector.get("matchLabels") or {}


def key_prefixes(env: dict[str, str], where: str) -> frozenset[int]:
    """The first hex digits KVSERVE_KEY_PREFIXES owns, parsed as src/dataset/prefixes.rs
    does: hex digits and ranges (`0-7`, `0-3,a,c-f`); unset means all sixteen."""
    text = env.get("KVSERVE_KEY_PREFIXES", "0-f")
    digits: set[int] = set()
    for part in text.split(","):
        ends = [end.strip() for end in part.split("-", 1)]
        expect(all(len(end) == 1 and end.lower() in HEX for end in ends),
               f"{where}: KVSERVE_KEY_PREFIXES {text!r}: {part!r} is not a hex digit or a range of two")
        low, high = int(ends[0], 16), int(ends[-1], 16)
        expect(low <= high, f"{where}: KVSERVE_KEY_PREFIXES {text!r}: {part!r} runs backwards")
        digits.update(range(low, high + 1))
    return frozenset(digits)


def digits_text(digits) -> str:
    """A set of hex digits the way kvserve prints KVSERVE_KEY_PREFIXES: `0-7`, `0-3,a`."""
    runs: list[list[int]] = []
    for digit in sorted(digits):
        if runs and digit == runs[-1][-1] + 1:
            runs[-1].append(digit)
        else:
            runs.append([digit])
    return ",".join(f"{r[0]:x}" if len(r) == 1 else f"{r[0]:x}-{r[-1]:x}" for r in runs)


class Location:
    """One Ingress path as ingress-nginx configures it with use-regex: `location ~*
    "^<path>"`, a case-insensitive regular expression anchored at the start only."""

    def __init__(self, ingress: str, path: str, service: str, port, rewrite: str | None):
        self.ingress, self.path, self.service, self.port, self.rewrite = ingress, path, service, port, rewrite
        try:
            self.regex = re.compile("^" + path, re.IGNORECASE)
        except re.error as err:
            raise CheckError(f"Ingress {ingress}: path {path!r} is not a regular expression: {err}") from None

    def __str__(self) -> str:
        return f"Ingress {self.ingress} path {self.path!r}"


def ingress_locations(docs: list[dict], where: str) -> list[Location]:
    locations = []
    hosts = set()
    for ingress in (d for d in docs if d["kind"] == "Ingress"):
        name = ingress["metadata"]["name"]
        notes = ingress["metadata"].get("annotations") or {}
        spec = ingress["spec"]
        expect(spec.get("ingressClassName") == "nginx", f"{where}: Ingress {name}: ingressClassName must be nginx")
        # With use-regex ingress-nginx matches every path of the host as a regex (`~*`);
        # the routing model below assumes exactly that.
        expect(notes.get("nginx.ingress.kubernetes.io/use-regex") == "true",
               f"{where}: Ingress {name}: nginx.ingress.kubernetes.io/use-regex must be \"true\"")
        expect(not spec.get("defaultBackend"), f"{where}: Ingress {name}: a defaultBackend would catch unrouted keys")
        rewrite = notes.get("nginx.ingress.kubernetes.io/rewrite-target")
        for rule in spec.get("rules", []):
            # use-regex applies to every path of a host; on host-less rules it would turn
            # every other host-less Ingress of the controller into regexes too.
            expect(bool(rule.get("host")), f"{where}: Ingress {name}: a rule without host")
            hosts.add(rule["host"])
            for path in rule["http"]["paths"]:
                expect(path.get("pathType") == "ImplementationSpecific",
                       f"{where}: Ingress {name}: path {path.get('path')!r} must be pathType "
                       f"ImplementationSpecific (a regex)")
                backend = path["backend"].get("service")
                expect(backend is not None, f"{where}: Ingress {name}: path {path['path']!r} has no Service backend")
                port = backend["port"].get("name", backend["port"].get("number"))
                locations.append(Location(name, path["path"], backend["name"], port, rewrite))
    expect(len(hosts) <= 1, f"{where}: Ingress hosts {sorted(hosts)}: the routing check models one host")
    return locations


def route(locations: list[Location], path: str) -> list[tuple[Location, str]]:
    """Every location `path` matches, with the path the backend then sees (after a
    rewrite-target, whose `$n` are the location's groups)."""
    found = []
    for location in locations:
        match = location.regex.match(path)
        if match:
            to = path
            if location.rewrite is not None:
                to = re.sub(r"\$(\d)", lambda g: match.group(int(g.group(1))) or "", location.rewrite)
            found.append((location, to))
    return found


def route_one(locations: list[Location], path: str, where: str) -> tuple[Location, str]:
    """The one location `path` matches: nginx takes the first matching regex in its own
    order, so two matches would make the routing depend on that order."""
    found = route(locations, path)
    expect(len(found) == 1, f"{where}: {path} matches {len(found)} Ingress paths, want exactly one: "
                            + "; ".join(str(loc) for loc, _ in found))
    return found[0]


def backend_deployment(docs: list[dict], location: Location, where: str) -> str:
    """The Deployment behind an Ingress backend: the Service exists, has the port, selects
    the pods of exactly one kvserve Deployment, and the port reaches its API port."""
    deployments = kvserve_deployments(docs, where)
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == location.service]
    expect(len(services) == 1, f"{where}: {location}: no Service {location.service}")
    service = services[0]
    ports = [p for p in service["spec"]["ports"] if location.port in (p.get("name"), p["port"])]
    expect(len(ports) == 1, f"{where}: {location}: Service {location.service} has no port {location.port!r}")
    names = selected(service["spec"].get("selector"), deployments)
    expect(len(names) == 1, f"{where}: {location}: Service {location.service} selects the pods of {names}")
    deployment = next(d for d in deployments if d["metadata"]["name"] == names[0])
    target = resolve_port(container(deployment), ports[0].get("targetPort", ports[0]["port"]))
    expect(target == API_PORT, f"{where}: {location}: reaches container port {target}, not the API ({API_PORT})")
    return names[0]


def dockerfile_facts() -> dict:
    text = DOCKERFILE.read_text()
    runtime = text.split("\nFROM ")[-1]          # the last stage is the image
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", runtime, re.M)
    in_image: set[str] = set()
    for line in copies:
        *sources, dest = line.split()
        for source in sources:
            if source.startswith("data/"):
                in_image.add(dest.rstrip("/") + "/" + Path(source).name if dest.endswith("/") else dest)
    expose = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", runtime, re.M) for p in line.split()}
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    return {"text": text, "in_image": in_image, "expose": expose, "user": users[-1] if users else None,
            "healthcheck": re.search(r"^HEALTHCHECK\s", text, re.M) is not None}


def check_agreement(binary: str, rendered: dict[str, list[dict]]) -> None:
    known = help_env_names(binary)
    step(f"agreement: `{Path(binary).name} serve --help` lists {len(known)} KVSERVE_* env names")

    # Every KVSERVE_* name written anywhere under k8s/ or in the Dockerfile (source files,
    # so patches and comments count too) and every one rendered.
    used: dict[str, set[str]] = {}
    sources = [p for p in K8S.rglob("*") if p.is_file()] + [DOCKERFILE]
    for path in sources:
        for name in ENV_NAME.findall(path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    for target, docs in rendered.items():
        for doc in docs:
            for name in ENV_NAME.findall(yaml.safe_dump(doc)):
                used.setdefault(name, set()).add(f"k8s/{target} (rendered)")
    unknown = {n: sorted(w) for n, w in used.items() if n not in known}
    expect(not unknown, "KVSERVE_* names that `serve --help` does not list (typos?): "
           + "; ".join(f"{n} in {', '.join(w)}" for n, w in sorted(unknown.items())))
    step(f"agreement: {len(used)} KVSERVE_* names used under k8s/ and in the Dockerfile, all known")

    image = dockerfile_facts()
    expect(image["expose"] == {API_PORT, ADMIN_PORT}, f"Dockerfile EXPOSE {image['expose']}")
    expect(not image["healthcheck"], "Dockerfile has a HEALTHCHECK (Kubernetes probes do that)")
    expect(image["user"] is not None and image["user"].split(":")[0].isdigit()
           and int(image["user"].split(":")[0]) != 0, f"Dockerfile USER {image['user']} is not a numeric non-root uid")
    env_lines = dict(re.findall(r"(KVSERVE_[A-Z0-9_]+)=(\S+)", image["text"]))
    expect(env_lines.get("KVSERVE_ADDR") == f"0.0.0.0:{API_PORT}"
           and env_lines.get("KVSERVE_ADMIN_ADDR") == f"0.0.0.0:{ADMIN_PORT}",
           "Dockerfile ENV must bind 0.0.0.0:8000 and 0.0.0.0:9000")
    expect(env_lines.get("KVSERVE_DATA") in image["in_image"],
           f"Dockerfile KVSERVE_DATA {env_lines.get('KVSERVE_DATA')} is not a file it copies in")
    step(f"agreement: Dockerfile: EXPOSE {API_PORT} {ADMIN_PORT}, USER {image['user']}, "
         f"no HEALTHCHECK, KVSERVE_DATA in the image")

    for target, docs in rendered.items():
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                expect(doc["metadata"].get("namespace") == NAMESPACE,
                       f"k8s/{target}: {doc['kind']}/{doc['metadata']['name']} is not in namespace {NAMESPACE}")
        for deployment in kvserve_deployments(docs, f"k8s/{target}"):
            check_deployment(docs, deployment, f"k8s/{target}", image)
        check_instances(docs, f"k8s/{target}")
        check_ingresses(docs, f"k8s/{target}")


def check_deployment(docs: list[dict], deployment: dict, where: str, image: dict) -> None:
    spec = deployment["spec"]["template"]["spec"]
    ctr = container(deployment)
    env = effective_env(docs, ctr)
    if len(kvserve_deployments(docs, where)) > 1:
        where += f" Deployment/{deployment['metadata']['name']}"

    ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
    expect(ports.get("http") == API_PORT, f"{where}: container port `http` must be {API_PORT}")
    expect(ports.get("admin") == ADMIN_PORT, f"{where}: container port `admin` must be {ADMIN_PORT}")
    expect(env.get("KVSERVE_ADDR") == f"0.0.0.0:{API_PORT}",
           f"{where}: KVSERVE_ADDR is {env.get('KVSERVE_ADDR')!r}, want 0.0.0.0:{API_PORT}")
    expect(env.get("KVSERVE_ADMIN_ADDR") == f"0.0.0.0:{ADMIN_PORT}",
           f"{where}: KVSERVE_ADMIN_ADDR is {env.get('KVSERVE_ADMIN_ADDR')!r}, want 0.0.0.0:{ADMIN_PORT}")

    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/livez")):
        get = (ctr.get(probe) or {}).get("httpGet")
        expect(get is not None, f"{where}: {probe} must be an httpGet")
        expect(get.get("path") == path, f"{where}: {probe} path {get.get('path')}, want {path}")
        expect(get.get("port") == "admin" and resolve_port(ctr, get["port"]) == ADMIN_PORT,
               f"{where}: {probe} must use the container port named `admin` ({ADMIN_PORT})")
    startup = ctr["startupProbe"]
    allowed = startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10)
    expect(allowed >= MIN_STARTUP_SECONDS,
           f"{where}: startupProbe allows {allowed}s to load, want >= {MIN_STARTUP_SECONDS}s")

    shutdown = duration_seconds(env.get("KVSERVE_SHUTDOWN_TIMEOUT", "30s"))
    pre_stop = ((ctr.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    expect(grace > pre_stop + shutdown,
           f"{where}: terminationGracePeriodSeconds {grace} must exceed preStop sleep {pre_stop}s "
           f"+ KVSERVE_SHUTDOWN_TIMEOUT {shutdown:g}s")

    notes = deployment["spec"]["template"]["metadata"].get("annotations", {})
    expect(notes.get("prometheus.io/scrape") == "true", f"{where}: prometheus.io/scrape must be \"true\"")
    expect(notes.get("prometheus.io/port") == str(ADMIN_PORT), f"{where}: prometheus.io/port must be {ADMIN_PORT}")
    expect(notes.get("prometheus.io/path") == "/metrics", f"{where}: prometheus.io/path must be /metrics")

    data = env.get("KVSERVE_DATA")
    expect(data is not None, f"{where}: KVSERVE_DATA unset")
    mounted = mount_for(ctr, spec, data)
    if mounted:
        mount, volume = mounted
        expect(mount.get("readOnly") is True, f"{where}: the data volume must be mounted readOnly")
        claim = volume.get("persistentVolumeClaim")
        if claim:
            expect(claim.get("readOnly") is True, f"{where}: the data PVC must be readOnly")
            only(docs, "PersistentVolumeClaim", claim["claimName"])
    else:
        expect(data in image["in_image"],
               f"{where}: KVSERVE_DATA {data} is neither on a volume nor in the image")
    for name, value in env.items():
        if name.startswith("KVSERVE_JWT_") and name.endswith("_FILE"):
            on = mount_for(ctr, spec, value)
            expect(on is not None and "secret" in on[1],
                   f"{where}: {name} {value} is not on a Secret volume")
            only(docs, "Secret", on[1]["secret"]["secretName"])
            expect(env.get("KVSERVE_ADMIN_INSECURE", "false") == "false",
                   f"{where}: JWT is configured, KVSERVE_ADMIN_INSECURE should be false")

    sc = ctr.get("securityContext", {})
    expect(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
           and sc.get("runAsNonRoot") is True and sc.get("capabilities", {}).get("drop") == ["ALL"],
           f"{where}: container securityContext incomplete")
    expect(spec.get("automountServiceAccountToken") is False, f"{where}: service account token mounted")

    # Its own Services: those that select its pods.
    own = [s for s in docs if s["kind"] == "Service"
           and deployment["metadata"]["name"] in selected(s["spec"].get("selector"), [deployment])]
    api = [s for s in own
           if any(resolve_port(ctr, p.get("targetPort", p["port"])) == API_PORT for p in s["spec"]["ports"])]
    admin = [s for s in own
             if any(resolve_port(ctr, p.get("targetPort", p["port"])) == ADMIN_PORT for p in s["spec"]["ports"])]
    expect(bool(api) and bool(admin),
           f"{where}: want a Service for port {API_PORT} and one for {ADMIN_PORT} that select its pods")

    policy = only(docs, "NetworkPolicy")
    expect(bool(selected(match_labels(policy["spec"]["podSelector"], "NetworkPolicy"), [deployment])),
           f"{where}: the NetworkPolicy does not select its pods")
    rules = {p["port"]: r.get("from", []) for r in policy["spec"]["ingress"] for p in r.get("ports", [])}
    expect(set(rules) == {API_PORT, ADMIN_PORT}, f"{where}: NetworkPolicy ports {sorted(rules)}")
    expect(all((f.get("namespaceSelector") or {}).get("matchLabels") for f in rules[ADMIN_PORT])
           and rules[ADMIN_PORT], f"{where}: port {ADMIN_PORT} must be limited to labelled namespaces")

    step(f"agreement: {where}: probes /readyz,/livez on admin:{ADMIN_PORT}, API {API_PORT}, "
         f"0.0.0.0 binds, grace {grace}s > {pre_stop}s + {shutdown:g}s, scrape {ADMIN_PORT} /metrics, "
         f"data {data} ({'volume' if mounted else 'image'})")


def check_instances(docs: list[dict], where: str) -> None:
    """The kvserve Deployments of one overlay (several in k8s/overlays/sharded): their key
    prefixes partition the 16 hex digits, and what belongs to one instance (Service, PDB,
    HPA, topology spread) reaches that instance alone."""
    deployments = kvserve_deployments(docs, where)
    names = [d["metadata"]["name"] for d in deployments]
    owned = {d["metadata"]["name"]: key_prefixes(effective_env(docs, container(d)), where) for d in deployments}
    for digit in range(16):
        owners = [n for n in names if digit in owned[n]]
        expect(len(owners) == 1, f"{where}: keys starting with {digit:x} are served by {owners or 'no Deployment'} "
                                 f"(KVSERVE_KEY_PREFIXES), want exactly one")
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        mine = selected(match_labels(deployment["spec"]["selector"], f"Deployment {name}"), deployments)
        expect(mine == [name], f"{where}: Deployment {name}: its selector matches the pods of {mine}")
        for spread in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            spread_over = selected(match_labels(spread.get("labelSelector") or {}, f"Deployment {name}"), deployments)
            expect(spread_over == [name], f"{where}: Deployment {name}: a topologySpreadConstraint counts "
                                          f"the pods of {spread_over}, want its own")
    for service in (d for d in docs if d["kind"] == "Service"):
        over = selected(service["spec"].get("selector"), deployments)
        expect(len(over) == 1, f"{where}: Service {service['metadata']['name']} selects the pods of {over}, "
                               f"want exactly one Deployment")
    budgets = {n: 0 for n in names}
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        over = selected(match_labels(pdb["spec"]["selector"], "PodDisruptionBudget"), deployments)
        expect(len(over) == 1, f"{where}: PodDisruptionBudget {pdb['metadata']['name']} selects the pods of "
                               f"{over}, want exactly one Deployment")
        budgets[over[0]] += 1
    scalers = {n: 0 for n in names}
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        expect(ref.get("kind") == "Deployment" and ref.get("name") in names,
               f"{where}: HorizontalPodAutoscaler {hpa['metadata']['name']} targets {ref.get('kind')} "
               f"{ref.get('name')}, not one of {names}")
        scalers[ref["name"]] += 1
    expect(all(n <= 1 for n in budgets.values()), f"{where}: PodDisruptionBudgets per Deployment: {budgets}")
    expect(all(n <= 1 for n in scalers.values()), f"{where}: HPAs per Deployment: {scalers}")
    expect(len(set(budgets.values())) == 1 and len(set(scalers.values())) == 1,
           f"{where}: every instance needs the same: PDBs {budgets}, HPAs {scalers}")
    expect(len(names) == 1 or any(d["kind"] == "Ingress" for d in docs),
           f"{where}: {len(names)} instances with their own key prefixes, but no Ingress routes keys to them")
    shown = ", ".join(f"{n} {digits_text(owned[n])}" for n in names)
    step(f"agreement: {where}: {len(names)} instance(s), KVSERVE_KEY_PREFIXES partition 0-f ({shown}); "
         f"each Service, PDB ({sum(budgets.values())}), HPA ({sum(scalers.values())}) and topology spread "
         f"reaches one instance")


def check_ingresses(docs: list[dict], where: str) -> None:
    """The Ingress paths, matched as ingress-nginx does, send every key to the instance
    that owns its first hex digit, and the routes that are not per key where ingress.yaml
    says (batch per shard, docs to any one instance)."""
    if not any(d["kind"] == "Ingress" for d in docs):
        return
    locations = ingress_locations(docs, where)
    deployments = kvserve_deployments(docs, where)
    owned = {d["metadata"]["name"]: key_prefixes(effective_env(docs, container(d)), where) for d in deployments}
    used: set[int] = set()
    routed: dict[str, set[int]] = {n: set() for n in owned}
    for template, _ in KEY_ROUTES:
        for form, shape in KEY_FORMS.items():
            for digit in HEX:
                path = template.format(shape(PROBE_KEY.format(digit)))
                location, to = route_one(locations, path, where)
                used.add(id(location))
                owner = backend_deployment(docs, location, where)
                expect(int(digit, 16) in owned[owner],
                       f"{where}: {path} ({form}) goes to Service {location.service} via {location}, whose "
                       f"Deployment {owner} serves {digits_text(owned[owner])}, not {digit}")
                expect(to == path, f"{where}: {path} reaches {owner} rewritten to {to}")
                routed[owner].add(int(digit, 16))
    expect(all(routed[n] == owned[n] for n in owned),
           f"{where}: digits routed {routed} differ from the key prefixes {owned}")
    # POST /v1/keys/batch cannot be split by the ingress: never routed as it is, one path
    # per shard instead (docs/KUBERNETES.md "Scaling out").
    found = route(locations, BATCH_PATH)
    expect(not found, f"{where}: {BATCH_PATH} is routed ({'; '.join(str(loc) for loc, _ in found)}); "
                      f"a batch must go to a shard's own path")
    batch = []
    for name, digits in owned.items():
        path = SHARD_BATCH_PATH.format(digits_text(digits))
        location, to = route_one(locations, path, where)
        used.add(id(location))
        owner = backend_deployment(docs, location, where)
        expect(owner == name and to == BATCH_PATH,
               f"{where}: {path} reaches {owner} as {to}, want {name} as {BATCH_PATH}")
        batch.append(path)
    docs_to = []
    for path in ("/openapi.json", "/docs"):
        location, to = route_one(locations, path, where)
        used.add(id(location))
        expect(to == path, f"{where}: {path} is rewritten to {to}")
        docs_to.append(f"{path} -> {backend_deployment(docs, location, where)}")
    unused = [str(loc) for loc in locations if id(loc) not in used]
    expect(not unused, f"{where}: Ingress paths no probe reaches (dead or misspelt?): {'; '.join(unused)}")
    ingresses = ", ".join(sorted({loc.ingress for loc in locations}))
    shards = ", ".join(f"{digits_text(d)} -> {n}" for n, d in routed.items())
    step(f"agreement: {where}: Ingress {ingresses} (nginx, use-regex, {len(locations)} paths, backends reach "
         f"API {API_PORT}): 16 digits x {len(KEY_FORMS)} key forms x {len(KEY_ROUTES)} routes each to exactly "
         f"one instance, its owner ({shards}); {', '.join(batch)} -> {BATCH_PATH} on their shard, plain "
         f"{BATCH_PATH} unrouted; {', '.join(docs_to)}")


# ------------------------------------------------------------------ settings

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


@contextlib.contextmanager
def serving(binary: str, env: dict[str, str], args: list[str], where: str):
    """kvserve running with a Deployment's effective KVSERVE_* settings, the listeners
    moved to loopback ports and the data and secret files replaced by local stand-ins,
    until the block ends: yields (api port, admin port) once /readyz answers 200, then
    sends SIGTERM and expects exit 0."""
    api, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        local = {"KVSERVE_ADDR": f"127.0.0.1:{api}", "KVSERVE_ADMIN_ADDR": f"127.0.0.1:{admin}",
                 "KVSERVE_DATA": str(SAMPLE)}
        for name in env:
            if name.startswith("KVSERVE_JWT_") and name.endswith("_FILE"):
                secret = Path(tmp) / "jwt-secret"
                secret.write_text("k8s-check-secret-not-for-production-use")
                local[name] = str(secret)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("KVSERVE_")}
        child_env.update(env)
        child_env.update(local)
        log = Path(tmp) / "log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([binary, *args], env=child_env, stdout=out, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 30
                while status(f"http://127.0.0.1:{admin}/readyz") != 200:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise CheckError(f"{where}: kvserve did not become ready with its "
                                         f"settings:\n{log.read_text()[-3000:]}")
                    time.sleep(0.05)
                yield api, admin
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=40)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        expect(proc.returncode == 0, f"{where}: kvserve exited {proc.returncode} after SIGTERM")


def check_settings(binary: str, rendered: dict[str, list[dict]]) -> None:
    for target, docs in rendered.items():
        where = f"k8s/{target}"
        deployments = kvserve_deployments(docs, where)
        envs = {d["metadata"]["name"]: effective_env(docs, container(d)) for d in deployments}
        # Every instance of the overlay at once: the routing test needs them all.
        with contextlib.ExitStack() as running:
            ports = {}
            for deployment in deployments:
                name = deployment["metadata"]["name"]
                label = where if len(deployments) == 1 else f"{where} Deployment/{name}"
                ports[name] = running.enter_context(
                    serving(binary, envs[name], container(deployment).get("args", ["serve"]), label))
            routing = check_routing(docs, envs, ports, where) if any(d["kind"] == "Ingress" for d in docs) else None
        for name, env in envs.items():
            label = where if len(deployments) == 1 else f"{where} Deployment/{name}"
            shown = ", ".join(f"{k}={v}" for k, v in sorted(env.items())
                              if k not in ("KVSERVE_ADDR", "KVSERVE_ADMIN_ADDR"))
            step(f"settings: {label}: kvserve ready, then exit 0 on SIGTERM, with {shown} "
                 f"(listeners on loopback, data and secret files replaced by local stand-ins)")
        if routing:
            step(f"settings: {where}: {routing}")


class Client:
    """One keep-alive HTTP/1.1 connection to a local kvserve listener."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, str, bytes]:
        headers = {"content-type": "application/json"} if body is not None else {}
        data = json.dumps(body).encode() if body is not None else None
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()


def sample_records() -> dict[str, str]:
    """The sample data as kvserve reads it (docs/ARCHITECTURE.md section 1): key (lower case) -> value."""
    records = {}
    for line in SAMPLE.read_text(encoding="utf-8").removeprefix("\ufeff").split("\n"):
        line = line.removesuffix("\r")
        if line:
            key, _, value = line.partition(" ")
            records[key.lower()] = value
    return records


def check_routing(docs: list[dict], envs: dict[str, dict[str, str]], ports: dict[str, tuple[int, int]],
                  where: str) -> str:
    """With every instance running on the sample data: each sample key, on each per-key
    route, at the instance the Ingress paths pick answers 200 with its value and at every
    other instance 421; each shard's batch path takes its keys (200) and refuses a foreign
    one (421); /openapi.json and /docs answer through the routing. Returns a summary."""
    expect(not any(k.startswith("KVSERVE_JWT_") for env in envs.values() for k in env),
           f"{where}: the routing test sends no tokens, so it expects the API without JWT auth")
    locations = ingress_locations(docs, where)
    records = sample_records()
    owned = {name: key_prefixes(env, where) for name, env in envs.items()}
    clients = {name: Client(api) for name, (api, _) in ports.items()}
    served = {name: 0 for name in clients}
    requests = 0
    for key, value in records.items():
        for template, shape in KEY_ROUTES:
            # The value route with the key in upper case: routing and lookup ignore case.
            path = template.format(key.upper() if shape == "text" else key)
            location, to = route_one(locations, path, where)
            owner = backend_deployment(docs, location, where)
            code, kind, body = clients[owner].request("GET", to)
            requests += 1
            expect(code == 200, f"{where}: GET {path}, routed to {owner} by {location}: {code} {body[:300]!r}")
            if shape == "text":
                expect(body.decode() == value, f"{where}: GET {path} at {owner}: {body[:300]!r}, want {value!r}")
            else:
                answer = json.loads(body)
                expect(answer == {"key": key, "value": value},
                       f"{where}: GET {path} at {owner}: {answer}, want key {key}, value {value!r}")
            for other, client in clients.items():
                if other != owner:
                    code, kind, body = client.request("GET", to)
                    requests += 1
                    expect(code == 421 and kind.startswith("application/problem+json"),
                           f"{where}: GET {path} at {other}, which does not own it: {code} {kind} "
                           f"{body[:300]!r}, want 421 problem+json")
        served[owner] += 1
    for name, (_, admin) in ports.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/admin/dataset", timeout=5) as resp:
            keys = json.load(resp)["keys"]
        expect(keys == served[name], f"{where}: {name} loaded {keys} keys of the sample, the Ingress "
                                     f"routes {served[name]} to it")

    batches = 0
    for name, digits in owned.items():
        path = SHARD_BATCH_PATH.format(digits_text(digits))
        location, to = route_one(locations, path, where)
        owner = backend_deployment(docs, location, where)
        mine = [k for k in records if int(k[0], 16) in digits]
        for first in range(0, len(mine), 100):
            chunk = mine[first:first + 100]
            code, _, body = clients[owner].request("POST", to, {"keys": chunk})
            batches += 1
            expect(code == 200, f"{where}: POST {path} ({len(chunk)} keys) at {owner}: {code} {body[:300]!r}")
            answer = json.loads(body)
            expect(answer == {"values": {k: records[k] for k in chunk}, "missing": []},
                   f"{where}: POST {path} at {owner}: values or missing differ from the sample")
        foreign = next(k for k in records if int(k[0], 16) not in digits)
        code, kind, body = clients[owner].request("POST", to, {"keys": mine[:1] + [foreign]})
        batches += 1
        expect(code == 421 and kind.startswith("application/problem+json"),
               f"{where}: POST {path} with a key of another shard at {owner}: {code} {body[:300]!r}, want 421")
    for path in ("/openapi.json", "/docs"):
        location, to = route_one(locations, path, where)
        owner = backend_deployment(docs, location, where)
        code, _, body = clients[owner].request("GET", to)
        expect(code == 200, f"{where}: GET {path} at {owner}: {code} {body[:300]!r}")
    shown = ", ".join(f"{n} {served[n]}" for n in served)
    return (f"through the Ingress paths, all {len(records)} sample keys x {len(KEY_ROUTES)} routes answered 200 "
            f"with the value by the instance the paths pick ({shown} keys, as each loaded) and 421 by the "
            f"other{'s' if len(clients) > 2 else ''} ({requests} requests); {batches} batches to the shard "
            f"paths: own keys 200, a foreign key 421; /openapi.json, /docs 200")


# ------------------------------------------------------------------ checkov

def checkov(args: list[str], label: str) -> None:
    exe = tool("checkov")
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE")
    # JSON without --quiet, so that skipped checks (and their reasons) are reported too;
    # the step prints its own compact summary. --skip-download: offline, no Prisma Cloud.
    result = run([exe, *args, "--compact", "--skip-download", "-o", "json"], env=env)
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise CheckError(f"checkov {label}: no JSON report (exit {result.returncode}):\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}") from None
    reports = reports if isinstance(reports, list) else [reports]
    failed, skipped, passed = [], [], 0
    for report in reports:
        if "results" not in report:      # nothing scanned for this framework
            expect(report.get("failed", 0) == 0, f"checkov {label}: {report}")
            continue
        failed += report["results"].get("failed_checks", [])
        skipped += report["results"].get("skipped_checks", [])
        passed += report["summary"].get("passed", 0)
        expect(report["summary"].get("parsing_errors", 0) == 0,
               f"checkov {label}: parsing errors in {report.get('check_type')}")
    expect(passed > 0, f"checkov {label}: nothing was checked")
    if failed:
        lines = [f"  {c['check_id']} {c.get('check_name', '')}: {c.get('resource')} "
                 f"({c.get('file_path')}:{c.get('file_line_range')})" for c in failed]
        raise CheckError(f"checkov {label}: {len(failed)} failed checks:\n" + "\n".join(lines))
    for c in skipped:
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        expect(bool(reason.strip()), f"checkov {label}: {c['check_id']} skipped without a reason")
    step(f"checkov: {label}: {passed} passed, 0 failed, {len(skipped)} skipped")
    for c in skipped:
        reason = c["check_result"]["suppress_comment"]
        step(f"checkov:   skipped {c['check_id']} on {c.get('resource')} ({Path(c.get('file_path', '')).name}): {reason}")


def check_checkov(rendered: dict[str, list[dict]]) -> None:
    with tempfile.TemporaryDirectory(prefix="kvserve-k8s-") as tmp:
        for target, docs in rendered.items():
            if target.startswith("overlays/"):
                (Path(tmp) / f"{Path(target).name}.yaml").write_text(yaml.safe_dump_all(docs))
        checkov(["-d", tmp, "--framework", "kubernetes"], "kubernetes (rendered overlays)")
    checkov(["-f", str(DOCKERFILE), "--framework", "dockerfile"], "Dockerfile")


# ------------------------------------------------------------------ main

def check(binary: str) -> None:
    binary = str(Path(binary).resolve())
    rendered = render_all()
    validate_schemas(rendered)
    check_agreement(binary, rendered)
    check_settings(binary, rendered)
    check_checkov(rendered)
    step("all checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        check(sys.argv[1])
    except CheckError as err:
        print(f"k8s-check: FAILED: {err}", file=sys.stderr)
        sys.exit(1)
