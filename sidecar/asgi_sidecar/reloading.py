"""Watch the config file and apply changes live.

Kubernetes updates a mounted ConfigMap by swapping a symlink, so the file is
polled by content rather than watched by inode.  A file that fails to parse or
validate is logged and counted, and the running settings stay as they were:
a broken ConfigMap never takes the sidecar down.  The new text is validated in a child
process (``validating.on_reload``) while the event loop goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from asgi_sidecar import validating
from asgi_sidecar.validated import ConfigError, ValidSettings
from asgi_sidecar.validating import ValidationUnavailableError

log = logging.getLogger("asgi_sidecar.reload")

POLL_INTERVAL = 1.0
# Polls skipped before a text the child gave no verdict on is tried again (about 30 s).
RETRY_POLLS = 30


class ConfigWatcher:
    def __init__(
        self,
        path: Path,
        environ: Mapping[str, str],
        flags: Mapping[str, Any],
        apply: Callable[[ValidSettings], object],
        count: Callable[[str], None],
        interval: float = POLL_INTERVAL,
    ) -> None:
        self._path = path
        self._environ = environ
        self._flags = flags
        self._apply = apply
        self._count = count
        self._interval = interval
        self._last: bytes | None = self._read()
        self._wait = 0  # polls left before a retry

    def _read(self) -> bytes | None:
        try:
            return self._path.read_bytes()
        except OSError:
            return None

    async def check(self) -> ValidSettings | None:
        """Reload if the file changed; returns the applied settings, if any."""
        if self._wait:
            self._wait -= 1
            return None
        content = self._read()
        if content is None or content == self._last:
            return None
        previous, self._last = self._last, content
        source = f"config file {self._path}"
        try:
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"{source}: not UTF-8 text") from None
            settings = await validating.on_reload(text, source, self._environ, self._flags)
        except ValidationUnavailableError as exc:
            log.error("config reload not validated, keeping the running settings:\n%s", exc)
            self._count("invalid")
            self._last, self._wait = previous, RETRY_POLLS  # the same text, once more later
            return None
        except ConfigError as exc:
            log.error("config reload refused, keeping the running settings:\n%s", exc)
            self._count("invalid")
            return None
        self._apply(settings)
        self._count("applied")
        return settings

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:  # pragma: no cover - keep watching whatever happens
                log.exception("config reload failed")
