"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM (schedulers, `timeout`, `docker stop`)."""
import signal
import sys
import threading


class Aborted(KeyboardInterrupt):
    """A second stop signal: the run stops at once without saving; ``signum`` says which signal."""

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(message)
        self.signum = signum


def signal_name(signum: int) -> str:
    return {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}.get(signum, signal.Signals(signum).name)


class StopRequest:
    """The first SIGINT / SIGTERM asks the run to finish its step, save and exit; a second one raises
    :class:`Aborted` at once (the last checkpoint on disk stays intact: writes are atomic).

    Only installable from the main thread (elsewhere it does nothing and the
    process keeps its handlers).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise Aborted(signum)
        self.requested = True
        self.signum = signum
        name = signal_name(signum)
        print(f"\nwrn-fast: {name} -- finishing this step and saving a checkpoint ({name} again to stop at once "
              "without saving)", file=sys.stderr, flush=True)

    @property
    def exit_status(self) -> int:
        """The shell's convention for death by this signal: 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + int(self.signum or signal.SIGINT)

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}
        return False
