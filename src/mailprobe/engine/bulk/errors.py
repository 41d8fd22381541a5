"""Why a bulk run stopped early, for reasons outside any address (`BulkVerifier.run`
raises these; what was not answered stays pending for `--resume`)."""

from __future__ import annotations


class ServiceLost(RuntimeError):
    """A service the run needs (the shared throttle) went away for longer than allowed: the
    run stopped, every address not answered is pending (`--resume`), nothing was invented."""

    def __init__(self, detail: str, pending: int = 0) -> None:
        super().__init__(detail)
        self.pending = pending


class SinkFailed(RuntimeError):
    """The records could not be written (stdout closed, disk full): the run stopped. What was
    answered is stored, so `--resume` goes on from there."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"cannot write records: {cause}")
        self.cause = cause
