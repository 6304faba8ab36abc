#!/usr/bin/env python3
"""Checks the manifests against the gateway's own config (run by .ci/run after the schema check).

For every container running consent-gateway: the --config file comes from a mounted ConfigMap;
its [listen] http and [admin] listen ports are the container's `http` and `admin` ports; the
readiness and liveness probes ask /readyz and /healthz on the admin port; the registry dir is a
ConfigMap mounted as a directory (no subPath, so updates hot-reload); the grace period covers
shutdown_grace plus the preStop pause; the container's memory limit is at least [limits]
memory_budget; every Service targets a port the pods declare. Then the ConfigMaps are written to
a temporary directory and `consent-gateway check` validates them, and must find that the worst
case of max_connections stalled clients fits memory_budget.

Usage: python3 deploy/kubernetes/check.py path/to/consent-gateway
"""
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

HERE = pathlib.Path(__file__).resolve().parent
errors = []


def fail(where, msg):
    errors.append(f"{where}: {msg}")


def seconds(d):
    m = re.fullmatch(r"(\d+)(ms|s|m)", d)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)] if m else None


def size_bytes(s):
    """`256MiB` (gateway.toml) or `320Mi` (Kubernetes quantity) in bytes."""
    m = re.fullmatch(r"(\d+)\s*(B|K|Ki|KiB|M|Mi|MiB|G|Gi|GiB)?", str(s).strip())
    if not m:
        return None
    unit = (m.group(2) or "B")[:1]
    return int(m.group(1)) << {"B": 0, "K": 10, "M": 20, "G": 30}[unit]


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def check_docs(docs, where, binary):
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    pod_ports = set()
    checked = 0
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            pod_ports |= {p["name"] for p in c.get("ports", [])}
            if "consent-gateway" not in c["image"]:
                continue
            checked += 1
            at = f"{where}: {dep['metadata']['name']}/{c['name']}"
            args = c.get("args", [])
            if "--config" not in args:
                fail(at, "args name no --config")
                continue
            config = pathlib.PurePosixPath(args[args.index("--config") + 1])
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            def configmap_at(directory):
                m = mounts.get(str(directory))
                if m is None:
                    return None
                if "subPath" in m:
                    fail(at, f"{directory} is mounted with subPath: ConfigMap updates would not reach it")
                vol = volumes.get(m["name"], {})
                name = vol.get("configMap", {}).get("name")
                if name not in configmaps:
                    fail(at, f"{directory}: volume {m['name']} is not a ConfigMap of this file")
                    return None
                return name
            cm = configmap_at(config.parent)
            if cm is None or config.name not in configmaps.get(cm, {}):
                fail(at, f"--config {config}: no ConfigMap key {config.name} mounted at {config.parent}")
                continue
            gw = tomllib.loads(configmaps[cm][config.name])
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            http = gw.get("listen", {}).get("http")
            admin = gw.get("admin", {}).get("listen")
            if http is None or port_of(http) != ports.get("http"):
                fail(at, f"[listen] http {http} is not the container port 'http' {ports.get('http')}")
            if admin is None or port_of(admin) != ports.get("admin"):
                fail(at, f"[admin] listen {admin} is not the container port 'admin' {ports.get('admin')}")
            elif not admin.startswith("0.0.0.0:") and not admin.startswith("[::]:"):
                fail(at, f"[admin] listen {admin}: the kubelet cannot reach a loopback address")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                g = c.get(probe, {}).get("httpGet", {})
                if g.get("path") != path or g.get("port") not in ("admin", ports.get("admin")):
                    fail(at, f"{probe} must GET {path} on the admin port, not {g}")
            reg = pathlib.PurePosixPath(gw.get("registry", {}).get("dir", "hosts"))
            if not reg.is_absolute():
                reg = config.parent / reg
            reg_cm = configmap_at(reg)
            if reg_cm is None:
                fail(at, f"[registry] dir {reg} is not a mounted ConfigMap")
                continue
            grace = seconds(gw.get("limits", {}).get("shutdown_grace", "30s")) or 30
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pause = int(pre[1]) if pre[:1] == ["sleep"] else 0
            total = spec.get("terminationGracePeriodSeconds", 30)
            if total < grace + pause:
                fail(at, f"terminationGracePeriodSeconds {total} < shutdown_grace {grace} + preStop {pause}")
            budget = size_bytes(gw.get("limits", {}).get("memory_budget", "256MiB"))
            limit = size_bytes(c.get("resources", {}).get("limits", {}).get("memory", "0"))
            if budget is None or limit is None or limit < budget:
                fail(at, f"memory limit {limit} bytes is below [limits] memory_budget {budget} bytes")
            # The ConfigMaps as the pod sees them, validated by the gateway itself.
            with tempfile.TemporaryDirectory() as tmp:
                root = pathlib.Path(tmp)
                (root / "conf").mkdir()
                (root / "hosts").mkdir()
                text = configmaps[cm][config.name]
                text = re.sub(r'(?m)^dir = .*$', 'dir = "../hosts"', text)
                (root / "conf" / config.name).write_text(text)
                for name, body in configmaps[reg_cm].items():
                    (root / "hosts" / name).write_text(body)
                r = subprocess.run([binary, "check", "--config", str(root / "conf" / config.name)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    fail(at, f"consent-gateway check failed:\n{r.stderr}")
                elif "does not fit" in r.stderr:
                    fail(at, f"max_connections stalled clients do not fit memory_budget:\n{r.stderr}")
                else:
                    print(f"{at}: check ok: {r.stdout.strip().splitlines()[0].split(': ', 1)[1]}")
    for svc in (d for d in docs if d["kind"] == "Service"):
        for p in svc["spec"]["ports"]:
            t = p.get("targetPort")
            if isinstance(t, str) and pod_ports and t not in pod_ports:
                fail(f"{where}: service/{svc['metadata']['name']}", f"targetPort {t} is no pod port")
    return checked


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    # Each directory is one example; its files are checked together (ConfigMaps, Deployments
    # and Services of the edge example live in separate files).
    n = 0
    for d in sorted({f.parent for f in HERE.rglob("*.yaml")}):
        docs = [x for f in sorted(d.glob("*.yaml")) for x in yaml.safe_load_all(f.read_text()) if x]
        n += check_docs(docs, d.relative_to(HERE.parent.parent), sys.argv[1])
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        return 1
    print(f"{n} gateway containers consistent with their gateway.toml and registry")
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
