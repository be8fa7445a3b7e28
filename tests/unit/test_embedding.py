"""How ``serve``'s protocol subclass sits on uvicorn's (``uvicorn_protocol.GuardedProtocol``)."""

from __future__ import annotations

import ast
import inspect

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from asgi_sidecar.uvicorn_protocol import GuardedProtocol

# CPython 3.11 shares one key table among a class's instances for at most 30 names, and each
# instance made takes one of them: 29 names at most stay shared.
SHARED_KEYS_MAX = 29


def _assigned_on_self(cls: type) -> set[str]:
    tree = ast.parse(inspect.getsource(cls))
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Tuple):
                targets.extend(target.elts)
            elif (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                names.add(target.attr)  # not self.x.y = ... nor self.x[k] = ...
    return names


def test_the_subclass_keeps_its_own_state_in_slots_so_instances_share_keys():
    # Every name uvicorn sets on a connection is a key of its instance dict; past 29, each
    # connection gets a dict of its own (about 1.4 KiB more held per connection in
    # ``make bench-idle``). GuardedProtocol's own state lives in slots, outside the dict.
    uvicorn_names = _assigned_on_self(HttpToolsProtocol)
    ours = _assigned_on_self(GuardedProtocol) - uvicorn_names
    assert ours == set(GuardedProtocol.__slots__)
    assert len(uvicorn_names) <= SHARED_KEYS_MAX, sorted(uvicorn_names)
