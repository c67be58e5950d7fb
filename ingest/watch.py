"""Noticing that the secrets file changed, by polling its path: no signal needs to reach us.

`connect` and `rotate` (cfn.cloudflare) rewrite the file from another process, and Kubernetes
updates a mounted Secret under a running pod by swapping a symlink (`..data`), so the ingest
looks for itself. It stats the path, never an open descriptor: after a swap or a rename the
path names a new inode, which an open descriptor would never show.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("cfn.ingest")

# Seconds between two looks at the file: a rewrite is in force within about this long.
WATCH_INTERVAL = 1.0

# What identifies one version of the file: (device, inode, size, mtime ns, ctime ns), or None
# while the path names nothing.
Signature = tuple[int, int, int, int, int] | None


def signature(path: Path, stat: Callable[[Path], os.stat_result] = os.stat) -> Signature:
    """The file's identity now: a write in place changes size or times, a rename or a symlink
    swap changes the inode. None when the path is missing or unreadable."""
    try:
        st = stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileWatch:
    """Tells whether a file changed since the last look.

    A missing file is no change: a symlink swap has a moment with no target, and a file that
    is gone keeps what was loaded (the reload would only fail). Pure: the stat is injected.
    """

    def __init__(self, path: Path, stat: Callable[[Path], os.stat_result] = os.stat) -> None:
        self.path = path
        self._stat = stat
        self._seen = signature(path, stat)

    def changed(self) -> bool:
        """True once for each new version of the file."""
        now = signature(self.path, self._stat)
        if now is None or now == self._seen:
            return False
        self._seen = now
        return True


async def watch(
    path: Path, on_change: Callable[[], object], interval: float = WATCH_INTERVAL
) -> None:
    """Call `on_change` each time `path` changes, until cancelled. `on_change` logs its own
    outcome (a bad file is logged once per version, since a version is reported once)."""
    files = FileWatch(path)
    while True:
        await asyncio.sleep(interval)
        if files.changed():
            log.info("the secrets file %s changed; reloading it", path)
            on_change()
