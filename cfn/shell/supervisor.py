"""Foreground commands (`cfn broker`, `cfn run`): stop on SIGINT or SIGTERM, watch children."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable


class StopFlag:
    """Set by SIGINT or SIGTERM: the foreground commands stop cleanly on either."""

    def __init__(self) -> None:
        self.set = False
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, _signum: int, _frame: object) -> None:
        self.set = True


def supervise(
    command: str,
    stop: StopFlag,
    processes: dict[str, subprocess.Popen[bytes]],
    where: Callable[[str], str],
) -> int:
    """Wait until `stop` is set or one of `processes` exits (then say which, and where its log
    is); returns the exit code for the command: 0 when stopped, 1 when a process died."""
    while not stop.set:
        for name, process in processes.items():
            if process.poll() is not None:
                print(
                    f"{command}: {name} exited ({process.returncode}); see {where(name)}",
                    file=sys.stderr,
                )
                return 1
        time.sleep(0.5)
    return 0
