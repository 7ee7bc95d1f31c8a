"""The lab's certificate controller: cert-manager's Certificate and CA ClusterIssuer, for real.

    python -m opslab.lab.certificates [--kubeconfig PATH] [--metrics-address 127.0.0.1:9402]

The subset of cert-manager the platform uses: a ClusterIssuer whose `spec.ca.secretName` names a
CA key pair in namespace `cert-manager`, and Certificates (secret name, DNS names, common name,
duration, renew-before, issuer) issued from it as real ECDSA P-256 certificates into
`kubernetes.io/tls` secrets, and renewed. Status, conditions and Events read as cert-manager's do,
so `kubectl describe certificate` teaches what a real cluster shows.

It polls once a second rather than watching: every pass reads what it needs afresh, so it reacts
within a second, needs no cache, and simply carries on when the API server comes back.

As cert-manager does, it exports `certmanager_certificate_expiration_timestamp_seconds` for each
Certificate at `/metrics`, for the certificate-expiry alert.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import kubernetes
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily

from mlops_platform.logs import JsonLog
from opslab import cluster
from opslab.lab import control_loop
from opslab.lab.x509 import KeyPair, common_name, dns_names, is_ca, issue_server_certificate, load_key_pair

GROUP, VERSION = "cert-manager.io", "v1"
# cert-manager's --cluster-resource-namespace: where a ClusterIssuer's secret lives.
CLUSTER_RESOURCE_NAMESPACE = "cert-manager"
LAB_ISSUER = "lab-ca"
DEFAULT_DURATION = dt.timedelta(hours=2160)
POLL_INTERVAL = 1.0
API_TIMEOUT = 5
COMPONENT = "opslab-certificates"
# cert-manager keeps the secret when its Certificate is deleted, and reuses it for a Certificate
# re-created under the same name. The guide's forced renewal (delete, then apply) expects a new
# certificate, so the secret also records which Certificate object it was issued for.
UID_ANNOTATION = "opslab.io/certificate-uid"

log = JsonLog("certificates")


class SpecError(ValueError):
    """A Certificate spec that cannot be issued as written."""


# --- reading the spec ---------------------------------------------------------------------------
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> dt.timedelta:
    """A Go duration as cert-manager's fields take it: `2160h`, `1h30m`, `90s`."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise SpecError(f"{text!r} is not a duration such as 2160h or 1h30m")
    return dt.timedelta(seconds=sum(float(number) * _UNIT[unit] for number, unit in parts))


@dataclass(frozen=True)
class CertificateSpec:
    secret_name: str
    dns_names: tuple[str, ...]
    common_name: str | None
    duration: dt.timedelta
    renew_before: dt.timedelta | None  # None: a third of the certificate's lifetime, as cert-manager
    issuer_name: str
    issuer_kind: str

    @classmethod
    def parse(cls, spec: dict) -> CertificateSpec:
        issuer = spec.get("issuerRef") or {}
        if not spec.get("secretName"):
            raise SpecError("spec.secretName is required")
        if not issuer.get("name"):
            raise SpecError("spec.issuerRef.name is required")
        if not spec.get("dnsNames") and not spec.get("commonName"):
            raise SpecError("at least one of spec.dnsNames and spec.commonName is required")
        duration = parse_duration(spec["duration"]) if spec.get("duration") else DEFAULT_DURATION
        renew_before = parse_duration(spec["renewBefore"]) if spec.get("renewBefore") else None
        if duration <= dt.timedelta(0) or renew_before is not None and not dt.timedelta(0) < renew_before < duration:
            raise SpecError("spec.duration must be positive and spec.renewBefore shorter than it")
        return cls(spec["secretName"], tuple(spec.get("dnsNames") or ()), spec.get("commonName"), duration,
                   renew_before, issuer["name"], issuer.get("kind", "Issuer"))


def renewal_time(issued: KeyPair, spec: CertificateSpec) -> dt.datetime:
    """notAfter − renewBefore; as cert-manager, a third of the lifetime when renewBefore is unset or
    not shorter than the certificate's actual lifetime (issued before the spec changed, say)."""
    not_before, not_after = issued.cert.not_valid_before_utc, issued.cert.not_valid_after_utc
    lifetime = not_after - not_before
    return not_after - (spec.renew_before if spec.renew_before and spec.renew_before < lifetime else lifetime / 3)


# --- time and conditions, as the API writes them -----------------------------------------------
def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str

    def render(self, previous: list[dict], generation: int | None) -> dict:
        """As stored: the transition time moves only when the status does."""
        status = "True" if self.status else "False"
        before = next((c for c in previous if c.get("type") == self.type), None)
        since = before["lastTransitionTime"] if before and before.get("status") == status else rfc3339(now_utc())
        return {"type": self.type, "status": status, "reason": self.reason, "message": self.message,
                "lastTransitionTime": since, "observedGeneration": generation}


UP_TO_DATE = Condition("Ready", True, "Ready", "Certificate is up to date and has not expired")


# --- issuers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuerState:
    ready: Condition
    ca: KeyPair | None  # set only when the issuer can sign


def _decoded(secret: dict, key: str) -> bytes:
    return base64.b64decode((secret.get("data") or {}).get(key, ""))


# --- the controller ----------------------------------------------------------------------------
class ExpiryCollector:
    """cert-manager's expiry metric, as the Certificates' statuses stood after the last pass."""

    LABELS = ("name", "namespace", "issuer_name", "issuer_kind", "issuer_group")

    def __init__(self):
        self.expirations: dict[tuple[str, ...], float] = {}  # replaced whole after each pass

    def observe(self, certificates: list[dict]) -> None:
        expirations = {}
        for certificate in certificates:
            not_after = (certificate.get("status") or {}).get("notAfter")
            if not_after:
                meta, issuer = certificate["metadata"], (certificate.get("spec") or {}).get("issuerRef") or {}
                labels = (meta["name"], meta["namespace"], issuer.get("name", ""), issuer.get("kind", "Issuer"),
                          issuer.get("group", GROUP))
                expirations[labels] = dt.datetime.fromisoformat(not_after.replace("Z", "+00:00")).timestamp()
        self.expirations = expirations

    def collect(self):
        family = GaugeMetricFamily("certmanager_certificate_expiration_timestamp_seconds",
                                   "The date after which the certificate expires, in seconds since the epoch.",
                                   labels=self.LABELS)
        for labels, value in self.expirations.items():
            family.add_metric(labels, value)
        yield family


class CertificateController:
    def __init__(self, api: kubernetes.client.ApiClient):
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self._failing: dict[str, str] = {}  # what went wrong with each Certificate at the last pass
        self.expiry = ExpiryCollector()

    @staticmethod
    def _read(call, *args) -> dict:
        """A bounded read, answered as plain JSON: the same shape for secrets and custom objects."""
        return json.loads(call(*args, _preload_content=False, _request_timeout=API_TIMEOUT).data)

    def _secret(self, namespace: str, name: str) -> dict | None:
        try:
            return self._read(self.core.read_namespaced_secret, name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _event(self, obj: dict, kind: str, warning: bool, reason: str, message: str) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"  # a cluster-scoped object's Events live there
        stamp = rfc3339(now_utc())
        involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "name": meta["name"], "uid": meta["uid"]}
        if meta.get("namespace"):
            involved["namespace"] = meta["namespace"]
        self.core.create_namespaced_event(namespace, {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": involved,
            "type": "Warning" if warning else "Normal", "reason": reason, "message": message,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }, _request_timeout=API_TIMEOUT)

    def reconcile(self) -> None:
        issuers = {issuer["metadata"]["name"]: self._reconcile_issuer(issuer)
                   for issuer in self._read(self.custom.list_cluster_custom_object, GROUP, VERSION,
                                            "clusterissuers")["items"]}
        certificates = self._read(self.custom.list_cluster_custom_object, GROUP, VERSION, "certificates")["items"]
        failing = {}
        for certificate in certificates:
            try:
                self._reconcile_certificate(certificate, issuers)
            except Exception as error:  # noqa: BLE001 - one Certificate's trouble holds up no other
                if isinstance(error, ApiException) and error.status in (404, 409):
                    continue  # deleted or changed since it was listed: the next pass reads it afresh
                name = f"{certificate['metadata']['namespace']}/{certificate['metadata']['name']}"
                failing[name] = control_loop.describe(error)
                if self._failing.get(name) != failing[name]:  # once, not once a second
                    log.error("certificate not reconciled; retrying", certificate=name, error=failing[name])
        self._failing = failing
        self.expiry.observe(certificates)  # each status as this pass left it

    # --- ClusterIssuer ---
    def _issuer_state(self, issuer: dict) -> IssuerState:
        secret_name = ((issuer.get("spec") or {}).get("ca") or {}).get("secretName")
        if not secret_name:
            return IssuerState(Condition("Ready", False, "ErrGetKeyPair", "spec.ca.secretName is not set"), None)
        where = f"{CLUSTER_RESOURCE_NAMESPACE}/{secret_name}"
        secret = self._secret(CLUSTER_RESOURCE_NAMESPACE, secret_name)
        if secret is None:
            return IssuerState(Condition("Ready", False, "ErrGetKeyPair",
                                         f"Error getting keypair for CA issuer: secret {where} not found"), None)
        try:
            ca = load_key_pair(_decoded(secret, "tls.crt"), _decoded(secret, "tls.key"))
        except ValueError as error:
            return IssuerState(Condition("Ready", False, "ErrInvalidKeyPair",
                                         f"Error decoding keypair in secret {where}: {error}"), None)
        if not is_ca(ca.cert):
            return IssuerState(Condition("Ready", False, "ErrInvalidKeyPair",
                                         f"the certificate in secret {where} is not a CA"), None)
        if ca.cert.not_valid_after_utc <= now_utc():
            return IssuerState(Condition("Ready", False, "ErrInvalidKeyPair",
                                         f"the CA certificate in secret {where} expired at "
                                         f"{rfc3339(ca.cert.not_valid_after_utc)}"), None)
        return IssuerState(Condition("Ready", True, "KeyPairVerified", "Signing CA verified"), ca)

    def _reconcile_issuer(self, issuer: dict) -> IssuerState:
        state = self._issuer_state(issuer)
        meta, status = issuer["metadata"], issuer.get("status") or {}
        previous = status.get("conditions") or []
        ready = state.ready.render(previous, meta.get("generation"))
        if previous != [ready]:
            try:
                self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, "clusterissuers", meta["name"],
                    {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": {"conditions": [ready]}},
                    _request_timeout=API_TIMEOUT)
            except ApiException as error:
                if error.status not in (404, 409):
                    raise
                return state  # deleted or changed since it was listed: the next pass writes its status
            self._event(issuer, "ClusterIssuer", not state.ready.status, state.ready.reason, state.ready.message)
            log.info("issuer", issuer=meta["name"], ready=state.ready.status, reason=state.ready.reason,
                     message=state.ready.message)
        return state

    # --- Certificate ---
    def _reconcile_certificate(self, certificate: dict, issuers: dict[str, IssuerState]) -> None:
        meta = certificate["metadata"]
        if meta.get("deletionTimestamp"):
            return
        try:
            spec = CertificateSpec.parse(certificate.get("spec") or {})
        except SpecError as error:
            self._report_not_ready(certificate, Condition("Ready", False, "BadConfig", str(error)))
            return
        secret = self._secret(meta["namespace"], spec.secret_name)
        current, why = _assess_secret(secret, spec, meta["uid"])
        if why is None:
            self._write_status(certificate, UP_TO_DATE, None, current, spec)
            return
        reason, trigger = why
        issuing = Condition("Issuing", True, reason, f"Issuing certificate as {trigger}")
        issuer = issuers.get(spec.issuer_name) if spec.issuer_kind == "ClusterIssuer" else None
        if issuer is None:
            only = "" if spec.issuer_kind == "ClusterIssuer" else " (this lab has ClusterIssuers only)"
            self._report_not_ready(certificate, Condition(
                "Ready", False, "IssuerNotFound", f"{spec.issuer_kind} {spec.issuer_name!r} not found{only}; "
                f"a new certificate is needed as {trigger}"), issuing, current, spec)
        elif issuer.ca is None:
            # The secret is left alone: what it holds stays served, expired or not, until the issuer works.
            self._report_not_ready(certificate, Condition(
                "Ready", False, "IssuerNotReady", f"ClusterIssuer {spec.issuer_name!r} is not ready "
                f"({issuer.ready.message}); a new certificate is needed as {trigger}"), issuing, current, spec)
        else:
            self._issue(certificate, spec, secret, current, issuing, issuer.ca)

    def _issue(self, certificate: dict, spec: CertificateSpec, secret: dict | None, current: KeyPair | None,
               issuing: Condition, ca: KeyPair) -> None:
        meta = certificate["metadata"]
        self._event(certificate, "Certificate", False, "Issuing", issuing.message)
        still_valid = current is not None and current.cert.not_valid_after_utc > now_utc()
        self._write_status(certificate, None if still_valid else Condition("Ready", False, "Issuing", issuing.message),
                           issuing, current, spec)
        now = now_utc()
        issued = issue_server_certificate(list(spec.dns_names), spec.common_name, now, now + spec.duration, ca)
        self._write_secret(meta, spec, secret, issued, ca)
        revision = ((certificate.get("status") or {}).get("revision") or 0) + 1
        self._write_status(certificate, UP_TO_DATE, None, issued, spec, revision)
        self._event(certificate, "Certificate", False, "Issued", "Certificate issued successfully")
        log.info("issued", certificate=f"{meta['namespace']}/{meta['name']}", secret=spec.secret_name,
                 reason=issuing.reason, serial=f"{issued.cert.serial_number:x}", revision=revision,
                 not_after=rfc3339(issued.cert.not_valid_after_utc))

    def _write_secret(self, meta: dict, spec: CertificateSpec, secret: dict | None, issued: KeyPair,
                      ca: KeyPair) -> None:
        annotations = {
            "cert-manager.io/certificate-name": meta["name"],
            "cert-manager.io/issuer-name": spec.issuer_name,
            "cert-manager.io/issuer-kind": spec.issuer_kind,
            "cert-manager.io/issuer-group": GROUP,
            "cert-manager.io/common-name": spec.common_name or "",
            "cert-manager.io/alt-names": ",".join(spec.dns_names),
            "cert-manager.io/ip-sans": "",
            "cert-manager.io/uri-sans": "",
            UID_ANNOTATION: meta["uid"],
        }
        data = {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem, "ca.crt": ca.cert_pem}
        body = secret or {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                          "metadata": {"name": spec.secret_name, "namespace": meta["namespace"]}}
        body["metadata"]["annotations"] = {**(body["metadata"].get("annotations") or {}), **annotations}
        body["metadata"]["labels"] = {**(body["metadata"].get("labels") or {}), "controller.cert-manager.io/fao": "true"}
        body["data"] = {**(body.get("data") or {}), **{k: base64.b64encode(v).decode() for k, v in data.items()}}
        if secret is None:
            self.core.create_namespaced_secret(meta["namespace"], body, _request_timeout=API_TIMEOUT)
        else:  # carries the resourceVersion read: a secret changed meanwhile is a conflict, retried next pass
            self.core.replace_namespaced_secret(spec.secret_name, meta["namespace"], body, _request_timeout=API_TIMEOUT)

    def _report_not_ready(self, certificate: dict, ready: Condition, issuing: Condition | None = None,
                          current: KeyPair | None = None, spec: CertificateSpec | None = None) -> None:
        if self._write_status(certificate, ready, issuing, current, spec):
            meta = certificate["metadata"]
            self._event(certificate, "Certificate", True, ready.reason, ready.message)
            log.warning("certificate not ready", certificate=f"{meta['namespace']}/{meta['name']}",
                        reason=ready.reason, message=ready.message)

    def _write_status(self, certificate: dict, ready: Condition | None, issuing: Condition | None,
                      current: KeyPair | None = None, spec: CertificateSpec | None = None,
                      revision: int | None = None) -> bool:
        """Write the status if it changed (`ready` None keeps the Ready condition); True if it did."""
        meta = certificate["metadata"]
        status = certificate.get("status") or {}
        previous = status.get("conditions") or []
        conditions = ([ready.render(previous, meta.get("generation"))] if ready else
                      [c for c in previous if c.get("type") == "Ready"])
        if issuing:
            conditions.append(issuing.render(previous, meta.get("generation")))
        new = {"conditions": conditions, "revision": revision or status.get("revision")}
        if current is not None and spec is not None:
            new |= {"notBefore": rfc3339(current.cert.not_valid_before_utc),
                    "notAfter": rfc3339(current.cert.not_valid_after_utc),
                    "renewalTime": rfc3339(renewal_time(current, spec))}
        new = {key: value for key, value in new.items() if value is not None}
        if new == status:
            return False
        # A merge patch names every old field, so fields that no longer apply are removed. The
        # resourceVersion makes it conditional: never onto a Certificate re-created since it was read.
        patch = {key: new.get(key) for key in status.keys() | new.keys()}
        written = self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], "certificates", meta["name"],
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch}, _request_timeout=API_TIMEOUT)
        certificate.update(metadata=written["metadata"], status=written.get("status") or {})  # for a second write
        return True


def _assess_secret(secret: dict | None, spec: CertificateSpec, uid: str) -> tuple[KeyPair | None, tuple[str, str] | None]:
    """The key pair the secret holds, if any, and why a certificate must be issued: one of
    cert-manager's Issuing reasons and what follows "Issuing certificate as"; None when up to date."""
    if secret is None:
        return None, ("DoesNotExist", "Secret does not exist")
    cert_pem, key_pem = _decoded(secret, "tls.crt"), _decoded(secret, "tls.key")
    if not cert_pem or not key_pem:
        return None, ("MissingData", "Secret does not contain a certificate and key")
    try:
        current = load_key_pair(cert_pem, key_pem)
    except ValueError as error:
        return None, ("InvalidKeyPair", f"Secret does not hold a valid key pair: {error}")
    annotations = secret["metadata"].get("annotations") or {}
    not_after = current.cert.not_valid_after_utc
    if not_after <= now_utc():
        return current, ("Expired", f"Secret contains an expired certificate (not after {rfc3339(not_after)})")
    if (annotations.get("cert-manager.io/issuer-name"), annotations.get("cert-manager.io/issuer-kind")) != (
            spec.issuer_name, spec.issuer_kind):
        return current, ("IncorrectIssuer", "Secret was previously issued by "
                                            f"{annotations.get('cert-manager.io/issuer-kind')} "
                                            f"{annotations.get('cert-manager.io/issuer-name')!r}")
    if sorted(dns_names(current.cert)) != sorted(spec.dns_names) or common_name(current.cert) != spec.common_name:
        return current, ("SecretMismatch", "the certificate in Secret does not match spec.dnsNames and "
                                           "spec.commonName")
    if annotations.get(UID_ANNOTATION) != uid:
        return current, ("ManuallyTriggered", "Secret was issued for an earlier Certificate of this name, "
                                              "since deleted and re-created")
    if renewal_time(current, spec) <= now_utc():
        return current, ("Renewing", f"renewal was scheduled at {rfc3339(renewal_time(current, spec))}")
    return current, None


# --- the lab's CA as the issuer, made at `lab up` ----------------------------------------------
def ensure_lab_ca(kubeconfig: str | Path, ca_cert_path: str | Path, ca_key_path: str | Path) -> None:
    """Namespace `cert-manager` and secret `lab-ca` holding the lab's CA; ClusterIssuer `lab-ca` if missing."""
    api = cluster.api_client(str(kubeconfig))
    core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
    try:
        core.create_namespace({"metadata": {"name": CLUSTER_RESOURCE_NAMESPACE}}, _request_timeout=API_TIMEOUT)
    except ApiException as error:
        if error.status != 409:
            raise
    data = {"tls.crt": Path(ca_cert_path).read_bytes(), "tls.key": Path(ca_key_path).read_bytes()}
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": LAB_ISSUER, "namespace": CLUSTER_RESOURCE_NAMESPACE},
              "data": {key: base64.b64encode(value).decode() for key, value in data.items()}}
    try:
        core.create_namespaced_secret(CLUSTER_RESOURCE_NAMESPACE, secret, _request_timeout=API_TIMEOUT)
    except ApiException as error:
        if error.status != 409:
            raise
        # The CA files are the authority: a secret that drifted from them is put back.
        core.replace_namespaced_secret(LAB_ISSUER, CLUSTER_RESOURCE_NAMESPACE, secret, _request_timeout=API_TIMEOUT)
    issuer = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterIssuer", "metadata": {"name": LAB_ISSUER},
              "spec": {"ca": {"secretName": LAB_ISSUER}}}
    try:
        custom.create_cluster_custom_object(GROUP, VERSION, "clusterissuers", issuer, _request_timeout=API_TIMEOUT)
    except ApiException as error:
        if error.status == 404:
            raise cluster.ClusterError("the ClusterIssuer resource is not installed: apply cert-manager's "
                                       "CRDs (infrastructure/cluster/crds/) first") from error
        if error.status != 409:  # one that exists is left as it is, a trainee's breakage included
            raise


# --- the process -------------------------------------------------------------------------------
def run(kubeconfig: str | None, metrics_address: str | None = None) -> None:
    controller = CertificateController(cluster.api_client(kubeconfig))
    if metrics_address:
        host, _, port = metrics_address.rpartition(":")
        registry = CollectorRegistry()
        registry.register(controller.expiry)
        start_http_server(int(port), addr=host, registry=registry)
    log.info("started", poll_interval_s=POLL_INTERVAL, metrics_address=metrics_address)
    control_loop.run(controller.reconcile, POLL_INTERVAL, log, explain=_explain)


def _explain(error: Exception) -> str | None:
    if isinstance(error, ApiException) and error.status == 404:
        return "cert-manager's CRDs are not installed"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m opslab.lab.certificates", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: KUBECONFIG, else the running lab's)")
    parser.add_argument("--metrics-address", help="HOST:PORT to serve /metrics on (default: none)")
    args = parser.parse_args(argv)
    run(args.kubeconfig, args.metrics_address)


if __name__ == "__main__":
    main()
