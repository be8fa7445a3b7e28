"""What a real API server will not produce on demand: conflicts, 5xx, 403, dropped watches.

The API server is kmock's Kubernetes emulator (with server-side apply, see
``tests.support.kmockapi``) on a local port; the operator talks to it with the
same official client and the same kopf as in production.  Each test makes the
emulator answer one request badly and then checks, from kmock's request log,
exactly which requests the operator made and what it did about the answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
import pytest_asyncio
import yaml
from kmock import KubernetesError
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config

from asgi_operator import handlers
from asgi_operator.building import BuildOptions
from asgi_operator.config import OperatorSettings
from asgi_operator.kube import Kube
from asgi_operator.reconciling import reconcile
from tests.support.kmockapi import (
    APPLY,
    ASGISERVERS,
    CONFIGMAPS,
    DEPLOYMENTS,
    SERVICES,
    ApplyingEmulator,
    asgiserver,
    declare_resources,
    status_body,
)
from tests.support.waiting import eventually_async as eventually

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.kmock(cls=ApplyingEmulator),
    pytest.mark.timeout(60),
]

NS = "faults"
OPTIONS = BuildOptions(sidecar_image="sidecar:test", native_sidecars=True)
PATCH = kmock.method.PATCH
STATUS = kmock.subresource("status")


@pytest.fixture
def emulator(kmock: ApplyingEmulator) -> Iterator[ApplyingEmulator]:
    declare_resources(kmock)
    yield kmock
    # Errors the emulator raised on purpose are Kubernetes answers (404s and the like);
    # anything else is a bug in the emulation or in these tests.
    unexpected = [e for e in kmock.errors if not isinstance(e, KubernetesError)]
    assert not unexpected, unexpected


@pytest.fixture
def kube(emulator: ApplyingEmulator) -> Iterator[Kube]:
    api = client.ApiClient(client.Configuration(host=str(emulator.url).rstrip("/")))
    yield Kube(api)
    api.close()


async def run(kube: Kube, body: dict[str, Any]) -> None:
    # The client is synchronous and the emulator serves from this event loop: use a thread.
    operator = handlers.AsgiOperator(OperatorSettings(sidecar_image="sidecar:test"), kube, OPTIONS)
    await asyncio.to_thread(operator.sync, body)


def applies(emulator: ApplyingEmulator, resource: kmock.resource | None = None) -> list[Any]:
    view = emulator[PATCH] if resource is None else emulator[PATCH, resource]
    return [r for r in view if r.headers.get("Content-Type", "").startswith(APPLY)]


def assert_apply_request(request: Any, kind: str, name: str) -> None:
    assert request.method == PATCH
    assert request.headers["Content-Type"] == APPLY
    assert request.params == {"fieldManager": "asgi-operator", "force": "true"}
    assert request.namespace == NS
    assert request.name == name
    assert request.data["kind"] == kind
    assert request.data["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "asgi-operator"


# 1. A conflict on apply: retry soon, and the retry goes through.


async def test_conflict_on_apply_is_retried_soon_and_the_retry_succeeds(
    emulator: ApplyingEmulator, kube: Kube
) -> None:
    body = asgiserver(NS, "web")
    emulator.objects[ASGISERVERS, NS, "web"] = body
    conflict = (
        emulator[PATCH, DEPLOYMENTS, kmock.name("web")][:1]
        << 409
        << status_body(409, "Conflict", 'Apply failed with 1 conflict: with "kubectl": .spec')
    )

    with pytest.raises(kopf.TemporaryError) as info:
        await run(kube, body)
    assert info.value.delay == 2
    assert "409" in str(info.value)
    assert len(conflict) == 1
    assert_apply_request(conflict[0], "Deployment", "web")
    assert (DEPLOYMENTS, NS, "web") not in emulator.objects  # a rejected apply changes nothing
    assert not emulator[PATCH, ASGISERVERS, STATUS]  # no status from a failed pass

    await run(kube, body)  # what kopf does after `delay`

    assert len(conflict) == 1  # the conflict was answered once only
    deployment_applies = applies(emulator, DEPLOYMENTS)
    assert len(deployment_applies) == 2
    assert_apply_request(deployment_applies[-1], "Deployment", "web")
    assert_apply_request(applies(emulator, SERVICES)[-1], "Service", "web")
    assert_apply_request(applies(emulator, CONFIGMAPS)[-1], "ConfigMap", "web-sidecar")
    deployment = emulator.objects[DEPLOYMENTS, NS, "web"]
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == "uid-faults-web"
    (status_patch,) = emulator[PATCH, ASGISERVERS, STATUS]
    assert status_patch.headers["Content-Type"] == "application/merge-patch+json"
    status = emulator.objects[ASGISERVERS, NS, "web"]["status"]
    assert status["observedGeneration"] == 1
    assert {c["type"] for c in status["conditions"]} >= {"SysctlsApplied"}


# 2. 5xx and 429 anywhere in a pass: retry soon; other refusals are not retried "soon".


@pytest.mark.parametrize(
    ("code", "where"),
    [
        (500, "deployment"),
        (503, "service"),
        (429, "configmap"),
        (500, "status"),
        (504, "pods"),
    ],
)
async def test_server_errors_are_temporary(
    emulator: ApplyingEmulator, kube: Kube, code: int, where: str
) -> None:
    body = asgiserver(NS, "web")
    emulator.objects[ASGISERVERS, NS, "web"] = body
    view = {
        "deployment": emulator[PATCH, DEPLOYMENTS],
        "service": emulator[PATCH, SERVICES],
        "configmap": emulator[PATCH, CONFIGMAPS],
        "status": emulator[PATCH, ASGISERVERS, STATUS],
        "pods": emulator[kmock.action.LIST, kmock.resource("", "v1", "pods")],
    }[where]
    failing = view << code << status_body(code, "InternalError", "etcdserver: request timed out")

    with pytest.raises(kopf.TemporaryError) as info:
        await run(kube, body)

    assert info.value.delay == 2
    assert f"answered {code}" in str(info.value)
    assert isinstance(info.value.__cause__, ApiException)
    assert len(failing) == 1  # one attempt; the retry is kopf's, after the delay
    # No status is reported from a failed pass (the failed status patch is the only one).
    # (kmock stores a merge patch even when a reaction rejected it: look at the requests.)
    status_patches = list(emulator[PATCH, ASGISERVERS, STATUS])
    assert status_patches == ([failing[0]] if where == "status" else [])


async def test_a_forbidden_apply_is_not_turned_into_a_quick_retry(
    emulator: ApplyingEmulator, kube: Kube
) -> None:
    body = asgiserver(NS, "web")
    emulator.objects[ASGISERVERS, NS, "web"] = body
    emulator[PATCH, DEPLOYMENTS] << 403 << status_body(403, "Forbidden", "cannot patch")

    with pytest.raises(ApiException) as info:
        await run(kube, body)

    assert info.value.status == 403  # kopf's own backoff and retry limit apply


async def test_asgiserver_deleted_meanwhile_is_no_error(
    emulator: ApplyingEmulator, kube: Kube
) -> None:
    body = asgiserver(NS, "gone")  # never stored: the status patch answers 404

    await run(kube, body)  # no exception

    (status_patch,) = emulator[PATCH, ASGISERVERS, STATUS]
    assert status_patch.name == "gone"
    assert status_patch is emulator[-1]  # nothing after the 404 (no retry, no Event)
    assert not emulator[kmock.method.POST]


async def test_namespace_deleted_meanwhile_applies_nothing(
    emulator: ApplyingEmulator, kube: Kube
) -> None:
    body = asgiserver(NS, "web")
    gone = emulator[PATCH, kmock.namespace(NS)] << 404 << status_body(404, "NotFound", "gone")

    await run(kube, body)  # no exception

    assert len(gone) == 1  # stopped at the first 404
    assert not [key for key in emulator.objects if key[0] != ASGISERVERS]
    assert not emulator[PATCH, ASGISERVERS]


# 3. Without the right to read namespaces, reconcile still completes.


async def test_forbidden_namespace_read_is_no_labels(
    emulator: ApplyingEmulator, kube: Kube
) -> None:
    body = asgiserver(NS, "web")
    emulator.objects[ASGISERVERS, NS, "web"] = body
    forbidden = (
        emulator[kmock.method.GET, f"/api/v1/namespaces/{NS}"]
        << 403
        << status_body(403, "Forbidden", f'namespaces "{NS}" is forbidden')
    )

    assert await asyncio.to_thread(kube.namespace_labels, NS) == {}
    outcome = await asyncio.to_thread(reconcile, kube, body, OPTIONS)
    await run(kube, body)

    assert len(forbidden) == 3
    sysctls = {c["type"]: c for c in outcome.status.to_patch()["conditions"]}["SysctlsApplied"]
    assert sysctls["reason"] == "Pending"  # not judged by labels it could not read
    assert outcome.warnings == []
    status = emulator.objects[ASGISERVERS, NS, "web"]["status"]
    assert status["observedGeneration"] == 1
    assert (DEPLOYMENTS, NS, "web") in emulator.objects


async def test_readable_namespace_labels_are_used(emulator: ApplyingEmulator, kube: Kube) -> None:
    # The control for the test above: the same request, answered, changes the verdict.
    body = asgiserver(NS, "web")
    labels = {"pod-security.kubernetes.io/enforce": "baseline"}
    emulator[kmock.method.GET, f"/api/v1/namespaces/{NS}"] << {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NS, "labels": labels},
    }

    assert await asyncio.to_thread(kube.namespace_labels, NS) == labels
    outcome = await asyncio.to_thread(reconcile, kube, body, OPTIONS)

    sysctls = {c["type"]: c for c in outcome.status.to_patch()["conditions"]}["SysctlsApplied"]
    assert sysctls["reason"] == "PodSecurityRejected"
    assert {reason for reason, _ in outcome.warnings} == {"PodSecurityRejected"}


async def test_namespace_read_server_error_is_temporary(
    emulator: ApplyingEmulator, kube: Kube
) -> None:
    body = asgiserver(NS, "web")
    emulator[kmock.method.GET, f"/api/v1/namespaces/{NS}"] << 500

    with pytest.raises(kopf.TemporaryError):
        await run(kube, body)


# 4. The whole operator (kopf and all) through a dropped watch stream.


@pytest.fixture
def kubeconfig(emulator: ApplyingEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(emulator.url)}}],
                "users": [{"name": "kmock", "user": {}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
                "current-context": "kmock",
            }
        )
    )
    # For kopf's login_via_client; the client reads $KUBECONFIG once, at import.
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


class OperatorThread:
    """The whole operator (kopf and all) in a thread with its own event loop.

    Not in the test's loop: on exit kopf cancels every task started while it ran,
    which in the test's loop includes pytest's and kmock's own.
    """

    def __init__(self, registry: kopf.OperatorRegistry) -> None:
        self.registry = registry
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    standalone=True,
                    clusterwide=True,
                    stop_flag=self.stop_flag,
                    ready_flag=self.ready_flag,
                )
            )
        except BaseException as exc:
            self.error = exc

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    async def start(self) -> None:
        self.thread.start()
        assert await asyncio.to_thread(self.ready_flag.wait, 20), "the operator is not ready"

    async def stop(self) -> None:
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 20)
        assert not self.thread.is_alive(), "the operator did not stop"
        if self.error is not None:
            raise self.error


@pytest_asyncio.fixture
async def start_operator(
    emulator: ApplyingEmulator, kube: Kube, kubeconfig: Path
) -> AsyncIterator[Callable[[], Any]]:
    """Start the whole operator (after a test set its reactions up); stop it afterwards."""
    settings = OperatorSettings(
        all_namespaces=True,
        sidecar_image="sidecar:test",
        native_sidecars="always",  # "auto" would ask the server from this event loop
        liveness=None,
        resync_seconds=3600,  # only watch events may lead to an apply in these tests
        metrics_port=None,
    )
    started: list[OperatorThread] = []

    async def start() -> OperatorThread:
        operator = OperatorThread(handlers.build_registry(settings, kube))
        started.append(operator)
        await operator.start()
        return operator

    yield start
    for operator in started:
        assert operator.alive, f"the operator exited on its own: {operator.error!r}"
        await operator.stop()  # cleanly, re-raising anything it died of


async def create(emulator: ApplyingEmulator, body: dict[str, Any]) -> None:
    path = f"/apis/asgi.dev/v1alpha1/namespaces/{NS}/asgiservers"
    async with emulator.post(path, json=body) as response:
        assert response.status == 200, await response.text()


def deployment_applied(emulator: ApplyingEmulator, name: str) -> list[Any]:
    return [r for r in applies(emulator, DEPLOYMENTS) if r.name == name]


@pytest.mark.parametrize("how", ["reset", "eof"])
async def test_operator_survives_a_dropped_watch(
    emulator: ApplyingEmulator, start_operator: Callable[[], Any], how: str
) -> None:
    emulator.objects[ASGISERVERS, NS, "before"] = asgiserver(NS, "before")
    drop = asyncio.Event()

    async def dropped_watch(req: kmock.Request) -> AsyncIterator[Any]:
        # A live watch stream, as the emulator serves it, until the test pulls the plug.
        yield b""
        for (resource, _, _), obj in list(emulator.objects.items()):
            if resource == ASGISERVERS and not obj.deleted:
                yield {"type": "ADDED", "object": obj.raw}
        await drop.wait()
        if how == "reset":
            # The connection dies mid-body (no last chunk): kopf's client sees a payload error.
            # kmock keeps aiohttp's request in a private field; there is no public handle.
            assert req._raw_request is not None
            req._raw_request.transport.abort()
        # "eof": the server ends the stream (an API server restart, a timeout elsewhere).

    watches = emulator[kmock.action.WATCH, ASGISERVERS]
    first_watch = watches[:1] << dropped_watch

    operator = await start_operator()

    await eventually(lambda: deployment_applied(emulator, "before"), "'before' applied")
    await eventually(lambda: len(first_watch) == 1, "the first AsgiServer watch")
    assert emulator.watchers(ASGISERVERS) == 0  # the only watch is the one about to drop

    drop.set()
    await eventually(lambda: len(watches) >= 2, "a new watch after the drop")
    await eventually(lambda: emulator.watchers(ASGISERVERS) == 1, "the new watch streaming")

    await create(emulator, asgiserver(NS, "after"))
    applied = await eventually(lambda: deployment_applied(emulator, "after"), "'after' applied")

    assert_apply_request(applied[0], "Deployment", "after")
    assert applied[0].id > watches[1].id  # it came through the re-established watch
    assert operator.alive
    status = await eventually(
        lambda: emulator.objects[ASGISERVERS, NS, "after"].get("status"), "'after' status"
    )
    assert status["observedGeneration"] == 1


async def test_operator_outlives_a_conflict(
    emulator: ApplyingEmulator, start_operator: Callable[[], Any]
) -> None:
    emulator.objects[ASGISERVERS, NS, "web"] = asgiserver(NS, "web")
    conflict = emulator[PATCH, DEPLOYMENTS][:1] << 409 << status_body(409, "Conflict", "conflict")

    operator = await start_operator()

    await eventually(lambda: len(deployment_applied(emulator, "web")) >= 2, "a retried apply")
    assert len(conflict) == 1
    assert (DEPLOYMENTS, NS, "web") in emulator.objects
    status = await eventually(
        lambda: emulator.objects[ASGISERVERS, NS, "web"].get("status"), "'web' status"
    )
    assert status["observedGeneration"] == 1
    assert operator.alive


async def test_operator_ignores_children_of_a_deleted_asgiserver(
    emulator: ApplyingEmulator, start_operator: Callable[[], Any]
) -> None:
    operator = await start_operator()
    fetches = emulator[kmock.action.FETCH, ASGISERVERS, kmock.name("ghost")]

    await eventually(lambda: emulator.watchers(CONFIGMAPS) == 1, "the ConfigMap watch")
    # A child whose owner is gone: the operator finds no owner in its store and does nothing.
    orphan = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "ghost-sidecar",
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "asgi-operator", "asgi.dev/server": "ghost"},
        },
    }
    async with emulator.post(f"/api/v1/namespaces/{NS}/configmaps", json=orphan) as response:
        assert response.status == 200

    await asyncio.sleep(0.5)  # what would follow the child event at once, if anything
    assert not fetches  # the owner is looked up in the watch-fed store, not fetched
    assert not applies(emulator)
    assert not emulator[PATCH]
    assert operator.alive
