"""The lab's rule controller: the Prometheus Operator's PrometheusRule, for real.

    python -m opslab.lab.rule_sync --kubeconfig PATH --rules-dir DIR --promtool PATH --prometheus-url URL

Every PrometheusRule (monitoring.coreos.com/v1) in every namespace becomes one rule file in
Prometheus's rule folder, `<namespace>--<name>.yaml`, as the Operator writes them; a running
Prometheus takes them in through `POST /-/reload`, so one trainee's rules come and go without a
restart and without touching anybody else's. Each pass:

- Scopes every rule to the object's namespace, as the Operator's `enforcedNamespaceLabel` does:
  each alert and recorded series gets the label `namespace="<namespace>"` (whatever the rule
  said), and every selector in each expression gets the matcher `namespace="<namespace>"`
  (replacing any namespace matcher it had; `promtool promql label-matchers set`, Prometheus's
  own parser). A rule in namespace A can neither read B's series nor raise an alert as B.
- Checks the result with `promtool check rules` (an expression that does not parse is reported
  as promtool words it, against the trainee's own rule). A refused object is not written (a file
  already loaded for an earlier version of it is removed): Prometheus's own words for why are in
  the object's status (condition `Loaded`, reason `InvalidRules`) and in a Warning Event, so
  `kubectl describe prometheusrule NAME -n NS` shows them.
- Removes the files of deleted objects (only files in its own folder: the lab's own rules are
  elsewhere), and reloads Prometheus only when a file changed.
- Confirms in `/api/v1/rules` that Prometheus evaluates the object's groups before it reports
  `Loaded=True` with how many rules.

It polls once a second, as the certificate controller does, and renders an object again only
when its generation changes (promtool runs then, not every pass).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import requests
import yaml
from kubernetes.client.rest import ApiException

from mlops_platform.logs import JsonLog
from opslab import cluster
from opslab.lab import control_loop

GROUP, VERSION, PLURAL, KIND = "monitoring.coreos.com", "v1", "prometheusrules", "PrometheusRule"
NAMESPACE_LABEL = "namespace"  # the Operator's enforcedNamespaceLabel, as the lab sets it
POLL_INTERVAL = 1.0
API_TIMEOUT = 5
PROMTOOL_TIMEOUT = 20
SCOPE_WORKERS = 4
RELOAD_TIMEOUT = 30
COMPONENT = "opslab-rule-sync"
# Fields of the Operator's schema that Prometheus's rule files do not take.
NOT_FOR_PROMETHEUS = ("partial_response_strategy",)

log = JsonLog("rule-sync")


class RuleError(ValueError):
    """An object whose rules Prometheus would refuse; the message says why, in promtool's words."""


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_name(namespace: str, name: str) -> str:
    return f"{namespace}--{name}.yaml"


# --- rendering: the object as a scoped, checked rule file ------------------------------------
@dataclass(frozen=True)
class Rendered:
    file: str
    text: str | None  # None: refused
    problem: str | None
    groups: tuple[str, ...] = ()
    rules: int = 0


_FILE_POSITION = re.compile(r"^(PrometheusRule [^:]+: )(?:\d+:\d+: )+")


class Promtool:
    def __init__(self, path: str):
        self.path = path

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.path, *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT)

    def scope(self, expr: str, namespace: str) -> str:
        """`expr` with `namespace="<namespace>"` on every selector; RuleError when it does not parse."""
        result = self._run("--experimental", "promql", "label-matchers", "set", expr, NAMESPACE_LABEL, namespace)
        if result.returncode != 0:
            raise RuleError((result.stderr or result.stdout).strip().removeprefix("error: "))
        return result.stdout.strip()

    def check(self, text: str, where: str) -> None:
        """`promtool check rules` on `text`; RuleError with its findings, the file named `where`."""
        with tempfile.TemporaryDirectory(prefix="opslab-rules-") as folder:
            path = os.path.join(folder, "rules.yaml")
            Path(path).write_text(text)
            result = self._run("check", "rules", path)
        if result.returncode != 0:
            findings = []
            for line in (result.stdout + result.stderr).splitlines():
                # Positions in the file are the controller's, not the trainee's YAML: left out. A
                # position inside an expression (after "could not parse expression:") stays.
                line = _FILE_POSITION.sub(r"\1", line.strip().replace(path, where))
                if line and not line.startswith("Checking ") and line != "FAILED:" and line not in findings:
                    findings.append(line)
            raise RuleError("; ".join(findings) or f"promtool check rules failed (exit {result.returncode})")


def render(obj: dict, promtool: Promtool) -> Rendered:
    """The object's rule file with every rule scoped to its namespace, checked by promtool."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    where = f"PrometheusRule {namespace}/{name}"
    target = file_name(namespace, name)
    groups = [_labelled(group, namespace) for group in ((obj.get("spec") or {}).get("groups")) or []]
    rules = [(group, number, rule) for group in groups for number, rule in enumerate(group["rules"], 1)]

    def scoped(item: tuple[dict, int, dict]) -> str:
        group, number, rule = item
        try:
            return promtool.scope(rule["expr"], namespace)
        except RuleError as error:  # worded as `promtool check rules` words it
            named = rule.get("alert") or rule.get("record") or ""
            raise RuleError(f'{where}: group "{group.get("name")}", rule {number}, "{named}": '
                            f"could not parse expression: {error}") from None

    try:
        with ThreadPoolExecutor(max_workers=SCOPE_WORKERS) as pool:  # one promtool per expression
            for (_, _, rule), expr in zip(rules, pool.map(scoped, rules)):
                rule["expr"] = expr
        text = _dump(groups)
        promtool.check(text, where)
    except RuleError as error:
        return Rendered(target, None, str(error))
    return Rendered(target, text, None, tuple(group["name"] for group in groups), len(rules))


def _labelled(group: dict, namespace: str) -> dict:
    """A copy of the group for Prometheus, each rule carrying the namespace label."""
    group = {key: value for key, value in group.items() if key not in NOT_FOR_PROMETHEUS}
    rules = []
    for rule in group.get("rules") or ():
        rule = dict(rule)
        rule["expr"] = str(rule.get("expr", ""))
        rule["labels"] = {**(rule.get("labels") or {}), NAMESPACE_LABEL: namespace}
        rules.append(rule)
    return {**group, "rules": rules}


def _dump(groups: list[dict]) -> str:
    return yaml.safe_dump({"groups": groups}, sort_keys=False, allow_unicode=True)


# --- the rule folder ---------------------------------------------------------------------------
def sync_folder(folder: Path, wanted: dict[str, str]) -> list[str]:
    """Make `folder` hold exactly `wanted` (file name -> text) among its *.yaml files; the names
    of the files written or removed."""
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in wanted.items():
        path = folder / name
        if path.exists() and path.read_text() == text:
            continue
        # Written beside it and renamed: Prometheus never reads half a file. The temporary name
        # does not end in .yaml, so Prometheus's glob never sees it either.
        partial = folder / f".{name}.partial"
        partial.write_text(text)
        partial.replace(path)
        changed.append(name)
    for path in folder.glob("*.yaml"):
        if path.name not in wanted:
            path.unlink(missing_ok=True)
            changed.append(path.name)
    return changed


# --- the controller ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    status: bool
    reason: str
    message: str


class RuleSync:
    def __init__(self, api: kubernetes.client.ApiClient, folder: Path, promtool: Promtool, prometheus_url: str):
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.folder = folder
        self.promtool = promtool
        self.prometheus_url = prometheus_url.rstrip("/")
        self._rendered: dict[tuple[str, int], Rendered] = {}  # by uid and generation
        # A new controller cannot know whether the files it finds were ever loaded: once, to be sure.
        self._reload_pending = True
        self._reload_refused: str | None = None  # Prometheus's answer when it refused the last reload
        self._unreachable: str | None = None  # why Prometheus could not be asked

    def reconcile(self) -> None:
        listed = json.loads(self.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, _preload_content=False, _request_timeout=API_TIMEOUT).data)["items"]
        objects = [obj for obj in listed if not obj["metadata"].get("deletionTimestamp")]
        rendered = {obj["metadata"]["uid"]: self._render(obj) for obj in objects}
        current = {(obj["metadata"]["uid"], obj["metadata"].get("generation", 0)) for obj in objects}
        self._rendered = {key: value for key, value in self._rendered.items() if key in current}
        changed = sync_folder(self.folder, {r.file: r.text for r in rendered.values() if r.text is not None})
        if changed:
            log.info("rule files changed", files=changed)
            self._reload_pending = True
        if self._reload_pending:
            self._reload()
        loaded, asked = None, False  # Prometheus is asked once a pass, and only when some object awaits it
        for obj in objects:
            result = rendered[obj["metadata"]["uid"]]
            if result.text is None:
                condition = Condition(False, "InvalidRules", f"not loaded: {result.problem}")
            elif self._reload_refused:
                condition = Condition(False, "ReloadFailed", f"Prometheus refused to reload: {self._reload_refused}")
            elif _is_current(obj, True, "Loaded") and result.file not in changed:
                continue  # loaded, and its file untouched since
            else:
                if not asked:
                    loaded, asked = self._loaded_groups(), True
                condition = self._loaded_condition(obj, result, loaded)
            try:
                self._report(obj, result, condition)
            except ApiException as error:
                if error.status not in (404, 409):  # deleted or changed since listed: next pass
                    raise

    def _render(self, obj: dict) -> Rendered:
        key = (obj["metadata"]["uid"], obj["metadata"].get("generation", 0))
        if key not in self._rendered:
            started = time.monotonic()
            self._rendered[key] = render(obj, self.promtool)
            result, meta = self._rendered[key], obj["metadata"]
            log.info("rendered", rule=f"{meta['namespace']}/{meta['name']}", generation=key[1],
                     valid=result.text is not None, problem=result.problem, rules=result.rules,
                     seconds=round(time.monotonic() - started, 3))
        return self._rendered[key]

    def _reload(self) -> None:
        try:
            response = requests.post(f"{self.prometheus_url}/-/reload", timeout=RELOAD_TIMEOUT)
        except requests.RequestException as error:
            # Not running: it reads the files when it starts. Pending until it answers.
            self._unreachable = f"Prometheus does not answer at {self.prometheus_url} ({type(error).__name__})"
            return
        self._unreachable = None
        if response.ok:
            if self._reload_refused:
                log.info("Prometheus reloads again", after=self._reload_refused)
            self._reload_pending, self._reload_refused = False, None
            log.info("Prometheus reloaded")
            return
        problem = f"{response.status_code}: {response.text.strip()[:500]}"
        if problem != self._reload_refused:
            log.error("Prometheus refused the reload", problem=problem)
        self._reload_refused = problem

    def _loaded_groups(self) -> dict[str, set[str]] | None:
        """The names of the groups Prometheus evaluates, by the rule file they are from; None when
        Prometheus cannot say."""
        if self._reload_pending:
            return None
        try:
            response = requests.get(f"{self.prometheus_url}/api/v1/rules", timeout=API_TIMEOUT)
            response.raise_for_status()
            groups = response.json()["data"]["groups"]
        except (requests.RequestException, ValueError, KeyError) as error:
            self._unreachable = f"Prometheus's rules cannot be read at {self.prometheus_url} ({type(error).__name__})"
            return None
        loaded: dict[str, set[str]] = {}
        for group in groups:
            if Path(group["file"]).parent == self.folder:
                loaded.setdefault(Path(group["file"]).name, set()).add(group["name"])
        return loaded

    def _loaded_condition(self, obj: dict, result: Rendered, loaded: dict[str, set[str]] | None) -> Condition:
        if loaded is None:
            return Condition(False, "Pending", f"written to {result.file}; waiting for Prometheus: {self._unreachable}")
        if not set(result.groups) <= loaded.get(result.file, set()):
            return Condition(False, "Pending", f"written to {result.file}; waiting for Prometheus to load it")
        return Condition(True, "Loaded", f"Prometheus evaluates {result.rules} rule(s) in {len(result.groups)} "
                                         f"group(s) from {result.file}, scoped to namespace "
                                         f"{obj['metadata']['namespace']}")

    def _report(self, obj: dict, result: Rendered, condition: Condition) -> None:
        """The status, if it changed, and an Event when the object is loaded or refused anew."""
        meta, status = obj["metadata"], obj.get("status") or {}
        generation = meta.get("generation")
        if _is_current(obj, condition.status, condition.reason) and _current_condition(obj) == condition:
            return
        previous = next((c for c in status.get("conditions") or () if c.get("type") == "Loaded"), None)
        since = (previous["lastTransitionTime"] if previous and previous.get("status") == str(condition.status)
                 else rfc3339(dt.datetime.now(dt.UTC)))
        new = {"observedGeneration": generation, "ruleFile": result.file if result.text else None,
               "groups": len(result.groups) if result.text else 0, "rules": result.rules,
               "conditions": [{"type": "Loaded", "status": str(condition.status), "reason": condition.reason,
                               "message": condition.message, "lastTransitionTime": since,
                               "observedGeneration": generation}]}
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": new}, _request_timeout=API_TIMEOUT)
        if condition.reason in ("Loaded", "InvalidRules", "ReloadFailed"):
            self._event(obj, condition)
        log.info("status", rule=f"{meta['namespace']}/{meta['name']}", loaded=condition.status,
                 reason=condition.reason, message=condition.message)

    def _event(self, obj: dict, condition: Condition) -> None:
        meta = obj["metadata"]
        stamp = rfc3339(dt.datetime.now(dt.UTC))
        self.core.create_namespaced_event(meta["namespace"], {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": "Normal" if condition.status else "Warning", "reason": condition.reason,
            "message": condition.message, "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }, _request_timeout=API_TIMEOUT)


def _current_condition(obj: dict) -> Condition | None:
    status = obj.get("status") or {}
    found = next((c for c in status.get("conditions") or () if c.get("type") == "Loaded"), None)
    return Condition(found.get("status") == "True", found.get("reason", ""), found.get("message", "")) if found else None


def _is_current(obj: dict, loaded: bool, reason: str) -> bool:
    """The status already says `loaded`/`reason` for the object's present generation."""
    status = obj.get("status") or {}
    current = _current_condition(obj)
    return (status.get("observedGeneration") == obj["metadata"].get("generation") and current is not None
            and current.status == loaded and current.reason == reason)


# --- the process -------------------------------------------------------------------------------
def _explain(error: Exception) -> str | None:
    if isinstance(error, ApiException) and error.status == 404:
        return "the PrometheusRule CRD is not installed (opslab lab up installs it)"
    if isinstance(error, requests.RequestException):
        return f"cannot read Prometheus's rules ({type(error).__name__})"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m opslab.lab.rule_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: KUBECONFIG, else the running lab's)")
    parser.add_argument("--rules-dir", type=Path, required=True, help="the folder of rule files it owns")
    parser.add_argument("--promtool", required=True, help="promtool, to check and scope the rules")
    parser.add_argument("--prometheus-url", required=True, help="Prometheus's URL, route prefix included")
    args = parser.parse_args(argv)
    controller = RuleSync(cluster.api_client(args.kubeconfig), args.rules_dir.resolve(), Promtool(args.promtool),
                          args.prometheus_url)
    log.info("started", poll_interval_s=POLL_INTERVAL, rules_dir=str(args.rules_dir))
    control_loop.run(controller.reconcile, POLL_INTERVAL, log, explain=_explain)


if __name__ == "__main__":
    main()
