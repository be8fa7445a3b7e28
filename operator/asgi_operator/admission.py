"""Pure: the admission webhook's answers, and its MutatingWebhookConfiguration.

``answer`` turns an AdmissionReview (admission.k8s.io/v1) for a Pod CREATE and the
AsgiServer its label names into the review's response.  The rule is that the webhook
never makes a Pod that cannot run: it injects the proxy correctly, or it admits the Pod
unchanged with a warning (shown by kubectl) and a notice the edge posts as an Event.
It refuses only what it cannot judge (the edge answers an API error with a refusal, so
``failurePolicy: Fail`` holds: no Pod goes without the proxy silently).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from asgi_operator.building import Owner, config_map_name, drain_token, somaxconn_for, tuned_spec
from asgi_operator.injecting import INJECT_LABEL, InjectionError, inject, json_patch
from asgi_operator.models import AsgiServerSpec
from asgi_operator.pods import PodOptions
from asgi_operator.statusmodels import AsgiServerStatus

Manifest = dict[str, Any]

WEBHOOK_NAME = "inject.asgi.dev"
WEBHOOK_PATH = "/mutate-pods"
DEFAULT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Notice:
    """Why a Pod was admitted without the proxy: an Event's reason and message."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Answer:
    review: Manifest  # the AdmissionReview to send back
    notice: Notice | None = None
    injected: bool = False


def requested_server(review: Manifest) -> tuple[str, str] | None:
    """(namespace, AsgiServer name) a Pod CREATE asks for, None if it asks for none."""
    request = review.get("request") or {}
    pod = request.get("object") or {}
    name = ((pod.get("metadata") or {}).get("labels") or {}).get(INJECT_LABEL)
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace")
    if not name or not namespace or request.get("operation", "CREATE") != "CREATE":
        return None
    return str(namespace), str(name)


def _response(review: Manifest, **fields: Any) -> Manifest:
    uid = (review.get("request") or {}).get("uid", "")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, **fields},
    }


def _unchanged(review: Manifest, reason: str, message: str) -> Answer:
    warning = f"asgi-operator: Pod admitted without the proxy: {message}"
    response = _response(review, allowed=True, warnings=[warning[:512]])
    return Answer(response, Notice(reason, message))


def refused(review: Manifest, message: str, code: int = 500) -> Manifest:
    """A refusal (the Pod is not created; its controller retries with backoff)."""
    return _response(review, allowed=False, status={"code": code, "message": message})


def answer(
    review: Manifest,
    server: Manifest | None,
    sidecar_image: str,
    native_sidecars: bool,
) -> Answer:
    """The response to a Pod CREATE, given the AsgiServer its label names (None: absent)."""
    asked = requested_server(review)
    if asked is None:
        return Answer(_response(review, allowed=True))
    namespace, name = asked
    label = f"{INJECT_LABEL}={name}"
    if server is None:
        return _unchanged(
            review,
            "AsgiServerNotFound",
            f"{label}, but there is no AsgiServer {name} in namespace {namespace}; create it,"
            " then restart the workload",
        )
    try:
        spec = AsgiServerSpec.model_validate(server.get("spec") or {})
        tuning = AsgiServerStatus.read(server.get("status")).tuning
        spec = tuned_spec(spec, tuning.current if tuning is not None else None)
    except ValidationError as exc:
        return _unchanged(review, "InvalidSpec", f"AsgiServer {name} is invalid: {exc}")
    if spec.target_ref is None:
        return _unchanged(
            review,
            "NotAttachable",
            f"{label}, but AsgiServer {name} runs its own Pods (spec.image); give it"
            " spec.targetRef to attach to this workload",
        )
    meta = server["metadata"]
    owner = Owner(name=name, namespace=namespace, uid=meta.get("uid", ""))
    options = PodOptions(
        sidecar_image=spec.sidecar_image or sidecar_image,
        native_sidecars=native_sidecars,
        somaxconn=somaxconn_for(spec, None),
        drain_token=drain_token(owner),
    )
    pod = (review.get("request") or {}).get("object") or {}
    try:
        injection = inject(pod, spec, name, config_map_name(owner), options)
    except InjectionError as exc:
        return _unchanged(review, "InjectionRefused", f"{label}: {exc}")
    patch = json_patch(pod, injection.pod)
    if not patch:
        return Answer(_response(review, allowed=True), injected=True)
    encoded = base64.b64encode(json.dumps(patch).encode()).decode()
    return Answer(
        _response(review, allowed=True, patchType="JSONPatch", patch=encoded), injected=True
    )


def webhook_configuration(
    name: str,
    namespace: str,
    *,
    service: tuple[str, str] | None = None,
    url: str | None = None,
    ca_bundle: bytes = b"",
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    watched: Sequence[str] = (),
) -> Manifest:
    """The MutatingWebhookConfiguration (the chart's templates/webhook.yaml says the same).

    Only Pods labelled ``asgi.dev/inject`` are sent to the webhook (``objectSelector``),
    never those of the operator's own ``namespace``, so ``failurePolicy: Fail`` makes only
    opted-in Pods wait for it.  An operator that watches only some namespaces may read
    AsgiServers only there, so then only those namespaces' Pods are sent (``watched``).
    ``service`` is (namespace, name); ``url`` is for an operator outside the cluster.
    """
    scope: Manifest = {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                       "values": [namespace]}  # fmt: skip
    if watched:
        served = sorted(set(watched) - {namespace})
        if not served:
            raise ValueError(f"the webhook would serve no namespace: only {namespace} is watched")
        scope = {**scope, "operator": "In", "values": served}
    client: Manifest
    if url is not None:
        client = {"url": url}
    elif service is not None:
        client = {
            "service": {
                "namespace": service[0],
                "name": service[1],
                "path": WEBHOOK_PATH,
                "port": 443,
            }
        }
    else:
        raise ValueError("the webhook needs a service or a url")
    if ca_bundle:
        client["caBundle"] = base64.b64encode(ca_bundle).decode()
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "asgi-operator"}},
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "clientConfig": client,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "objectSelector": {
                    "matchExpressions": [{"key": INJECT_LABEL, "operator": "Exists"}]
                },
                "namespaceSelector": {"matchExpressions": [scope]},
                "failurePolicy": "Fail",
                "sideEffects": "NoneOnDryRun",
                "timeoutSeconds": timeout_seconds,
                "reinvocationPolicy": "IfNeeded",
                "matchPolicy": "Equivalent",
            }
        ],
    }
