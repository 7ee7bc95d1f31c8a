"""A pod's network: its own namespace, a veth onto the node namespace's bridge, its DNS.

Routes lead only to the lab's own ranges; there is no default route, so a pod can reach
other pods, Services and the lab link, and nothing else.
"""

from __future__ import annotations

import ipaddress
import json
import shutil

from opslab.lab import network
from opslab.lab.network import NETNS_CONFIG, POD_NAMESPACE_PREFIX, ip, sysctl
from opslab.lab.spec import Network

CLUSTER_DOMAIN = "cluster.local"


def netns_name(uid: str) -> str:
    return POD_NAMESPACE_PREFIX + uid.replace("-", "")[:12]


def _host_link(uid: str) -> str:
    return "vp" + uid.replace("-", "")[:12]  # interface names hold 15 characters


def attach(net: Network, uid: str, address: str, namespace: str, dns_ip: str) -> str:
    """Give the pod `uid` its namespace and `address`; idempotent. Returns the namespace's name."""
    ns = netns_name(uid)
    if ns not in network.namespaces():
        ip("netns", "add", ns)
    sysctl("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", netns=ns)
    node, link = net.node_namespace, _host_link(uid)
    if not ip("link", "show", link, netns=node, check=False):
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns, netns=node)
    ip("link", "set", link, "master", net.bridge, "up", netns=node)
    # A pod that calls its own Service is sent back out of the port it came in on.
    ip("link", "set", link, "type", "bridge_slave", "hairpin", "on", netns=node)
    gateway = str(network.bridge_ip(net).ip)
    ip("addr", "replace", f"{address}/{net.cluster_cidr.prefixlen}", "dev", "eth0", netns=ns)
    ip("link", "set", "lo", "up", netns=ns)
    ip("link", "set", "eth0", "up", netns=ns)
    for cidr in (net.service_cidr, net.link):
        ip("route", "replace", str(cidr), "via", gateway, "dev", "eth0", netns=ns)
    _write_dns(ns, namespace, dns_ip)
    return ns


def _write_dns(ns: str, namespace: str, dns_ip: str) -> None:
    folder = NETNS_CONFIG / ns
    folder.mkdir(parents=True, exist_ok=True)
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    (folder / "resolv.conf").write_text(f"search {search}\nnameserver {dns_ip}\noptions ndots:5\n")
    (folder / "hosts").write_text("127.0.0.1\tlocalhost\n")


def detach(net: Network, uid: str) -> None:
    ns = netns_name(uid)
    ip("link", "delete", _host_link(uid), netns=net.node_namespace, check=False)
    ip("netns", "delete", ns, check=False)
    shutil.rmtree(NETNS_CONFIG / ns, ignore_errors=True)


def existing_addresses() -> dict[str, str]:
    """Pod namespace -> the address its eth0 already has, for pods set up before a restart."""
    found = {}
    for ns in network.namespaces():
        if ns.startswith(POD_NAMESPACE_PREFIX):
            for link in json.loads(ip("-j", "-4", "addr", "show", "eth0", netns=ns, check=False) or "[]"):
                for addr in link.get("addr_info", []):
                    found[ns] = addr["local"]
    return found


def allocate(pod_cidr: str, used: set[str], after: str | None = None) -> str:
    """The next free address of a node's pod range after `after`, wrapping round, from .2 (.1 is
    a gateway by convention). Handing out the lowest free one instead reuses an address freed
    seconds ago, while other pods still hold the old pod's MAC for it."""
    hosts = [str(h) for h in ipaddress.ip_network(pod_cidr).hosts()][1:]
    start = hosts.index(after) + 1 if after in hosts else 0
    for address in hosts[start:] + hosts[:start]:
        if address not in used:
            return address
    raise RuntimeError(f"pod range {pod_cidr} is full")
