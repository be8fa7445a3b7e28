"""What the tests share; no test module imports another.

- ``rawhttp``: the raw-socket HTTP/1.1 client (``RawClient``, ``Conn``) and socket tables;
- ``metrics``: the Prometheus text parser (prometheus-client's);
- ``waiting``: ``eventually`` / ``wait_for``, the one polling helper;
- ``processes``: the upstream app and the sidecar as processes (``hack.supervisor``);
- ``kube``: the operator as a process, ConfigMap polling, reading objects on the local
  control plane (``hack.controlplane``);
- ``servers``: the ASGI servers of the interop matrix (uvicorn, hypercorn, daphne, granian)
  as processes, with their default idle timeouts;
- ``recording``: the test app behind a recorder of each request as the upstream read it;
- ``netns``: network namespaces; ``apps``, ``kmockapi``, ``endpointload``, ``promtool``.
"""
