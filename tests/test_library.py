"""The library's own contracts that need no lab: the one wait, command answers judged by meaning,
and a cluster that is not there failing at once with a sentence."""

from __future__ import annotations

import pytest

from opslab import cluster
from opslab.checks import commands
from opslab.checks.core import settle
from opslab.errors import OpslabError
from opslab.waiting import NotYet, eventually, wait_until


def test_eventually_returns_once_the_look_stops_saying_not_yet():
    looks = iter([NotYet("a"), NotYet("b"), "seen"])

    def look():
        answer = next(looks)
        if isinstance(answer, Exception):
            raise answer
        return answer
    assert eventually(look, timeout=5, interval=0.01) == "seen"


def test_eventually_gives_up_with_the_last_sentence_and_how_long_it_waited():
    with pytest.raises(TimeoutError, match=r"the rollout is at 2 of 3 \(waited 0s\)"):
        eventually(lambda: (_ for _ in ()).throw(NotYet("the rollout is at 2 of 3")), timeout=0.3, interval=0.05)


def test_a_plainly_wrong_state_fails_at_the_first_look():
    looks = []

    def look():
        looks.append(1)
        raise AssertionError("set to release 1.4.2, not 1.5.0")
    with pytest.raises(AssertionError, match="1.4.2"):
        settle(look, timeout=30)
    assert len(looks) == 1


def test_a_check_that_never_settles_fails_as_an_assertion():
    with pytest.raises(AssertionError, match=r"not yet \(waited 0s\)"):
        settle(lambda: (_ for _ in ()).throw(NotYet("not yet")), timeout=0.2)


def test_wait_until_names_what_did_not_happen():
    with pytest.raises(TimeoutError, match="waited 0s for the canary to be ready"):
        wait_until(lambda: False, "the canary to be ready", timeout=0.2, interval=0.05)
    assert wait_until(lambda: 7, "a number") == 7


ROLLBACK = (("rollout", "undo"), ("deployment", "api-server"), "mlops-production")


@pytest.mark.parametrize("answer", [
    "kubectl rollout undo deployment/api-server -n mlops-production",
    "kubectl -n mlops-production rollout undo deploy/api-server",
    "kubectl rollout undo deployment api-server --namespace=mlops-production",
    "kubectl --namespace mlops-production rollout undo deployments.apps/api-server",
    "!kubectl rollout undo deploy/api-server -nmlops-production --to-revision 2",
    "$ kubectl rollout undo -n mlops-production deployment/api-server",
    "/usr/local/bin/kubectl rollout undo deployment/api-server -n=mlops-production",
])
def test_a_command_is_judged_by_what_it_does(answer):
    commands.kubectl_does(answer, *ROLLBACK)


@pytest.mark.parametrize("answer, why", [
    ("kubectl rollout restart deployment/api-server -n mlops-production", "rollout restart"),
    ("kubectl rollout undo deployment/api-server", "add `-n mlops-production`"),
    ("kubectl rollout undo deployment/model-server -n mlops-production", "deployment/model-server"),
    ("kubectl rollout undo statefulset/api-server -n mlops-production", "statefulset/api-server"),
    ("helm rollback api-server 1", "start with kubectl"),
    ("", "as a string"),
    ("kubectl rollout undo 'deployment/api-server -n mlops-production", "cannot be read"),
])
def test_a_wrong_command_gets_a_sentence_saying_what_is_wrong(answer, why):
    with pytest.raises(AssertionError, match=why):
        commands.kubectl_does(answer, *ROLLBACK)


@pytest.fixture
def nowhere(tmp_path) -> str:
    """A kubeconfig whose cluster is a closed loopback port."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("""
apiVersion: v1
kind: Config
clusters: [{name: gone, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: someone, user: {token: not-a-secret}}]
contexts: [{name: gone, context: {cluster: gone, user: someone}}]
current-context: gone
""")
    return str(kubeconfig)


def test_a_cluster_that_is_not_there_fails_at_once_with_what_to_do(nowhere):
    with pytest.raises(cluster.ClusterError, match=r"cannot reach the Kubernetes API server .*opslab lab status") as raised:
        cluster.core(nowhere).list_namespace()
    assert isinstance(raised.value, OpslabError)


def test_clients_are_made_once_per_kubeconfig(nowhere):
    assert cluster.api_client(nowhere) is cluster.api_client(nowhere)
    assert cluster.apps(nowhere).api_client is cluster.core(nowhere).api_client
