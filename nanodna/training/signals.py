"""Stopping cleanly on SIGTERM / Ctrl-C: the loop checks a flag once per step, saves, returns."""

from __future__ import annotations

import contextlib
import signal
import threading


class StopRequested:
    """Set by SIGTERM / SIGINT; the loop checks it once per step. A second signal aborts."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(flag: StopRequested):
    """Route SIGTERM and SIGINT to `flag` while inside (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
