"""One training run per workdir: an exclusive `flock` on `<workdir>/.lock`.

Only process 0 takes it (the others of a multi-host run share its workdir).
The kernel drops the lock when its process ends, however it ends, so a run
killed with SIGKILL never blocks the next one. The file says who holds it
(host, pid, since when) for the refusal message of a second run.

Cloud workdirs (`gs://...`): Cloud Storage has no lock its holder's death
releases (an exclusively created object outlives a SIGKILLed run and would
hold up its resume until a lease ran out), so none is taken and a warning
says so; on a cloud workdir, keeping to one run is up to you.
A local path on a network filesystem gets the filesystem's flock semantics
(NFS v4: real locks; some FUSE mounts: none).
"""
from __future__ import annotations

import datetime
import fcntl
import os
import socket

from absl import logging

from matpac_jax import errors, storage

LOCK_FILE = ".lock"


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir or raises errors.LockError."""

    def __init__(self, workdir: str, primary: bool = True):
        self.workdir, self.primary = workdir, primary
        self._fd: int | None = None

    def acquire(self) -> None:
        if not self.primary:
            return
        if storage.is_remote(self.workdir):
            logging.warning("%s: cloud workdirs cannot be locked; make sure no other run "
                            "uses it", self.workdir)
            return
        os.makedirs(self.workdir, exist_ok=True)
        path = os.path.join(self.workdir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise errors.LockError(
                f"{self.workdir} is in use by another run ({holder}); wait for it to end, "
                "stop it, or use another --workdir") from None
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {since}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
