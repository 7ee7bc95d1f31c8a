"""Checks on command answers, judged by what the command does rather than by its wording.

A kubectl command line is parsed the way kubectl parses it: global flags anywhere, `-n X`,
`-nX`, `--namespace=X` and `--namespace X` alike, a resource as `deployment/api-server`,
`deploy api-server` or `deployments.apps/api-server`. So
`kubectl -n mlops-production rollout undo deploy/api-server` and
`kubectl rollout undo deployment/api-server -n mlops-production` are the same answer.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

# Commands whose second word is a subcommand (`kubectl rollout undo`, `kubectl set image`).
WITH_SUBCOMMANDS = {"rollout", "set", "create", "config", "auth", "top", "certificate"}
# Flags that take a value (kubectl's global flags, and those of the commands a lesson asks for).
TAKES_VALUE = {
    "-n", "--namespace", "--context", "--cluster", "--user", "-s", "--server", "--kubeconfig", "--token",
    "--as", "--as-group", "--as-uid", "--request-timeout", "-v", "--v", "--cache-dir", "--certificate-authority",
    "--client-certificate", "--client-key", "--tls-server-name", "--profile", "--profile-output",
    "-o", "--output", "-l", "--selector", "-f", "--filename", "-k", "--kustomize", "--to-revision", "--timeout",
    "-c", "--container", "--field-selector", "--replicas", "--type", "-p", "--patch", "--image", "--tail",
    "--since", "--from-literal", "--from-file", "--field-manager", "--sort-by", "--template", "--for",
}
# The names kubectl accepts for a kind, to the one a check compares.
KINDS = {
    "deploy": "deployment", "deployments": "deployment", "deployment.apps": "deployment",
    "deployments.apps": "deployment", "svc": "service", "services": "service", "po": "pod", "pods": "pod",
    "cm": "configmap", "configmaps": "configmap", "sts": "statefulset", "statefulsets": "statefulset",
    "statefulset.apps": "statefulset", "statefulsets.apps": "statefulset", "rs": "replicaset",
    "replicasets": "replicaset", "ns": "namespace", "namespaces": "namespace", "secrets": "secret",
    "ing": "ingress", "ingresses": "ingress", "cj": "cronjob", "cronjobs": "cronjob", "jobs": "job",
    "no": "node", "nodes": "node", "cert": "certificate", "certs": "certificate", "certificates": "certificate",
    "netpol": "networkpolicy", "networkpolicies": "networkpolicy", "ep": "endpoints",
}


@dataclass(frozen=True)
class KubectlCommand:
    command: tuple[str, ...]  # ("rollout", "undo")
    resources: tuple[tuple[str, str], ...]  # (("deployment", "api-server"),)
    namespace: str | None
    flags: dict = field(default_factory=dict)


def kind(name: str) -> str:
    name = name.lower()
    return KINDS.get(name, name)


def parse_kubectl(text: str) -> KubectlCommand:
    """The kubectl command in `text` (a `!` or `$ ` in front is allowed); an AssertionError that
    says why when it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise AssertionError("Answer with the command as a string, e.g. \"kubectl get pods -n mlops-production\".")
    try:
        words = shlex.split(text.strip().lstrip("!$ ").strip())
    except ValueError as error:
        raise AssertionError(f"The command cannot be read as a shell line: {error}.") from None
    if not words or words[0].rpartition("/")[2] != "kubectl":
        raise AssertionError(f"The command should start with kubectl, not {words[0] if words else 'nothing'!r}.")
    positional, flags = [], {}
    rest = iter(words[1:])
    for word in rest:
        if word == "--":
            positional.extend(rest)  # what follows is the command run in a container
            break
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            flags[name] = value if equals else (next(rest, "") if name in TAKES_VALUE else True)
        elif word.startswith("-") and len(word) > 1:
            name, value = word[:2], word[2:].lstrip("=")
            flags[name] = value if value else (next(rest, "") if name in TAKES_VALUE else True)
        else:
            positional.append(word)
    depth = 2 if positional and positional[0] in WITH_SUBCOMMANDS else 1
    command, arguments = tuple(positional[:depth]), positional[depth:]
    resources = []
    if arguments and "/" in arguments[0]:
        for argument in arguments:
            type_, _, name = argument.partition("/")
            resources.append((kind(type_), name))
    elif arguments:
        resources = [(kind(arguments[0]), name) for name in arguments[1:]] or [(kind(arguments[0]), "")]
    namespace = flags.get("-n") or flags.get("--namespace") or None
    return KubectlCommand(command, tuple(resources), namespace, flags)


def kubectl_does(answer: str, command: tuple[str, ...], resource: tuple[str, str], namespace: str) -> None:
    """`answer` is a kubectl command that runs `command` (`("rollout", "undo")`) on `resource`
    (`("deployment", "api-server")`) in `namespace`, however it is written."""
    parsed = parse_kubectl(answer)
    if parsed.command != command:
        raise AssertionError(f"That command runs `kubectl {' '.join(parsed.command)}`; "
                             f"the task needs `kubectl {' '.join(command)}`.")
    wanted = (kind(resource[0]), resource[1])
    if parsed.resources != (wanted,):
        named = ", ".join(f"{k}/{n}" for k, n in parsed.resources) or "nothing"
        raise AssertionError(f"That command acts on {named}; the task is about {wanted[0]}/{wanted[1]}.")
    if parsed.namespace != namespace:
        raise AssertionError(f"That command runs in the namespace {parsed.namespace or 'of your context (default)'}, "
                             f"not in {namespace}: add `-n {namespace}`.")
