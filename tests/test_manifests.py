"""The platform's manifests under infrastructure/, rendered offline with kubectl's own kustomize.

No lab needed. Nothing here prints a rendered Secret: a failing render reports kubectl's stderr
only, and assertions about the Secret compare values without showing them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mlops_platform.releases import CATALOGUE

ROOT = Path(__file__).parents[1]
INFRASTRUCTURE = ROOT / "infrastructure"
KUBECTL = str(Path(sys.executable).with_name("kubectl"))
HOSTS = {"staging": "staging.api.mlops-platform.com", "production": "api.mlops-platform.com"}
REPLICAS = {("Deployment", "api-server"): 3, ("Deployment", "model-server"): 2,
            ("Deployment", "traffic-generator"): 1, ("StatefulSet", "postgres"): 1}  # fmt: skip
IMAGES = {
    "api-server": "registry.local/mlops/api-server:1.4.2",
    "model-server": "registry.local/mlops/model-server:2.1.0",
    "traffic-generator": "registry.local/mlops/traffic-generator:1.0.0",
    "postgres": "registry.local/library/postgres:15",
}
CLUSTER_SCOPED = {"Namespace", "IngressClass", "ClusterIssuer", "CustomResourceDefinition", "ClusterRole"}
SECRET = "mlops-database-credentials"


def render(path: Path) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed: {result.stderr}"
    return list(yaml.safe_load_all(result.stdout))


@dataclass(frozen=True)
class Overlay:
    environment: str
    objects: list[dict]

    @property
    def namespace(self) -> str:
        return f"mlops-{self.environment}"

    def get(self, kind: str, name: str) -> dict:
        [found] = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        return found

    def of_kind(self, *kinds: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] in kinds]

    def workloads(self) -> list[dict]:
        return self.of_kind("Deployment", "StatefulSet")


@pytest.fixture(scope="module", params=sorted(HOSTS))
def overlay(request) -> Overlay:
    return Overlay(request.param, render(INFRASTRUCTURE / request.param))


def containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def port_names(workload: dict) -> set[str]:
    return {port["name"] for container in containers(workload) for port in container.get("ports", [])}


# --- namespaces, workloads and images -----------------------------------------------------------


def test_every_object_is_in_the_environments_namespace(overlay):
    namespace = overlay.get("Namespace", overlay.namespace)
    assert namespace["metadata"]["labels"] | {
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
        "environment": overlay.environment,
    } == namespace["metadata"]["labels"]
    # Cluster-scoped objects belong to infrastructure/cluster, applied once, not to an overlay.
    assert [o["kind"] for o in overlay.of_kind(*CLUSTER_SCOPED)] == ["Namespace"]
    misplaced = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in overlay.objects
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != overlay.namespace
    ]
    assert misplaced == []


def test_workloads_replicas_and_images(overlay):
    assert {(w["kind"], w["metadata"]["name"]): w["spec"]["replicas"] for w in overlay.workloads()} == REPLICAS
    images = {c["name"]: c["image"] for w in overlay.workloads() for c in containers(w)}
    assert images == IMAGES
    for program in ("api-server", "model-server"):
        release = CATALOGUE[images[program].rpartition(":")[2]]
        assert (release.error_ratio, release.leak_bytes_per_second, release.startup_error) == (0, 0, None), release


def test_postgres_is_a_statefulset_behind_a_clusterip_and_a_headless_service(overlay):
    statefulset = overlay.get("StatefulSet", "postgres")
    assert "volumeClaimTemplates" not in statefulset["spec"]  # the lab has no storage provisioner
    governing = overlay.get("Service", statefulset["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    # `nslookup postgres` and DB_HOST=postgres resolve to an ordinary Service.
    assert "clusterIP" not in overlay.get("Service", "postgres")["spec"]
    probe = containers(statefulset)[0]["readinessProbe"]
    assert probe["tcpSocket"]["port"] in port_names(statefulset)  # the lab's runner has no exec probes


def test_serving_deployments_have_probes_metrics_and_a_safe_rollout(overlay):
    serving = [d for d in overlay.of_kind("Deployment") if port_names(d)]
    assert {d["metadata"]["name"] for d in serving} == {"api-server", "model-server"}
    for deployment in serving:
        name = deployment["metadata"]["name"]
        [container] = containers(deployment)
        [port] = container["ports"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == port["name"], (name, probe)
        assert container["readinessProbe"]["periodSeconds"] == 2
        assert container["livenessProbe"]["failureThreshold"] * container["livenessProbe"]["periodSeconds"] >= 25
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port["containerPort"]),
            "prometheus.io/path": "/metrics",
        }, name
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }, name


def test_every_workload_records_history_and_sets_resources_and_security(overlay):
    for workload in overlay.workloads():
        name = workload["metadata"]["name"]
        assert workload["spec"]["revisionHistoryLimit"] == 10, name
        if workload["kind"] == "Deployment":
            assert workload["metadata"]["annotations"]["kubernetes.io/change-cause"], name
        pod = workload["spec"]["template"]["spec"]
        assert (pod["automountServiceAccountToken"], pod["enableServiceLinks"]) == (False, False), name
        for container in pod["containers"]:
            assert set(container["resources"]) == {"requests", "limits"}, name
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name


def test_programs_listen_on_the_pod_address(overlay):
    for workload in overlay.workloads():
        for container in containers(workload):
            if not container.get("ports"):
                continue
            env = {variable["name"]: variable for variable in container["env"]}
            assert env["LISTEN_ADDRESS"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
            assert env["PORT"]["value"] == str(container["ports"][0]["containerPort"])


# --- references between objects -----------------------------------------------------------------


def test_every_configmap_and_secret_reference_resolves(overlay):
    keys = {(o["kind"], o["metadata"]["name"]): set(o.get("data", {})) for o in overlay.of_kind("ConfigMap", "Secret")}
    for workload in overlay.workloads():
        for container in containers(workload):
            for variable in container.get("env", []):
                source = variable.get("valueFrom", {})
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if field in source:
                        reference = source[field]
                        assert reference["key"] in keys.get((kind, reference["name"]), set()), variable["name"]
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in keys


def test_the_api_server_gets_its_settings_and_feature_flags(overlay):
    [container] = containers(overlay.get("Deployment", "api-server"))
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    assert (env["DB_HOST"], env["MODEL_SERVER_URL"]) == ("postgres", "http://model-server:8080")
    assert {"DB_NAME", "DB_USER", "DB_PASSWORD", "LOG_LEVEL"} <= set(env)
    assert "IMAGE" not in env  # the runner sets it from the container's image
    assert container["envFrom"] == [{"configMapRef": {"name": "feature-flags"}}]
    flags = overlay.get("ConfigMap", "feature-flags")["data"]
    assert all(name.startswith("FEATURE_") and value in ("true", "false") for name, value in flags.items())
    assert flags["FEATURE_BATCH_PREDICT"] == {"staging": "true", "production": "false"}[overlay.environment]
    assert overlay.get("ConfigMap", "platform-config")["data"]["DB_NAME"] == "mlops_prod"


def test_services_select_pods_and_ports_that_exist(overlay):
    for service in overlay.of_kind("Service"):
        selector = service["spec"]["selector"].items()
        [workload] = [w for w in overlay.workloads() if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names(workload), service["metadata"]["name"]
    ingress = overlay.get("Ingress", "mlops-platform")
    [rule] = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert (backend["name"], backend["port"]["number"]) == ("api-server", 8000)
    assert rule["host"] == HOSTS[overlay.environment]
    assert ingress["spec"]["tls"] == [{"hosts": [rule["host"]], "secretName": "mlops-platform-tls"}]


def test_roles_are_bound_to_their_groups_and_keep_secrets_from_trainees_and_auditors(overlay):
    bindings = {b["roleRef"]["name"]: b["subjects"] for b in overlay.of_kind("RoleBinding")}
    assert {role: [s["name"] for s in subjects] for role, subjects in bindings.items()} == {
        "trainee": ["opslab:trainees"],
        "operator": ["opslab:operators"],
        "auditor": ["opslab:auditors"],
    }
    for role in overlay.of_kind("Role"):
        secret_rules = [rule for rule in role["rules"] if "secrets" in rule["resources"] or "*" in rule["resources"]]
        if role["metadata"]["name"] == "operator":
            # The one Secret operators rotate, by name: never list, which would read them all.
            [rule] = secret_rules
            assert (rule["resourceNames"], rule["verbs"]) == ([SECRET], ["get", "update", "patch"])
        else:
            assert secret_rules == [], role["metadata"]["name"]


def test_network_policies_deny_by_default_and_open_each_port_on_purpose(overlay):
    policies = {p["metadata"]["name"]: p["spec"] for p in overlay.of_kind("NetworkPolicy")}
    assert policies.pop("default-deny-ingress") == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, spec in policies.items():
        [workload] = [
            w for w in overlay.workloads() if w["spec"]["template"]["metadata"]["labels"]["app"] == name
        ]
        assert spec["podSelector"] == {"matchLabels": {"app": name}}
        assert {port["port"] for rule in spec["ingress"] for port in rule["ports"]} <= port_names(workload)
    assert set(policies) == {"api-server", "model-server", "postgres"}


# --- the database secret and the certificate ----------------------------------------------------


def test_each_environment_has_its_own_database_secret():
    digests = {}
    for environment in HOSTS:
        secret = Overlay(environment, render(INFRASTRUCTURE / environment)).get("Secret", SECRET)
        data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
        assert sorted(data) == ["password", "username"]
        assert data["username"] == "mlops"
        long_enough = len(data["password"]) >= 16  # not in the assert: pytest would show the value
        assert long_enough, f"the {environment} database password is too short"
        digests[environment] = hashlib.sha256(data["password"].encode()).hexdigest()
    assert digests["staging"] != digests["production"], "staging and production share a password"


@pytest.mark.parametrize("environment", sorted(HOSTS))
def test_certificate_file_is_the_guides_and_part_of_the_overlay(environment):
    path = INFRASTRUCTURE / environment / "security" / "certificates.yaml"
    [certificate] = yaml.safe_load_all(path.read_text())  # applyable alone: it names its namespace
    assert (certificate["apiVersion"], certificate["kind"]) == ("cert-manager.io/v1", "Certificate")
    assert certificate["metadata"] == {"name": "mlops-platform-cert", "namespace": f"mlops-{environment}"}
    assert certificate["spec"] == {
        "secretName": "mlops-platform-tls",
        "dnsNames": [HOSTS[environment]],
        "duration": "2160h",
        "renewBefore": "360h",
        "issuerRef": {"name": "lab-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
    }
    rendered = Overlay(environment, render(INFRASTRUCTURE / environment)).get("Certificate", "mlops-platform-cert")
    assert rendered["spec"] == certificate["spec"]
    assert rendered["metadata"]["namespace"] == certificate["metadata"]["namespace"]


def test_cluster_kustomization_holds_what_the_overlays_refer_to():
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(INFRASTRUCTURE / "cluster")}
    assert set(objects) == {
        ("CustomResourceDefinition", "certificates.cert-manager.io"),
        ("CustomResourceDefinition", "clusterissuers.cert-manager.io"),
        ("IngressClass", "lab"),
        ("ClusterIssuer", "lab-ca"),
    }
    assert objects[("ClusterIssuer", "lab-ca")]["spec"] == {"ca": {"secretName": "lab-ca"}}
    certificates = objects[("CustomResourceDefinition", "certificates.cert-manager.io")]["spec"]
    [version] = certificates["versions"]
    assert (certificates["scope"], version["name"], version["subresources"]) == ("Namespaced", "v1", {"status": {}})
    assert [column["name"] for column in version["additionalPrinterColumns"]] == [
        "Ready", "Secret", "Issuer", "Status", "Age",
    ]  # fmt: skip
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"notBefore", "notAfter", "renewalTime", "revision", "conditions"} <= set(status)


# --- files as written ---------------------------------------------------------------------------


def written_files() -> list[Path]:
    return [
        *(path for path in INFRASTRUCTURE.rglob("*") if path.is_file()),
        ROOT / "src" / "mlops_platform" / "postgres.py",
        Path(__file__),
        ROOT / "tests" / "platform" / "test_postgres_entrypoint.py",
    ]


def test_no_wildcard_listen_address_anywhere():
    wildcard = ".".join("0" * 4)  # spelt out, so that this file passes its own test
    assert [str(path) for path in written_files() if wildcard in path.read_text()] == []


# --- the deploy scripts, against a kubectl that records what it is asked --------------------------

FAKE_KUBECTL = """#!/usr/bin/env bash
echo "$*" >>"$FAKE_CALLS"
case "$1" in
    apply)
        while [[ $1 != -k ]]; do shift; done
        "$REAL_KUBECTL" kustomize "$2" | "$PYTHON" -c "$APPLY" ;;
    rollout) [[ "$3" != "$FAIL_ROLLOUT" ]] ;;
esac
"""
# What the fake `kubectl apply -k … -o name` does: print each object's name, and keep the
# Deployments for the test to read (never the Secret).
APPLY = """
import os, sys, yaml
objects = list(yaml.safe_load_all(sys.stdin))
for o in objects:
    group = o["apiVersion"].rpartition("/")[0]
    print(f"{o['kind'].lower()}{'.' + group if group else ''}/{o['metadata']['name']}")
with open(os.environ["FAKE_APPLIED"], "w") as kept:
    yaml.safe_dump_all([o for o in objects if o["kind"] == "Deployment"], kept)
"""


@dataclass
class Deployed:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]
    applied: dict[str, dict]  # Deployments by name


@pytest.fixture
def deploy(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(FAKE_KUBECTL)
    (bin_dir / "kubectl").chmod(0o755)

    def run(environment: str, fail_rollout: str = "", **settings: str) -> Deployed:
        calls, applied = tmp_path / "calls", tmp_path / "applied.yaml"
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "REAL_KUBECTL": KUBECTL,
            "PYTHON": sys.executable,
            "APPLY": APPLY,
            "FAKE_CALLS": str(calls),
            "FAKE_APPLIED": str(applied),
            "FAIL_ROLLOUT": fail_rollout,
            **settings,
        }
        script = INFRASTRUCTURE / environment / f"deploy-{environment}.sh"
        result = subprocess.run(
            [str(script)], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
        rendered = list(yaml.safe_load_all(applied.read_text())) if applied.exists() else []
        return Deployed(
            result.returncode,
            result.stdout,
            result.stderr,
            calls.read_text().splitlines() if calls.exists() else [],
            {o["metadata"]["name"]: o for o in rendered},
        )

    return run


def infrastructure_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(INFRASTRUCTURE.rglob("*")):
        if path.is_file():
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def test_deploy_sets_the_release_asked_for_and_waits_for_every_rollout(deploy):
    before = infrastructure_digest()
    result = deploy("staging", API_SERVER_TAG="1.5.0")
    assert result.returncode == 0, result.stderr
    api, model = result.applied["api-server"], result.applied["model-server"]
    assert containers(api)[0]["image"] == "registry.local/mlops/api-server:1.5.0"
    assert api["metadata"]["annotations"]["kubernetes.io/change-cause"] == "deploy-staging.sh: api-server 1.5.0"
    assert containers(model)[0]["image"] == IMAGES["model-server"]  # not asked for: the overlay's
    assert api["metadata"]["namespace"] == "mlops-staging"
    assert result.calls[0].startswith("apply --server-side --force-conflicts -k ")  # as `opslab lab up` does
    waited = sorted(call for call in result.calls if call.startswith("rollout status"))
    assert waited == [
        f"rollout status {workload} -n mlops-staging --timeout=180s"
        for workload in (
            "deployment.apps/api-server", "deployment.apps/model-server",
            "deployment.apps/traffic-generator", "statefulset.apps/postgres",
        )
    ]  # fmt: skip
    assert "mlops-staging is rolled out" in result.stdout
    assert infrastructure_digest() == before


def test_deploy_fails_when_a_rollout_does_not_finish_and_says_how_to_roll_back(deploy):
    # stdin is not a terminal, so production does not ask for confirmation.
    result = deploy("production", fail_rollout="deployment.apps/api-server")
    assert result.returncode == 1
    api = result.applied["api-server"]  # no release asked for: the overlay's, as committed
    assert containers(api)[0]["image"] == IMAGES["api-server"]
    assert api["metadata"]["annotations"]["kubernetes.io/change-cause"] == "api-server 1.4.2, the current release"
    assert "kubectl rollout undo deployment.apps/api-server -n mlops-production" in result.stderr


def test_deploy_refuses_a_tag_that_is_not_one(deploy):
    result = deploy("staging", API_SERVER_TAG="1.5.0\nimages: []")
    assert result.returncode == 2
    assert "is not an image tag" in result.stderr
    assert result.calls == []
