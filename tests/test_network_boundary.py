"""The lab stays inside its network boundary: inspected, never probed with a packet."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import replace

from opslab import cluster
from opslab.lab import network


def cluster_addresses() -> list[str]:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    pods = json.loads(cluster.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
    services = json.loads(cluster.kubectl("get", "services", "-A", "-o", "json").stdout)["items"]
    addresses = [a["address"] for n in nodes for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
    addresses += [ip["ip"] for p in pods for ip in p["status"].get("podIPs", [])]
    addresses += [ip for s in services for ip in s["spec"].get("clusterIPs", []) if ip != "None"]
    endpoints = json.loads(cluster.kubectl("get", "endpointslices", "-A", "-o", "json").stdout)["items"]
    addresses += [a for e in endpoints for ep in e.get("endpoints") or [] for a in ep["addresses"]]
    return addresses


def test_every_address_route_and_socket_is_inside_the_boundary(lab):
    net = lab.spec.network
    pids = lab.pids()
    host_sockets = network.listening_sockets(pids)
    assert {s.address for s in host_sockets} <= {"127.0.0.1", net.host_ip}
    node_sockets = network.listening_sockets(netns=net.node_namespace)
    for component in lab.components():
        if component.listen:  # each listens where the lab says, and the check sees it
            where = node_sockets if component.command.netns else host_sockets
            assert any((s.address, s.port) == component.listen for s in where), component.name
    addresses = cluster_addresses()
    assert net.host_ip in addresses, "the kubernetes Service's endpoint is the lab link address"
    assert network.boundary_violations(net, pids, addresses) == []
    for ns in network.lab_namespaces(net):
        assert network.ip("route", "show", "default", netns=ns).strip() == ""
        assert network.ip("-6", "route", "show", "default", netns=ns).strip() == ""


def test_the_boundary_check_finds_a_wildcard_listener_and_an_outside_address(lab):
    with socket.socket() as wildcard:
        wildcard.bind(("", 0))
        wildcard.listen()
        found = network.boundary_violations(lab.spec.network, {os.getpid()}, ["192.0.2.7"])
    assert any(f"pid {os.getpid()} listens on" in f for f in found)
    assert "cluster address 192.0.2.7 is outside the lab's ranges" in found


def test_ranges_that_overlap_the_machine_are_found(lab):
    assert network.overlaps(lab.spec.network) == []
    clash = replace(lab.spec.network, service_cidr=ipaddress.ip_network("127.0.0.0/8"))
    assert "address 127.0.0.0/8 on lo overlaps the lab's 127.0.0.0/8" in network.overlaps(clash)


def test_prometheus_and_alertmanager_listen_on_loopback_and_the_lab_link_only(lab):
    """Each also listens on the lab link's host address, where its Service's hand-kept
    EndpointSlice points the Ingress gateway (and pods); nowhere else."""
    net, ports = lab.spec.network, lab.spec.ports
    for name, port in (("prometheus", ports.prometheus), ("alertmanager", ports.alertmanager)):
        sockets = network.listening_sockets({lab.supervisor.pid(name)})
        assert {(s.address, s.port) for s in sockets} == {("127.0.0.1", port), (net.host_ip, port)}, name
    slices = json.loads(cluster.kubectl("get", "endpointslices", "-n", "monitoring", "-o", "json").stdout)["items"]
    assert {a for s in slices for e in s["endpoints"] for a in e["addresses"]} == {net.host_ip}
