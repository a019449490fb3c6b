"""deploy/kubernetes/*.yaml and deploy/nginx/bitnet.conf checked against the server itself.

usage: .venv/bin/python -m pytest -q tests/web-py/test_deploy_files.py   (scripts/test.sh)

No cluster here: the YAML is parsed (PyYAML, pinned in scripts/requirements-py.lock) and its
pieces cross-checked (selectors, ports, probes, the HPA target, termination timing), and the
Deployment's own `bitnet serve` arguments are run (model, threads, address and port swapped
for the committed model on 127.0.0.1) to show that they parse, that /health answers, and that
every metric the HPA and the adapter use is one the server exports.
"""
from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import yaml

from webtest_util import MODEL, ROOT, Server, binary

K8S = ROOT / "deploy" / "kubernetes"


def load(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    assert docs, name
    for d in docs:
        assert d.get("apiVersion") and d.get("kind"), (name, d)
        assert d["kind"] == "Kustomization" or d["metadata"]["name"], (name, d)
    return docs


def flag(args: list[str], name: str) -> str:
    vals = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(vals) == 1, (name, args)
    return vals[0]


def test_kubernetes_manifests_fit_together():
    kust = load("kustomization.yaml")[0]
    for r in kust["resources"]:
        assert (K8S / r).exists(), r
    yaml_files = sorted(p.name for p in K8S.glob("*.yaml"))
    assert set(kust["resources"]) | {"kustomization.yaml", "prometheus-adapter.yaml"} == set(yaml_files)

    (dep,) = load("deployment.yaml")
    (svc,) = load("service.yaml")
    (hpa,) = load("hpa.yaml")
    (mon,) = load("servicemonitor.yaml")
    assert dep["kind"] == "Deployment" and svc["kind"] == "Service"
    assert hpa["kind"] == "HorizontalPodAutoscaler" and mon["kind"] == "ServiceMonitor"

    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    assert args[0] == "serve"
    port = int(flag(args, "port"))
    assert flag(args, "host") == "0.0.0.0"
    (cport,) = c["ports"]
    assert cport["containerPort"] == port and cport["name"] == "http"
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert mon["spec"]["endpoints"][0]["port"] == "http"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    # Kubernetes waits preStop + the server's whole shutdown before it kills the pod.
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + int(flag(args, "shutdown-timeout"))
    assert flag(args, "threads") == c["resources"]["requests"]["cpu"]
    assert "cpu" not in c["resources"].get("limits", {})


def hpa_metric_names() -> set[str]:
    (hpa,) = load("hpa.yaml")
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    (adapter,) = load("prometheus-adapter.yaml")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    exposed = {r["name"]["as"] for r in rules}
    assert names <= exposed, (names, exposed)
    series = {re.match(r"(\w+)\{", r["seriesQuery"]).group(1) for r in rules}
    return names | series


def test_deployment_args_run_and_export_the_hpa_metrics():
    (dep,) = load("deployment.yaml")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    local = {"--host": "--host=127.0.0.1", "--port": "--port=0", "--threads": "--threads=2",
             "--model": f"--model={MODEL}"}
    run_args = [local.get(a.split("=", 1)[0], a) for a in args[1:]]
    assert len(set(run_args) & set(local.values())) == len(local)
    s = Server(*run_args, defaults=False)
    try:
        with urllib.request.urlopen(f"{s.url}/health", timeout=10) as r:
            assert r.status == 200
        metrics = s.metrics()
    finally:
        code = s.stop()
    assert code == 0, "".join(s.log)
    names = {re.sub(r"\{.*", "", k) for k in metrics}
    for m in hpa_metric_names():
        assert m in names, f"{m} is not in /metrics ({sorted(names)})"


def test_nginx_limits_match_the_server():
    conf = (ROOT / "deploy" / "nginx" / "bitnet.conf").read_text()
    help_text = subprocess.run([str(binary()), "serve", "--help"], capture_output=True,
                               text=True, timeout=30, check=True).stdout
    body = int(re.search(r"--max-body-bytes.*?\n.*?\[default: (\d+)\]", help_text).group(1))
    (mib,) = re.findall(r"client_max_body_size (\d+)m;", conf)
    assert int(mib) << 20 == body
    assert f"larger than the limit of {body} bytes" in conf
    timeout = int(re.search(r"--timeout <TIMEOUT>\n.*?\[default: (\d+)\]", help_text).group(1))
    assert f"client_body_timeout {timeout}s;" in conf
    # Streams send a keep-alive comment every 10 s: the read timeout must be well above it.
    (read_timeout,) = re.findall(r"proxy_read_timeout (\d+)s;", conf)
    assert int(read_timeout) >= 60
    for directive in ("least_conn;", "proxy_buffering off;", "proxy_cache off;",
                      "proxy_http_version 1.1;", "proxy_request_buffering on;",
                      "proxy_next_upstream error timeout http_503 non_idempotent;"):
        assert directive in conf, directive
    assert len(re.findall(r"server \S+ max_fails=\d+ fail_timeout=\d+s;", conf)) == 2
