"""How ``serve``'s protocol subclass sits on uvicorn's (``embedding.GuardedProtocol``)."""

from __future__ import annotations

import ast
import inspect

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from asgi_sidecar.embedding import GuardedProtocol

SHARED_KEYS_MAX = 30  # CPython 3.11: instances share one key table for at most 30 names


def _assigned_on_self(cls: type) -> set[str]:
    tree = ast.parse(inspect.getsource(cls))
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for part in ast.walk(target):
                if (
                    isinstance(part, ast.Attribute)
                    and isinstance(part.value, ast.Name)
                    and part.value.id == "self"
                ):
                    names.add(part.attr)
    return names


def test_the_subclass_keeps_its_own_state_in_slots_so_instances_share_keys():
    # Every name uvicorn sets on a connection is a key of its instance dict; past 30, each
    # connection gets a dict of its own (about 1.4 KiB more held per connection in
    # ``make bench-idle``). GuardedProtocol's own state lives in slots, outside the dict.
    uvicorn_names = _assigned_on_self(HttpToolsProtocol)
    ours = _assigned_on_self(GuardedProtocol) - uvicorn_names
    assert ours == set(GuardedProtocol.__slots__)
    assert len(uvicorn_names) <= SHARED_KEYS_MAX, sorted(uvicorn_names)
