"""A container's environment, resolved from its pod spec the way the kubelet does it.

Resolved once, when the container starts: a Secret changed later reaches only containers
that start after the change. Pods and containers are plain dicts, as the API serves them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")

# read(kind, name) -> the object's data, or None when it does not exist
Reader = Callable[[str, str], "dict[str, str] | None"]


class EnvError(RuntimeError):
    """A Secret or ConfigMap the container needs is missing: the kubelet's CreateContainerConfigError."""


def secret_data(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}


def _field(pod: dict, path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    label = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if label:
        return (meta.get(label.group(1)) or {}).get(label.group(2), "")
    return {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }.get(path) or ""


def _source(read: Reader, kind: str, name: str, optional: bool) -> dict[str, str]:
    data = read(kind, name)
    if data is None and not optional:
        raise EnvError(f'{kind} "{name}" not found')
    return data or {}


def _key(read: Reader, kind: str, ref: dict) -> str | None:
    data = _source(read, kind, ref["name"], ref.get("optional", False))
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise EnvError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
    return data[ref["key"]]


def environment(pod: dict, container: dict, read: Reader) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind = "configmap" if "configMapRef" in source else "secret"
        ref = source.get("configMapRef") or source["secretRef"]
        for key, value in _source(read, kind, ref["name"], ref.get("optional", False)).items():
            env[source.get("prefix", "") + key] = value
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = _expand(var.get("value", ""), env)
            continue
        if "secretKeyRef" in source:
            value = _key(read, "secret", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = _key(read, "configmap", source["configMapKeyRef"])
        elif "fieldRef" in source:
            value = _field(pod, source["fieldRef"]["fieldPath"])
        else:
            value = ""  # resourceFieldRef: the lab sets no resource limits on processes
        if value is not None:
            env[var["name"]] = value
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    """`$(VAR)` refers to an earlier variable; `$$` is a literal `$`; unknown references stay."""
    return _REFERENCE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)
