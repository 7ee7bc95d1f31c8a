"""The lab's network: one node namespace behind one veth pair, and checks of the boundary.

Nothing here sends a packet: the boundary is checked by reading addresses, routes and sockets.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from opslab.errors import OpslabError
from opslab.lab.spec import Network

POD_NAMESPACE_PREFIX = "opslab-pod-"
NETNS_CONFIG = Path("/etc/netns")  # `ip netns exec` binds these files over /etc in a namespace
TIMEOUT = 10


class NetworkError(OpslabError):
    """The lab's network cannot be laid out or is outside its boundary."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    if check and result.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result.stdout


def _json(*args: str, netns: str | None = None) -> list[dict]:
    return json.loads(ip("-j", *args, netns=netns) or "[]")


def namespaces() -> list[str]:
    return [entry["name"] for entry in json.loads(ip("-j", "netns", "list") or "[]")]


def lab_namespaces(net: Network) -> list[str]:
    return [n for n in namespaces() if n == net.node_namespace or n.startswith(POD_NAMESPACE_PREFIX)]


def bridge_ip(net: Network) -> ipaddress.IPv4Interface:
    """The node namespace's address on the pod bridge: the last of the cluster range, which
    kwok never hands out (it counts up from .1 within each node's /24)."""
    return ipaddress.ip_interface(f"{net.cluster_cidr[-2]}/{net.cluster_cidr.prefixlen}")


def overlaps(net: Network) -> list[str]:
    """Addresses and routes this machine already has that collide with the lab's ranges."""
    found = []
    for link in _json("addr", "show"):
        if link["ifname"] == net.host_link:
            continue
        for addr in link.get("addr_info", []):
            if addr.get("family") != "inet":
                continue
            network = ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}").network
            found += [f"address {network} on {link['ifname']} overlaps the lab's {r}"
                      for r in net.ranges if network.overlaps(r)]
    for route in _json("route", "show", "table", "all"):
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("dev") == net.host_link or ":" in dst:
            continue
        if route.get("type") in ("local", "broadcast") :
            continue  # already covered by the address checks above
        network = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        found += [f"route {network} via {route.get('dev')} overlaps the lab's {r}"
                  for r in net.ranges if network.overlaps(r)]
    return found


def ensure(net: Network) -> None:
    """Lay out the node namespace, its bridge and the veth link to the host; idempotent."""
    if net.node_namespace not in namespaces():
        ip("netns", "add", net.node_namespace)
    ns = net.node_namespace
    if not ip("link", "show", net.host_link, check=False):
        ip("link", "add", net.host_link, "type", "veth", "peer", "name", net.node_link, "netns", ns)
    ip("addr", "replace", f"{net.host_ip}/{net.link.prefixlen}", "dev", net.host_link)
    ip("link", "set", net.host_link, "up")
    ip("addr", "replace", f"{net.node_ip}/{net.link.prefixlen}", "dev", net.node_link, netns=ns)
    ip("link", "set", "lo", "up", netns=ns)
    ip("link", "set", net.node_link, "up", netns=ns)
    if not ip("link", "show", net.bridge, netns=ns, check=False):
        ip("link", "add", net.bridge, "type", "bridge", netns=ns)
    ip("addr", "replace", str(bridge_ip(net)), "dev", net.bridge, netns=ns)
    ip("link", "set", net.bridge, "up", netns=ns)
    for cidr in (net.cluster_cidr, net.service_cidr):
        ip("route", "replace", str(cidr), "via", net.node_ip, "dev", net.host_link)
    # The node namespace routes between the host link and the pod bridge; with no default
    # route anywhere, forwarding cannot carry a packet off the machine. The lab is IPv4 only.
    # Bridged traffic passes iptables, so replies between pods on the bridge are un-NATed.
    sysctl("net.ipv4.ip_forward=1", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1", "net.bridge.bridge-nf-call-iptables=1", netns=ns)
    sysctl(f"net.ipv6.conf.{net.host_link}.disable_ipv6=1")


def sysctl(*settings: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "sysctl", "-qw", *settings], check=True, timeout=TIMEOUT, capture_output=True)


def teardown(net: Network) -> None:
    """Remove every namespace and link the lab made; the host routes go with the link."""
    ip("link", "delete", net.host_link, check=False)
    for ns in lab_namespaces(net):
        ip("netns", "delete", ns, check=False)
    for folder in NETNS_CONFIG.glob(POD_NAMESPACE_PREFIX + "*"):
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Socket:
    address: str
    port: int
    pid: int


def listening_sockets(pids: set[int] | None = None, netns: str | None = None) -> list[Socket]:
    """TCP and UDP sockets listening in a namespace (the host's by default): those of `pids`, or
    all of them."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    result = subprocess.run([*prefix, "ss", "-Hltunp"], capture_output=True, text=True, timeout=TIMEOUT, check=True)
    sockets = []
    for line in result.stdout.splitlines():
        fields = line.split()
        local, users = fields[4], " ".join(fields[6:])
        address, _, port = local.rpartition(":")
        owners = [int(p) for p in re.findall(r"pid=(\d+),", users)] or [0]
        for pid in owners:
            if pids is None or pid in pids:
                sockets.append(Socket(address.strip("[]").split("%")[0], int(port), pid))
    return sockets


def boundary_violations(net: Network, pids: set[int], cluster_addresses: list[str]) -> list[str]:
    """Everything outside the boundary: a listener on a wildcard or a machine address, a route in
    a lab namespace leading anywhere but the lab's ranges, a cluster address outside them."""
    allowed = [*net.ranges, ipaddress.ip_network("127.0.0.0/8")]

    def inside(address: str) -> bool:
        try:
            return any(ipaddress.ip_address(address) in r for r in allowed)
        except ValueError:
            return False

    found = [f"pid {s.pid} listens on {s.address}:{s.port}"
             for s in listening_sockets(pids) if not inside(s.address)]
    for ns in lab_namespaces(net):
        try:
            sockets, routes = listening_sockets(netns=ns), _json("route", "show", "table", "all", netns=ns)
        except (subprocess.CalledProcessError, NetworkError):
            if ns not in namespaces():
                continue  # a pod's namespace, gone with its pod while we looked
            raise
        found += [f"pid {s.pid} listens on {s.address}:{s.port} in namespace {ns}"
                  for s in sockets if not inside(s.address)]
        for route in routes:
            dst = route.get("dst", "")
            if dst == "default" or ":" in dst:
                found.append(f"namespace {ns} has a route to {dst}")
            elif route.get("type") not in ("local", "broadcast", "multicast"):
                network = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
                if not any(network.subnet_of(r) for r in allowed if r.version == 4):
                    found.append(f"namespace {ns} routes {network}, outside the lab's ranges")
    found += [f"cluster address {a} is outside the lab's ranges" for a in cluster_addresses if not inside(a)]
    return found
