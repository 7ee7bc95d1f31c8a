"""Module 1, platform architecture: the platform's inventory and dependency graph read from the
live cluster, a request traced through it, the golden signals, the api-server's ports, and the
labs' set-ups and checks.

Everything is read from the cluster at the moment it is asked (through `opslab.cluster`), so the
tables and drawings show what runs, not what the repository says should run. Secret values are
never read into a table: a Secret is shown by its name, type and the names of its keys.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from urllib.parse import urlsplit

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import FancyBboxPatch

from opslab import cluster, environments, prometheus, rollouts, waiting
from opslab.checks import configuration
from opslab.checks.core import NotYet, settle

PROMETHEUS = "Prometheus"  # the graph's name for the monitoring system that scrapes the pods
USERS = "users"
PART_OF = "app.kubernetes.io/part-of=mlops-platform"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets


# --- small readers ---------------------------------------------------------------------------------
def _age(created) -> pd.Timedelta | None:
    return (pd.Timestamp.now(tz="UTC") - pd.Timestamp(created)).floor("s") if created else None


def _selector_text(selector: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((selector or {}).items()))


def _workloads(namespace: str) -> list:
    apps = cluster.apps()
    return [*apps.list_namespaced_deployment(namespace).items, *apps.list_namespaced_stateful_set(namespace).items]


def _kind(obj) -> str:
    return type(obj).__name__.removeprefix("V1")  # V1Deployment -> Deployment


def _ready_endpoints(namespace: str) -> dict[str, list[tuple[str, str]]]:
    """Service name -> [(pod, ip)] of its ready endpoints, from the EndpointSlices."""
    found = defaultdict(list)
    for piece in cluster.discovery().list_namespaced_endpoint_slice(namespace).items:
        service = (piece.metadata.labels or {}).get("kubernetes.io/service-name")
        for endpoint in piece.endpoints or []:
            if endpoint.conditions and endpoint.conditions.ready:
                pod = endpoint.target_ref.name if endpoint.target_ref else "?"
                found[service].extend((pod, address) for address in endpoint.addresses)
    return found


# --- the inventory -----------------------------------------------------------------------------------
def nodes() -> pd.DataFrame:
    """A row per node: ready, internal IP, its pod range, kubelet version, allocatable CPU and
    memory, and how many pods run on it now."""
    core = cluster.core()
    running = Counter(p.spec.node_name for p in core.list_pod_for_all_namespaces(
        field_selector="status.phase=Running").items)
    rows = []
    for node in core.list_node().items:
        conditions = {c.type: c.status for c in node.status.conditions or []}
        addresses = {a.type: a.address for a in node.status.addresses or []}
        rows.append({"name": node.metadata.name, "ready": conditions.get("Ready") == "True",
                     "internal_ip": addresses.get("InternalIP"), "pod_cidr": node.spec.pod_cidr,
                     "kubelet": node.status.node_info.kubelet_version if node.status.node_info else None,
                     "cpu": (node.status.allocatable or {}).get("cpu"),
                     "memory": (node.status.allocatable or {}).get("memory"),
                     "running_pods": running.get(node.metadata.name, 0)})
    return pd.DataFrame(rows).sort_values("name", ignore_index=True)


def namespaces() -> pd.DataFrame:
    """A row per namespace: phase, the `environment` label, the Pod Security level it enforces,
    its pods, its age."""
    core = cluster.core()
    pods = Counter(p.metadata.namespace for p in core.list_pod_for_all_namespaces().items)
    rows = [{"name": n.metadata.name, "phase": n.status.phase,
             "environment": (n.metadata.labels or {}).get("environment"),
             "pod_security": (n.metadata.labels or {}).get("pod-security.kubernetes.io/enforce"),
             "pods": pods.get(n.metadata.name, 0), "age": _age(n.metadata.creation_timestamp)}
            for n in core.list_namespace().items]
    return pd.DataFrame(rows).sort_values("name", ignore_index=True)


def workloads(namespace: str) -> pd.DataFrame:
    """A row per Deployment and StatefulSet: ready replicas, images, the selector that claims its
    pods, and the nodes its pods run on."""
    placed = defaultdict(set)
    pods = cluster.core().list_namespaced_pod(namespace).items
    rows = []
    for workload in _workloads(namespace):
        selector = workload.spec.selector.match_labels or {}
        for pod in pods:
            if selector.items() <= (pod.metadata.labels or {}).items():
                placed[workload.metadata.name].add(pod.spec.node_name)
        rows.append({"kind": _kind(workload), "name": workload.metadata.name,
                     "ready": f"{workload.status.ready_replicas or 0}/{workload.spec.replicas}",
                     "images": ", ".join(c.image for c in workload.spec.template.spec.containers),
                     "selector": _selector_text(selector),
                     "nodes": ", ".join(sorted(n for n in placed[workload.metadata.name] if n))})
    return pd.DataFrame(rows).sort_values(["kind", "name"], ignore_index=True)


def services(namespace: str) -> pd.DataFrame:
    """A row per Service: type, cluster IP, ports (`name port->targetPort`), selector, and the
    pods behind it that are ready to receive traffic."""
    ready = _ready_endpoints(namespace)
    rows = []
    for service in cluster.core().list_namespaced_service(namespace).items:
        spec = service.spec
        rows.append({"name": service.metadata.name, "type": spec.type, "cluster_ip": spec.cluster_ip,
                     "ports": ", ".join(f"{p.name or ''} {p.port}->{p.target_port}".strip() for p in spec.ports or []),
                     "selector": _selector_text(spec.selector),
                     "ready_endpoints": len(ready.get(service.metadata.name, [])),
                     "endpoints": ", ".join(f"{pod} ({ip})" for pod, ip in sorted(ready.get(service.metadata.name, [])))})
    return pd.DataFrame(rows).sort_values("name", ignore_index=True)


def ingresses(namespace: str) -> pd.DataFrame:
    """A row per Ingress rule path: class, host, path, the backend Service and port, and the
    Secret holding the TLS certificate for that host."""
    rows = []
    for ingress in cluster.networking().list_namespaced_ingress(namespace).items:
        tls = {host: t.secret_name for t in ingress.spec.tls or [] for host in t.hosts or []}
        for rule in ingress.spec.rules or []:
            for path in (rule.http.paths if rule.http else []):
                backend = path.backend.service
                port = backend.port.number or backend.port.name
                rows.append({"ingress": ingress.metadata.name, "class": ingress.spec.ingress_class_name,
                             "host": rule.host, "path": path.path, "path_type": path.path_type,
                             "backend": f"{backend.name}:{port}", "tls_secret": tls.get(rule.host)})
    return pd.DataFrame(rows)


def configuration_objects(namespace: str) -> pd.DataFrame:
    """A row per ConfigMap and Secret: its kind, name, type and the names of its keys. Values are
    not read into the table (a Secret's never are)."""
    core = cluster.core()
    rows = [{"kind": "ConfigMap", "name": c.metadata.name, "type": "", "keys": ", ".join(sorted(c.data or {}))}
            for c in core.list_namespaced_config_map(namespace).items]
    rows += [{"kind": "Secret", "name": s.metadata.name, "type": s.type, "keys": ", ".join(sorted(s.data or {}))}
             for s in core.list_namespaced_secret(namespace).items]
    return pd.DataFrame(rows).sort_values(["kind", "name"], ignore_index=True)


def configmap_values(namespace: str) -> pd.DataFrame:
    """Every key of every ConfigMap of the platform and its value: configuration, not secrets."""
    rows = [{"configmap": c.metadata.name, "key": key, "value": value}
            for c in cluster.core().list_namespaced_config_map(namespace, label_selector=PART_OF).items
            for key, value in sorted((c.data or {}).items())]
    return pd.DataFrame(rows, columns=["configmap", "key", "value"])


def environment_sources(namespace: str) -> pd.DataFrame:
    """Where each workload's environment comes from: a row per variable with its source (a literal,
    a ConfigMap key, a Secret key, a field of the pod) and its value, except a Secret's."""
    configmaps = {c.metadata.name: c.data or {} for c in cluster.core().list_namespaced_config_map(namespace).items}
    rows = []
    for workload in _workloads(namespace):
        for container in workload.spec.template.spec.containers:
            for variable, source, value in _container_environment(container, configmaps):
                rows.append({"workload": f"{_kind(workload)}/{workload.metadata.name}", "variable": variable,
                             "from": source, "value": value})
    return pd.DataFrame(rows, columns=["workload", "variable", "from", "value"])


def _container_environment(container, configmaps: dict) -> list[tuple[str, str, str | None]]:
    """(variable, source, value) for each variable a container is given; a Secret's value is None."""
    found = []
    for source in container.env_from or []:
        if source.config_map_ref:
            name = source.config_map_ref.name
            found += [(key, f"ConfigMap {name} (envFrom)", value) for key, value in sorted(configmaps.get(name, {}).items())]
        elif source.secret_ref:
            found.append(("(every key)", f"Secret {source.secret_ref.name} (envFrom)", None))
    for variable in container.env or []:
        reference = variable.value_from
        if reference is None:
            found.append((variable.name, "literal", variable.value))
        elif reference.config_map_key_ref:
            ref = reference.config_map_key_ref
            found.append((variable.name, f"ConfigMap {ref.name} key {ref.key}", configmaps.get(ref.name, {}).get(ref.key)))
        elif reference.secret_key_ref:
            ref = reference.secret_key_ref
            found.append((variable.name, f"Secret {ref.name} key {ref.key}", None))
        elif reference.field_ref:
            found.append((variable.name, f"pod field {reference.field_ref.field_path}", None))
        else:
            found.append((variable.name, "resource field", None))
    return found


# --- the dependency graph ------------------------------------------------------------------------------
TRAFFIC, CONFIG, SCRAPE = "traffic", "config", "scrape"


def _service_named(host: str, namespace: str, names: set[str]) -> str | None:
    """The Service of this namespace a host name resolves to: `postgres`, `postgres.<ns>`,
    `postgres.<ns>.svc`, `postgres.<ns>.svc.cluster.local`."""
    parts = (host or "").lower().split(".")
    if parts[0] in names and (len(parts) == 1 or parts[1] == namespace):
        return parts[0]
    return None


def dependency_graph(namespace: str) -> pd.DataFrame:
    """The platform's dependencies as the live objects state them, an edge per row:
    `source`, `target` (as `Kind/name`), `kind` (traffic, config, scrape) and the `evidence`, the
    field that says so.

    - an Ingress routes to the Services its rules name;
    - a Service sends traffic to the workloads whose pods its selector matches (and says how
      many of their pods are ready endpoints);
    - a workload calls a Service when its environment names that Service as a host, literally
      or through a ConfigMap (`MODEL_SERVER_URL=http://model-server:8080`, `DB_HOST=postgres`);
    - a workload reads the ConfigMaps and Secrets its pod template refers to;
    - Prometheus scrapes the workloads whose pods carry `prometheus.io/scrape: "true"`.
    """
    core = cluster.core()
    service_objects = core.list_namespaced_service(namespace).items
    names = {s.metadata.name for s in service_objects}
    ready = _ready_endpoints(namespace)
    configmaps = {c.metadata.name: c.data or {} for c in core.list_namespaced_config_map(namespace).items}
    edges = []

    for ingress in cluster.networking().list_namespaced_ingress(namespace).items:
        for rule in ingress.spec.rules or []:
            for path in (rule.http.paths if rule.http else []):
                backend = path.backend.service
                edges.append((f"Ingress/{ingress.metadata.name}", f"Service/{backend.name}", TRAFFIC,
                              f"https://{rule.host}{path.path} -> port {backend.port.number or backend.port.name}"))

    workloads_ = _workloads(namespace)
    for service in service_objects:
        selector = service.spec.selector or {}
        for workload in workloads_:
            labels = workload.spec.template.metadata.labels or {}
            if selector and selector.items() <= labels.items():
                count = sum(1 for pod, _ in ready.get(service.metadata.name, [])
                            if pod.startswith(workload.metadata.name + "-"))
                edges.append((f"Service/{service.metadata.name}", f"{_kind(workload)}/{workload.metadata.name}",
                              TRAFFIC, f"selector {_selector_text(selector)}; {count} ready endpoint(s)"))

    for workload in workloads_:
        me = f"{_kind(workload)}/{workload.metadata.name}"
        spec = workload.spec.template.spec
        for container in spec.containers:
            for variable, _source, value in _container_environment(container, configmaps):
                host = urlsplit(value).hostname if value and "://" in value else value
                service = _service_named(host, namespace, names) if host else None
                if service:
                    edges.append((me, f"Service/{service}", TRAFFIC, f"{variable}={value}"))
            for reference in container.env_from or []:
                if reference.config_map_ref:
                    edges.append((me, f"ConfigMap/{reference.config_map_ref.name}", CONFIG, "envFrom"))
                if reference.secret_ref:
                    edges.append((me, f"Secret/{reference.secret_ref.name}", CONFIG, "envFrom"))
            for variable in container.env or []:
                ref = variable.value_from
                if ref and ref.config_map_key_ref:
                    edges.append((me, f"ConfigMap/{ref.config_map_key_ref.name}", CONFIG,
                                  f"{variable.name} <- {ref.config_map_key_ref.key}"))
                if ref and ref.secret_key_ref:
                    edges.append((me, f"Secret/{ref.secret_key_ref.name}", CONFIG,
                                  f"{variable.name} <- {ref.secret_key_ref.key}"))
        annotations = workload.spec.template.metadata.annotations or {}
        if annotations.get("prometheus.io/scrape") == "true":
            edges.append((PROMETHEUS, me, SCRAPE,
                          f"GET :{annotations.get('prometheus.io/port')}{annotations.get('prometheus.io/path', '/metrics')}"))

    frame = pd.DataFrame(edges, columns=["source", "target", "kind", "evidence"])
    # One row per pair and kind: several variables naming the same ConfigMap become one edge.
    return (frame.groupby(["source", "target", "kind"], sort=False, as_index=False)
            .agg(evidence=("evidence", "; ".join)))


def _layers(nodes: list[str], edges: pd.DataFrame) -> dict[str, int]:
    """Each node's column: the longest traffic path that reaches it. What nothing sends traffic
    to (users, a headless Service) sits just before what it sends to; configuration objects last.
    Nodes that only scrape (Prometheus) get no column: they are drawn below the rest."""
    traffic = edges[edges.kind == TRAFFIC]
    depth = {n: 0 for n in nodes}
    for _ in range(len(nodes)):  # longest path by relaxation; the traffic graph has no cycles
        changed = False
        for source, target in zip(traffic.source, traffic.target):
            if depth[target] < depth[source] + 1:
                depth[target], changed = depth[source] + 1, True
        if not changed:
            break
    for node in nodes:  # a source of traffic sits just before what it sends to
        targets = list(traffic[traffic.source == node].target)
        if targets and node not in set(traffic.target):
            depth[node] = min(depth[t] for t in targets) - 1
    last = max(depth.values(), default=0) + 1
    in_traffic = set(traffic.source) | set(traffic.target)
    for node in nodes:
        if node.startswith(("ConfigMap/", "Secret/")):
            depth[node] = last
        elif node not in in_traffic and not (edges.target == node).any():
            depth[node] = None  # a scraper
    return depth


COLOURS = {"Ingress": "#f4a261", "Service": "#90be6d", "Deployment": "#74a9cf", "StatefulSet": "#9d8df1",
           "ConfigMap": "#e9e9e9", "Secret": "#f2c4c4", PROMETHEUS: "#ffd166", USERS: "#ffffff"}
EDGE_STYLES = {TRAFFIC: dict(color="#333333", linestyle="-", lw=1.4),
               CONFIG: dict(color="#999999", linestyle="--", lw=0.9),
               SCRAPE: dict(color="#c9a227", linestyle=":", lw=1.2)}


def draw(edges: pd.DataFrame, labels: dict[str, str] | None = None, edge_labels: dict | None = None,
         title: str = "", ax=None, colour: str | None = None):
    """The graph in columns, left to right along the traffic: boxes coloured by kind, solid arrows
    for traffic, dashed for configuration, dotted for Prometheus's scrapes. `labels` replaces a
    node's text (the labelling exercise numbers them); `edge_labels` writes text on edges."""
    nodes = list(dict.fromkeys([*edges.source, *edges.target]))
    column = _layers(nodes, edges)
    by_column = defaultdict(list)
    for node in nodes:
        if column[node] is not None:
            by_column[column[node]].append(node)
    position = {}
    for x in sorted(by_column):  # order each column by where its predecessors are: fewer crossings
        def weight(node):
            ys = [position[s][1] for s in edges[edges.target == node].source if s in position]
            return (sum(ys) / len(ys)) if ys else 0.0
        members = sorted(by_column[x], key=lambda n: (-weight(n), n))
        for i, node in enumerate(members):
            position[node] = (x * 3.0, (len(members) - 1) / 2 - i)
    bottom = min((y for _, y in position.values()), default=0) - 1.3
    for node in nodes:  # scrapers: under the leftmost thing they scrape
        if column[node] is None:
            xs = [position[t][0] for t in edges[edges.source == node].target if t in position]
            position[node] = (min(xs, default=0.0), bottom)
    height = max(len(m) for m in by_column.values()) + 1.3
    if ax is None:
        _, ax = plt.subplots(figsize=(3.0 * len(by_column) + 1, 1.0 * height + 1.5))
    for row in edges.itertuples():
        (x1, y1), (x2, y2) = position[row.source], position[row.target]
        style = EDGE_STYLES[row.kind]
        if x2 > x1:  # configuration bends a little, off the traffic arrows it would hide
            start, end, bend = (x1 + 1.05, y1), (x2 - 1.05, y2), (0.12 if row.kind == CONFIG else 0.0)
        elif x2 == x1:
            start, end, bend = (x1, y1 + (0.3 if y2 > y1 else -0.3)), (x2, y2 + (-0.3 if y2 > y1 else 0.3)), 0.0
        else:
            start, end, bend = (x1 - 1.05, y1), (x2 + 1.05, y2), 0.35
        if column[row.source] is None:  # from below, into the target's bottom edge
            start, end = (x1 + 0.6, y1 + 0.3), (x2, y2 - 0.3)
        ax.annotate("", xy=end, xytext=start,
                    arrowprops=dict(arrowstyle="-|>", color=style["color"], linestyle=style["linestyle"],
                                    lw=style["lw"], shrinkA=2, shrinkB=2, connectionstyle=f"arc3,rad={bend}"))
        text = (edge_labels or {}).get((row.source, row.target))
        if text:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.1, text, fontsize=8, ha="center",
                    color="#444444", bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.9))
    for node, (x, y) in position.items():
        kind = node.split("/")[0]
        ax.add_patch(FancyBboxPatch((x - 1.05, y - 0.3), 2.1, 0.6, boxstyle="round,pad=0.03",
                                    facecolor=colour or COLOURS.get(kind, "#dddddd"), edgecolor="#555555"))
        text = (labels or {}).get(node) or node.replace("/", "\n", 1)
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5 if labels is None else 13,
                fontweight="normal" if labels is None else "bold")
    xs = [p[0] for p in position.values()]
    ys = [p[1] for p in position.values()]
    ax.set_xlim(min(xs) - 1.3, max(xs) + 1.3)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


# --- components: the graph folded into the platform's parts ------------------------------------------
def components(namespace: str) -> pd.DataFrame:
    """The platform's parts and who talks to whom on which port, from the live graph: a Service
    and the workloads behind it become one component named after the workload (`api-server`);
    the Ingress is `ingress`, the monitoring system `prometheus`, the public `users`."""
    edges = dependency_graph(namespace)
    ports = {s.metadata.name: s.spec.ports[0].port for s in cluster.core().list_namespaced_service(namespace).items
             if s.spec.ports}
    behind = defaultdict(list)  # Service -> workloads it selects
    for row in edges[(edges.kind == TRAFFIC) & edges.source.str.startswith("Service/")].itertuples():
        behind[row.source].append(row.target)

    def part(node: str) -> list[str]:
        kind, _, name = node.partition("/")
        if kind == "Ingress":
            return ["ingress"]
        if node == PROMETHEUS:
            return ["prometheus"]
        if kind == "Service":
            return [w.partition("/")[2] for w in behind.get(node, [])]
        return [name]

    public = edges.source.str.startswith("Ingress/").any()
    rows = [{"source": USERS, "target": "ingress", "protocol": "HTTPS"}] if public else []
    for row in edges[edges.kind != CONFIG].itertuples():
        if row.source.startswith("Service/"):
            continue  # a Service and what it selects are one part
        service = row.target.partition("/")[2] if row.target.startswith("Service/") else None
        for source in part(row.source):
            for target in part(row.target):
                protocol = f"HTTP :{ports.get(service)}" if service else row.evidence.split()[1]
                if service == "postgres" or (service and ports.get(service) == 5432):
                    protocol = f"SQL :{ports.get(service)}"
                if row.kind == SCRAPE:
                    protocol = f"scrape {row.evidence.split()[1]}"
                rows.append({"source": source, "target": target, "protocol": protocol})
    return pd.DataFrame(rows).drop_duplicates(ignore_index=True)


def draw_components(parts: pd.DataFrame, numbers: dict[str, int] | None = None, title: str = "", ax=None):
    """The components as a diagram, each edge labelled with its protocol and port; with `numbers`,
    each component is shown by its number instead of its name."""
    kinds = {USERS: USERS, "prometheus": PROMETHEUS}
    node = lambda name: name if name in kinds else f"Deployment/{name}" if name != "ingress" else "Ingress/ingress"
    edges = pd.DataFrame({"source": parts.source.map(node), "target": parts.target.map(node),
                          "kind": [SCRAPE if p.startswith("scrape") else TRAFFIC for p in parts.protocol],
                          "evidence": parts.protocol})
    labels = {node(name): (str(numbers[name]) if numbers and name in numbers else name)
              for name in set(parts.source) | set(parts.target)}
    if numbers:
        labels[USERS] = USERS
    edge_labels = {(s, t): p for s, t, p in zip(edges.source, edges.target, edges.evidence)}
    return draw(edges, labels=labels, edge_labels=edge_labels, title=title, ax=ax,
                colour="#dde7f0" if numbers else None)


def numbered(parts: pd.DataFrame, seed: str) -> pd.DataFrame:
    """The diagram's arrows as a table, each component by its number (the users stay `users`)."""
    numbers = diagram_numbers(parts, seed)
    frame = pd.DataFrame({"source": [numbers.get(s, s) for s in parts.source],
                          "target": [numbers.get(t, t) for t in parts.target], "protocol": parts.protocol})
    return frame.astype({"source": object, "target": object})


def diagram_numbers(parts: pd.DataFrame, seed: str) -> dict[str, int]:
    """A number for every component but the users, shuffled by `seed`: the labelling exercise's
    key."""
    names = sorted((set(parts.source) | set(parts.target)) - {USERS})
    random.Random(f"diagram:{seed}").shuffle(names)
    return {name: number for number, name in enumerate(names, 1)}


ALIASES = {"ingress": {"ingress", "mlops-platform", "gateway", "ingress gateway", "api gateway"},
           "postgres": {"postgres", "postgresql", "postgres-0", "database"},
           "prometheus": {"prometheus", "monitoring"}}


def labels_correct(answer, key: dict[str, int]) -> None:
    """The trainee's `{number: component}` matches the diagram's key, names compared without case
    and with their usual other names (PostgreSQL for postgres, the gateway for the ingress)."""
    if not isinstance(answer, dict):
        raise AssertionError("Set answer_labels to a dict {number: component name}.")
    given = {int(k): str(v).strip().lower() for k, v in answer.items()}
    wrong = [n for name, n in key.items() if given.get(n) not in ALIASES.get(name, {name})]
    if wrong:
        raise AssertionError(f"{len(wrong)} of the {len(key)} boxes are not labelled right.")


# --- the request trace -------------------------------------------------------------------------------
def log_lines(namespace: str, selector: str, request_id: str | None = None, *, since: pd.Timestamp | None = None,
              tail: int = 2000) -> pd.DataFrame:
    """The JSON log lines of the pods that `selector` picks, as a table (pod, ts, level, msg and
    the line's fields): the last `tail` of each pod, or those written since `since`; only those
    about `request_id` when it is given."""
    window = {"tail_lines": tail}
    if since is not None:
        window = {"since_seconds": max(1, int((pd.Timestamp.now(tz="UTC") - since).total_seconds()) + 30)}
    rows = []
    for pod in cluster.core().list_namespaced_pod(namespace, label_selector=selector).items:
        if pod.status.phase != "Running":
            continue
        try:
            text = cluster.core().read_namespaced_pod_log(pod.metadata.name, namespace, **window)
        except cluster.ApiError:
            continue  # a pod that is just starting or going has no log to read yet
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (request_id is None or record.get("request_id") == request_id):
                rows.append({"pod": pod.metadata.name, **record})
    frame = pd.DataFrame(rows)
    return frame.sort_values("ts", ignore_index=True) if not frame.empty else pd.DataFrame(columns=["pod", "ts", "msg"])


def psql(namespace: str, sql: str, pod: str = "postgres-0") -> pd.DataFrame:
    """A query in PostgreSQL as the guide runs them, `kubectl exec postgres-0 -- psql`, as a
    table. The user and database are the pod's own (its POSTGRES_USER and POSTGRES_DB), so no
    name or password is written here."""
    result = cluster.kubectl("exec", pod, "-n", namespace, "--", "sh", "-c",
                             'psql -U "$POSTGRES_USER" "$POSTGRES_DB" --csv -v ON_ERROR_STOP=1 -c "$0"', sql,
                             timeout=30)
    text = result.stdout.strip()
    return pd.read_csv(io.StringIO(text)) if text else pd.DataFrame()


def pod_metrics(namespace: str, pod: str, port: int, prefix: str) -> pd.DataFrame:
    """The samples of a pod's own /metrics whose names start with `prefix`, read through the API
    server's proxy (what Prometheus scrapes, without waiting for a scrape)."""
    text = cluster.core().connect_get_namespaced_pod_proxy_with_path(f"{pod}:{port}", namespace, "metrics")
    rows = []
    for line in text.splitlines():
        if line.startswith(prefix):
            series, _, value = line.rpartition(" ")
            rows.append({"series": series, "value": float(value)})
    return pd.DataFrame(rows, columns=["series", "value"])


# --- the golden signals ------------------------------------------------------------------------------
def golden_signals(namespace: str, window: str = "1m") -> pd.DataFrame:
    """The four golden signals of each HTTP program in `namespace`, from Prometheus, over `window`:
    traffic (prediction requests/s: users' work, not probes or scrapes), errors (their share of
    5xx), latency (their p95, seconds), saturation (the busiest pod's memory and CPU as a share
    of its limit). The PromQL is in `attrs["promql"]`."""
    where = f'namespace="{namespace}", path=~"/predict.*"'
    pods = f'namespace="{namespace}"'
    queries = {
        "traffic_rps": f"sum by (app) (rate(http_requests_total{{{where}}}[{window}]))",
        # No 5xx at all is no series at all: `or 0 * …` makes it a 0 for every program.
        "error_ratio": f'(sum by (app) (rate(http_requests_total{{{where}, status=~"5.."}}[{window}]))'
                       f" or 0 * sum by (app) (rate(http_requests_total{{{where}}}[{window}])))"
                       f" / sum by (app) (rate(http_requests_total{{{where}}}[{window}]))",
        "p95_seconds": "histogram_quantile(0.95, sum by (app, le) "
                       f"(rate(http_request_duration_seconds_bucket{{{where}}}[{window}])))",
        "memory_of_limit": f"max by (app) (process_resident_memory_bytes{{{pods}}}"
                           f" / on (namespace, pod) group_left sum by (namespace, pod) "
                           f'(kube_pod_container_resource_limits{{{pods}, resource="memory"}}))',
        "cpu_of_limit": f"max by (app) (rate(process_cpu_seconds_total{{{pods}}}[{window}])"
                        f" / on (namespace, pod) group_left sum by (namespace, pod) "
                        f'(kube_pod_container_resource_limits{{{pods}, resource="cpu"}}))',
    }
    columns = {}
    for name, promql in queries.items():
        frame = prometheus.query(promql)
        columns[name] = frame.set_index("app")["value"] if "app" in frame else pd.Series(dtype=float)
    table = pd.DataFrame(columns)
    table.attrs["promql"] = queries
    return table.rename_axis("app")


def up_by_job() -> pd.DataFrame:
    """`up` by job: how many targets each scrape job has, and how many answered the last scrape."""
    targets = prometheus.query("count by (job) (up)").set_index("job")["value"]
    answering = prometheus.query("sum by (job) (up)").set_index("job")["value"]
    table = pd.DataFrame({"targets": targets, "up": answering}).astype(int).sort_index()
    table["down"] = table.targets - table.up
    return table


# --- the api-server's hexagonal shape -----------------------------------------------------------------
def callers(namespace: str, workload: str) -> str:
    """Who sends `workload` traffic, from the live graph: `Service api-server <- Ingress/…, …`."""
    edges = dependency_graph(namespace)
    traffic = edges[edges.kind == TRAFFIC]
    services = traffic[(traffic.target == workload) & traffic.source.str.startswith("Service/")].source
    return "; ".join(f"{service.replace('/', ' ')} <- {', '.join(traffic[traffic.target == service].source)}"
                     for service in services)


def api_server_ports(namespace: str) -> pd.DataFrame:
    """The api-server's ports read from its code, and where each is plugged in the live cluster.

    Inbound: the HTTP routes it registers (`service.route(...)` in api_server.py). Outbound: the
    adapters it builds (`Database(...)`, `ModelClient(...)`), the settings they take from the
    environment, and what those settings are in the running Deployment.
    """
    from mlops_platform import api_server

    tree = ast.parse(inspect.getsource(api_server))
    routes = [f"{c.args[0].value} {c.args[1].value}" for c in ast.walk(tree)
              if isinstance(c, ast.Call) and getattr(c.func, "attr", None) == "route" and len(c.args) >= 2
              and all(isinstance(a, ast.Constant) for a in c.args[:2])]
    read = sorted({c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and len(c.args) >= 1
                   and isinstance(c.args[0], ast.Constant) and isinstance(c.args[0].value, str)
                   and getattr(c.func, "attr", getattr(c.func, "id", None)) in ("get", "env_int")
                   and c.args[0].value.isupper()})
    core = cluster.core()
    configmaps = {c.metadata.name: c.data or {} for c in core.list_namespaced_config_map(namespace).items}
    names = {s.metadata.name for s in core.list_namespaced_service(namespace).items}
    deployment = cluster.apps().read_namespaced_deployment("api-server", namespace)
    [container] = [c for c in deployment.spec.template.spec.containers if c.name == "api-server"]
    live = {variable: (source, value) for variable, source, value in _container_environment(container, configmaps)}

    def plugged(*variables):
        return "; ".join(f"{v}={live[v][1]}" if v in live and live[v][1] is not None
                         else f"{v} from {live[v][0]}" if v in live else f"{v} (its default)" for v in variables)

    def peer(variable):
        value = live.get(variable, ("", ""))[1] or ""
        host = urlsplit(value).hostname if "://" in value else value
        service = _service_named(host, namespace, names)
        return f"Service {service}" if service else f"{value or '?'} (no Service of this namespace)"

    database = [v for v in read if v.startswith("DB_")]
    rows = [
        {"port": "HTTP in", "direction": "inbound", "in the code": "service.route: " + ", ".join(routes),
         "adapter": "service.Service (http.server)", "configured by": plugged("LISTEN_ADDRESS", "PORT"),
         "live peer": callers(namespace, "Deployment/api-server")},
        {"port": "model", "direction": "outbound", "in the code": "ModelClient(settings.model_server_url).predict",
         "adapter": "model_client.py (HTTP POST /predict)", "configured by": plugged("MODEL_SERVER_URL"),
         "live peer": peer("MODEL_SERVER_URL")},
        {"port": "database", "direction": "outbound", "in the code": "Database(settings.database).record_predictions",
         "adapter": "database.py (psycopg, SQL)", "configured by": plugged(*database),
         "live peer": peer("DB_HOST")},
    ]
    return pd.DataFrame(rows).set_index("port")


# --- Lab "explore": drift only the live cluster shows ---------------------------------------------------
EXPLORE_REPLICAS = 1  # the manifest says 2: the cluster, not the repository, is the truth


def reset(namespace: str, environment: str = "production") -> None:
    """Put the platform in `namespace` back as the overlay describes it, pods included: a pod
    still running with a setting that was changed since it started (Lab 3 left unfinished) is
    restarted; then wait until everything has rolled out."""
    environments.ensure(namespace, environment, wait=False)
    deployment = cluster.apps().read_namespaced_deployment("api-server", namespace)
    if not rollouts.rolled_out(deployment) and deployment.status.observed_generation == deployment.metadata.generation:
        restart(namespace, "api-server")
    environments.wait_ready(namespace)


def explore_setup(namespace: str) -> None:
    """Scale the model-server away from what its manifest says, as an operator's manual change
    would, and wait until its Service's endpoints follow."""
    cluster.apps().patch_namespaced_deployment_scale("model-server", namespace, {"spec": {"replicas": EXPLORE_REPLICAS}})
    rollouts.wait_rolled_out(namespace, "model-server")
    waiting.wait_until(lambda: len(_ready_endpoints(namespace).get("model-server", [])) == EXPLORE_REPLICAS,
                       "the model-server's endpoints to follow its replicas", timeout=60)


def explore_answers_correct(namespace: str, postgres_node, model_server_endpoints, postgres_service_ip) -> None:
    """The three facts match the live cluster now: postgres-0's node, the model-server Service's
    ready endpoints, the postgres Service's cluster IP."""
    core = cluster.core()
    node = core.read_namespaced_pod("postgres-0", namespace).spec.node_name
    endpoints = len(_ready_endpoints(namespace).get("model-server", []))
    service_ip = core.read_namespaced_service("postgres", namespace).spec.cluster_ip
    wrong = []
    if str(postgres_node).strip().lower() != node.lower():
        wrong.append(f"postgres-0 does not run on {postgres_node!r}: look at the pod's node (`kubectl get pod -o wide`).")
    try:
        counted = int(model_server_endpoints)
    except (TypeError, ValueError):
        counted = None
    if counted != endpoints or isinstance(model_server_endpoints, bool):
        wrong.append(f"The model-server Service does not have {model_server_endpoints!r} ready endpoints: count them "
                     f"in its EndpointSlices, not in the manifest.")
    if str(postgres_service_ip).strip() != service_ip:
        wrong.append(f"{postgres_service_ip!r} is not the postgres Service's cluster IP (`kubectl get service postgres`).")
    if wrong:
        raise AssertionError(" ".join(wrong))


# --- Lab "trace": one request, followed --------------------------------------------------------------
def trace_user(seed: str) -> int:
    """The user id the trainee sends the traced prediction for: not one of the 40 the traffic
    generator uses."""
    return random.Random(f"trace:{seed}").randint(1000, 9999)


def trace_found(namespace: str, request_id, serving_pod, user_id: int, since: pd.Timestamp, timeout: float = 20) -> None:
    """`request_id` is a prediction sent since `since`, answered 200 by api-server pod
    `serving_pod` (its log says so), passed on to a model-server (whose log has the same id), and
    recorded in PostgreSQL as a row for `user_id` at the time the api-server answered it."""
    if not isinstance(request_id, str) or not request_id.strip():
        raise AssertionError("Set answer_request_id to the request id of the prediction you sent.")
    if not isinstance(serving_pod, str) or not serving_pod.strip():
        raise AssertionError("Set answer_serving_pod to the name of the api-server pod that answered it.")
    request_id, serving_pod = request_id.strip(), serving_pod.strip().removeprefix("pod/")
    pods = {p.metadata.name for p in cluster.core().list_namespaced_pod(namespace, label_selector="app=api-server").items}
    if serving_pod not in pods:
        raise AssertionError(f"{serving_pod!r} is not an api-server pod in {namespace}: "
                             f"it has {', '.join(sorted(pods))}.")

    def look():
        lines = log_lines(namespace, "app=api-server", request_id, since=since)
        mine = lines[(lines.pod == serving_pod) & lines.msg.astype(str).str.startswith("POST /predict")]
        if mine.empty:
            if lines.empty:
                raise NotYet(f"No api-server log line has request id {request_id!r}: send a prediction through "
                             f"the Ingress and take the request_id from its answer.")
            raise AssertionError(f"{serving_pod}'s log has no prediction with request id {request_id!r}: "
                                 f"look in every api-server pod's log.")
        line = mine.iloc[-1]
        answered = pd.Timestamp(line.ts)
        if answered < since:
            raise AssertionError(f"Request {request_id} was answered at {answered:%H:%M:%S}, before this lab's "
                                 f"set-up: send a new prediction.")
        if int(line.get("status", 0)) != 200:
            raise AssertionError(f"Request {request_id} was answered {line.get('status')}, not 200: send a valid one.")
        if log_lines(namespace, "app=model-server", request_id, since=since).empty:
            raise NotYet(f"No model-server log line has request id {request_id} yet.")
        rows = psql(namespace, f"SELECT extract(epoch FROM created_at) AS at FROM predictions "
                               f"WHERE user_id = {int(user_id)} ORDER BY id DESC LIMIT 20")
        stamps = pd.to_datetime(rows["at"] if not rows.empty else pd.Series(dtype=float), unit="s", utc=True)
        if not ((stamps - answered).abs() < pd.Timedelta(seconds=3)).any():
            raise AssertionError(f"PostgreSQL holds no prediction for user {user_id} recorded when request "
                                 f"{request_id} was answered: send the prediction with \"user_id\": {user_id}.")
    settle(look, timeout)


# --- Lab "config review": a misconfigured key, planted ------------------------------------------------
@dataclass(frozen=True)
class Plant:
    configmap: str
    key: str
    wrong: str
    effect: str  # what the platform does with it


PLANTS = (
    Plant("platform-config", "DB_NAME", "mlops_production", "not ready"),
    Plant("platform-config", "LOG_LEVEL", "verbose", "runs"),
    Plant("feature-flags", "FEATURE_BATCH_PREDICT", "yes", "crashes"),
    Plant("feature-flags", "FEATURE_RESPONSE_CACHE", "enabled", "crashes"),
    Plant("feature-flags", "FEATURE_MODEL_EXPLANATIONS", "on", "crashes"),
)


def _plant(seed: str) -> Plant:
    return random.Random(f"config-review:{seed}").choice(PLANTS)


def _intended(namespace: str, environment: str, configmap: str) -> dict:
    [obj] = [o for o in environments.render(environment, namespace)
             if o["kind"] == "ConfigMap" and o["metadata"]["name"] == configmap]
    return obj.get("data") or {}


def restart(namespace: str, deployment: str) -> None:
    """What `kubectl rollout restart` does: a new pod template annotation, so a new ReplicaSet."""
    cluster.apps().patch_namespaced_deployment(deployment, namespace, {"spec": {"template": {"metadata": {
        "annotations": {RESTARTED_AT: pd.Timestamp.now(tz="UTC").isoformat()}}}}})


def config_review_setup(namespace: str, seed: str, timeout: float = 120) -> str:
    """Plant the trainee's misconfiguration in a ConfigMap of `namespace` and restart the
    api-server, as the colleague who made the change did; wait until its effect shows. Returns
    what an operator would notice, without naming the key."""
    plant = _plant(seed)
    before = rollouts.revision(namespace, "api-server")["pod_template_hash"]
    cluster.core().patch_namespaced_config_map(plant.configmap, namespace, {"data": {plant.key: plant.wrong}})
    restart(namespace, "api-server")

    def newest_pods():
        try:
            newest = rollouts.revision(namespace, "api-server")["pod_template_hash"]
        except LookupError:
            raise NotYet("the Deployment has not made its new ReplicaSet yet") from None
        if newest == before:
            raise NotYet("the Deployment has not made its new ReplicaSet yet")
        return [p for p in cluster.core().list_namespaced_pod(
            namespace, label_selector=f"app=api-server,pod-template-hash={newest}").items
            if not p.metadata.deletion_timestamp]

    def shows():
        pods = newest_pods()
        statuses = [s for p in pods for s in p.status.container_statuses or []]
        if plant.effect == "runs" and any(s.state.running for s in statuses):
            return "the api-server is restarting; its new pods run, but their logs are not what they were."
        if plant.effect == "crashes" and any(s.restart_count > 0 for s in statuses):
            return "since the restart, a new api-server pod keeps failing and the rollout does not finish."
        if plant.effect == "not ready" and statuses and all(s.state.running for s in statuses):
            started = min(pd.Timestamp(s.state.running.started_at) for s in statuses)
            if pd.Timestamp.now(tz="UTC") - started > pd.Timedelta(seconds=6) and not any(s.ready for s in statuses):
                return "since the restart, a new api-server pod runs but never gets ready, and the rollout does not finish."
        raise NotYet("the change has not shown its effect yet")
    return waiting.eventually(shows, timeout)


def config_review_fixed(namespace: str, seed: str, environment: str = "production", timeout: float = 180) -> None:
    """The planted key holds the overlay's value again, and every workload that reads it has
    rolled out with every pod running on that value."""
    plant = _plant(seed)
    expected = _intended(namespace, environment, plant.configmap)[plant.key]
    configuration.configmap_holds(namespace, plant.configmap, plant.key, expected,
                                  ignore_case=plant.key.startswith("FEATURE_"))
    configuration.pods_run_with(namespace, plant.configmap, plant.key, expected, timeout=timeout,
                                ignore_case=plant.key.startswith("FEATURE_"))


def names_planted_key(answer, seed: str) -> None:
    """The trainee named the planted key: case-insensitive, with or without its ConfigMap."""
    if not isinstance(answer, str) or not answer.strip():
        raise AssertionError("Set answer_misconfigured_key to the name of the key you fixed.")
    last = answer.strip().replace(":", "/").replace(".", "/").split("/")[-1].strip().strip("'\"")
    if last.lower() != _plant(seed).key.lower():
        raise AssertionError(f"{answer!r} is not the key that was misconfigured.")

