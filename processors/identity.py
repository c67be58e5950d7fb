"""The worker's id across restarts: a slot of a local directory, held with a lock while it runs.

With one transactional producer per worker (CFN_TRANSACTIONS=worker) the transactional id is
`<app id>-worker-<worker id>`. A worker that is SIGKILLed leaves its last transaction open, and
read_committed readers of every partition it wrote wait for it. Only two things end it: the
broker, after the transaction timeout and its next check (up to ~20 s), or a producer that
starts under the same transactional id, which aborts it at once. So a restarted worker should
come back under the id it had, and no two live workers may share one (each would fence the
other).

Kafka Streams keeps its process id in its state directory for the same reason. cfn has no local
state, so the directory holds only ids: slot n of an app is the file `<app id>.<n>.id`, and a
worker holds an exclusive lock (flock) on its slot's file for as long as it lives. A new worker
takes the first slot nobody holds and the id written in it (writing a new random one into an
empty slot). The kernel drops a dead process's lock, so a worker restarted on the same machine
(or in the same pod, with the directory on a volume that outlives the container) takes the dead
one's slot and id, while a second worker running beside it takes another slot.

A stable CFN_WORKER_ID set by the operator (a StatefulSet pod name) bypasses all of this.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_SLOTS = 256  # workers of one app id on one machine: far past what 2..64 cores would run
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class IdentityError(Exception):
    """No slot could be claimed: the directory is unusable, or every slot is held."""


def new_worker_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Claim:
    """A claimed slot. Its lock is held until `release` or the process's end."""

    worker_id: str
    slot: int
    path: Path
    reused: bool  # the id was already in the slot: an earlier worker here had it
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1


def claim(directory: Path, app_id: str, new_id: Callable[[], str] = new_worker_id) -> Claim:
    """Claim the first free slot of `app_id` in `directory`, and the id it holds.

    Args:
        directory: made (0700) if missing; refused unless this user owns it, since whoever can
            write an id there can make two workers share one.
        app_id: CFN_APP_ID; slots are per app (a character a file name cannot hold becomes _).
        new_id: the id written into a slot that has none.

    Returns:
        The claim, whose lock the caller keeps for the worker's life.

    Raises:
        IdentityError: the directory cannot be made, is not this user's, or every slot is held.
    """
    name = _UNSAFE.sub("_", app_id)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_uid != os.getuid():
            raise IdentityError(f"{directory} belongs to another user")
        for slot in range(MAX_SLOTS):
            path = directory / f"{name}.{slot}.id"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # a live worker holds it
                raise
            try:
                kept = os.read(fd, 256).decode("ascii", "replace").strip()
                if _ID.fullmatch(kept):
                    return Claim(kept, slot, path, True, fd)
                worker_id = new_id()
                os.ftruncate(fd, 0)
                os.pwrite(fd, worker_id.encode("ascii") + b"\n", 0)
                os.fsync(fd)
                return Claim(worker_id, slot, path, False, fd)
            except BaseException:
                os.close(fd)
                raise
    except OSError as exc:
        raise IdentityError(f"{directory}: {exc.strerror or exc}") from None
    raise IdentityError(f"all {MAX_SLOTS} slots of {name} in {directory} are held")
