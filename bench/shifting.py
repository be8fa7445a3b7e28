"""A capacity shift the overload scenarios trigger in a running app, by signal.

``Shift()`` (made once, at import of the app's module, in uvicorn's main thread) installs
handlers: SIGUSR1 doubles ``factor``-scaled capacity terms (the CPU app's cost per
request, the pool app's slots), SIGUSR2 puts them back.  A signal reaches the app however
its server refuses or queues requests, which an HTTP control endpoint would not.
"""

from __future__ import annotations

import signal
from types import FrameType


class Shift:
    def __init__(self) -> None:
        self.factor = 1
        signal.signal(signal.SIGUSR1, self._double)
        signal.signal(signal.SIGUSR2, self._restore)

    def _double(self, signum: int, frame: FrameType | None) -> None:
        self.factor = 2

    def _restore(self, signum: int, frame: FrameType | None) -> None:
        self.factor = 1
