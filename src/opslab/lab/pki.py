"""The lab's certificates, keys and kubeconfigs, made once and kept in the lab's home.

ECDSA P-256 throughout: every component accepts it and it is made in milliseconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opslab.lab.spec import LabSpec

VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class Identity:
    """A certificate for a client (`user`, `groups`) or a server (`hosts`)."""

    name: str
    user: str
    groups: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    ca: str = "ca"


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load(pki: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((pki / f"{name}.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / f"{name}.key").read_bytes(), password=None)
    return cert, key


def _make_ca(pki: Path, name: str, common_name: str) -> None:
    if (pki / f"{name}.crt").exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + 10 * VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(pki / f"{name}.key", _key_pem(key))
    (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _issue(pki: Path, identity: Identity) -> None:
    if (pki / f"{identity.name}.crt").exists():
        return
    ca_cert, ca_key = _load(pki, identity.ca)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in identity.groups]
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, identity.user))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if identity.hosts else []
    usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if identity.hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in identity.hosts]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(pki / f"{identity.name}.key", _key_pem(key))
    (pki / f"{identity.name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def identities(spec: LabSpec) -> list[Identity]:
    host = spec.network.host_ip
    apiserver_hosts = (
        host, "127.0.0.1", spec.network.kubernetes_service_ip, "localhost", "kubernetes",
        "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
    )
    loopback = ("127.0.0.1", "localhost")
    return [
        Identity("etcd-server", "etcd", hosts=loopback),
        Identity("apiserver-etcd-client", "kube-apiserver-etcd-client"),
        Identity("apiserver", "kube-apiserver", hosts=apiserver_hosts),
        Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
        Identity("front-proxy-client", "front-proxy-client", ca="front-proxy-ca"),
        Identity("admin", "kubernetes-admin", ("system:masters",)),
        Identity("controller-manager", "system:kube-controller-manager", hosts=loopback),
        Identity("scheduler", "system:kube-scheduler", hosts=loopback),
        Identity("kwok", "system:kwok-controller", ("system:masters",), hosts=(host,)),
        Identity("kube-proxy", "system:kube-proxy"),
        Identity("coredns", "system:coredns"),
        # Observability (manifests/monitoring.yaml grants each what it reads).
        Identity("prometheus", "opslab:prometheus"),
        Identity("kube-state-metrics", "opslab:kube-state-metrics"),
        Identity("resource-usage", "opslab:resource-usage"),
        # The API server reaches it through its Service, and checks the Service's name.
        Identity("metrics-server", "system:metrics-server",
                 hosts=(host, "metrics-server.kube-system.svc", "metrics-server.kube-system.svc.cluster.local")),
    ]


def kubeconfig(spec: LabSpec, identity: str) -> dict:
    pki = spec.paths.pki
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "opslab", "cluster": {
            "server": spec.apiserver_url, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": identity, "user": {
            "client-certificate": str(pki / f"{identity}.crt"),
            "client-key": str(pki / f"{identity}.key")}}],
        "contexts": [{"name": "opslab", "context": {"cluster": "opslab", "user": identity}}],
        "current-context": "opslab",
    }


def kubeconfig_path(spec: LabSpec, identity: str) -> Path:
    return spec.paths.kubeconfig if identity == "admin" else spec.paths.config / f"{identity}.kubeconfig"


def ensure(spec: LabSpec) -> None:
    """Make whatever certificate, key or kubeconfig is missing; keep the rest."""
    pki = spec.paths.pki
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    spec.paths.config.mkdir(parents=True, exist_ok=True)
    _make_ca(pki, "ca", "opslab-ca")
    _make_ca(pki, "front-proxy-ca", "opslab-front-proxy-ca")
    for identity in identities(spec):
        _issue(pki, identity)
    if not (pki / "sa.key").exists():
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(pki / "sa.key", _key_pem(key))
        (pki / "sa.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    if not (pki / "encryption.yaml").exists():
        key = base64.b64encode(os.urandom(32)).decode()
        config = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
                  "resources": [{"resources": ["secrets"], "providers": [
                      {"aescbc": {"keys": [{"name": "lab-key-1", "secret": key}]}}, {"identity": {}}]}]}
        _write_private(pki / "encryption.yaml", yaml.safe_dump(config).encode())
    for identity in ("admin", "controller-manager", "scheduler", "kwok", "kube-proxy", "coredns",
                     "kube-state-metrics", "metrics-server", "resource-usage"):
        path = kubeconfig_path(spec, identity)
        text = yaml.safe_dump(kubeconfig(spec, identity), sort_keys=False)
        if not path.exists() or path.read_text() != text:  # kube-state-metrics restarts when its file is written
            path.write_text(text)
        os.chmod(path, 0o600)
