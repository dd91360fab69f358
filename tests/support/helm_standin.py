"""A `helm` stand-in for the tests, built on Helm v4's own Go SDK (PyPI's `helm-python-sdk`,
imported as `helm_python`): no registry carries the `helm` binary, but this is Helm's engine.

It implements exactly the `helm template` command line flotilla uses, and prints what
`helm template` prints: the chart's CRDs (with --include-crds), then its manifests in Helm's
install order, then its hooks (test hooks unless --skip-tests), each document headed by
`# Source: <chart>/<path>`. Empty templates, partials and NOTES.txt print nothing.

    helm template NAME CHART [--namespace NS] [--include-crds] [--skip-tests]
                  [--values FILE]... [--kube-version V] [--api-versions GV]...
"""

import re
import sys

# Helm's install order (pkg/release/util/kind_sorter.go); other kinds come after, by name.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]


def usage(message):
    sys.stderr.write(f"Error: {message}\n")
    sys.exit(1)


def parse(argv):
    if len(argv) < 3 or argv[0] != "template":
        usage("this stand-in runs only: helm template NAME CHART [flags]")
    opts = {"name": argv[1], "chart": argv[2], "namespace": "default", "values": [],
            "crds": False, "skip_tests": False, "kube_version": None, "api_versions": []}
    rest = argv[3:]
    while rest:
        flag = rest.pop(0)
        if flag == "--include-crds":
            opts["crds"] = True
        elif flag == "--skip-tests":
            opts["skip_tests"] = True
        elif flag in ("--namespace", "--values", "--kube-version", "--api-versions"):
            if not rest:
                usage(f"flag needs an argument: {flag}")
            value = rest.pop(0)
            if flag == "--namespace":
                opts["namespace"] = value
            elif flag == "--values":
                opts["values"].append(value)
            elif flag == "--kube-version":
                opts["kube_version"] = value
            else:
                opts["api_versions"].append(value)
        else:
            usage(f"unknown flag: {flag}")
    return opts


def documents(text):
    """The YAML documents of a rendered template, without empty ones."""
    docs = re.split(r"^---\s*$", text, flags=re.MULTILINE)
    return [d.strip("\n") for d in docs if d.strip() and not all(
        line.strip().startswith("#") or not line.strip() for line in d.splitlines())]


def field(doc, pattern):
    match = re.search(pattern, doc, flags=re.MULTILINE)
    return match.group(1).strip().strip("'\"") if match else ""


def deep_merge(base, over):
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def main():
    opts = parse(sys.argv[1:])
    try:
        import helm_python
    except ImportError as e:
        usage(f"helm_python is not installed ({e}): pip install helm-python-sdk")
    try:
        chart = helm_python.Chart.load(opts["chart"])
        values = {}
        for path in opts["values"]:
            with open(path, encoding="utf-8") as f:
                deep_merge(values, helm_python.values_from_yaml(f.read()) or {})
        merged = chart.merge_values(values)
        rendered = chart.render(merged, name=opts["name"], namespace=opts["namespace"],
                                is_install=True)
    except helm_python.HelmError as e:
        usage(str(e))
    out = []
    if opts["crds"]:
        crds = chart.crds() if callable(chart.crds) else chart.crds
        for crd in crds:
            for doc in documents(crd["data"]):
                out.append((f"{chart.name}/{crd['name']}", doc))
    manifests, hooks = [], []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in documents(rendered[path]):
            hook = field(doc, r"helm\.sh/hook\"?\s*:\s*(.+)$")
            if hook:
                if opts["skip_tests"] and "test" in hook:
                    continue
                weight = field(doc, r"helm\.sh/hook-weight\"?\s*:\s*(.+)$") or "0"
                hooks.append((int(weight) if weight.lstrip("-").isdigit() else 0, path, doc))
            else:
                kind = field(doc, r"^kind:\s*(\S+)")
                rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
                manifests.append((rank, kind, path, doc))
    out += [(path, doc) for _, _, path, doc in sorted(manifests, key=lambda m: m[:3])]
    out += [(path, doc) for _, path, doc in sorted(hooks, key=lambda h: h[:2])]
    sys.stdout.write("".join(f"---\n# Source: {source}\n{doc}\n" for source, doc in out))


if __name__ == "__main__":
    main()
