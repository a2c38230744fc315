"""One run per run dir: ``<run dir>/.lock``, held by the run's rank-0 process while it runs.

A second run given the same ``hydra.run.dir`` fails at once, naming the process (pid, host) that holds the
dir and how to choose another, instead of both writing ``last.ckpt``, ``best.ckpt`` and ``results.json`` into
the same place. The lock is an advisory ``flock`` on the file, which the kernel releases when its process
ends however it ends (kill -9 included), so a lock left by a dead process is simply taken over. Where the file
system has no ``flock`` the file's own pid and host decide: a lock of a process that no longer runs on this
host is taken over; one from another host is honoured.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the pid/host fallback below
    fcntl = None

from runs.console import UserError
from runs.resolvers import is_rank_zero, written_config_subdir

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunDirInUse(UserError, RuntimeError):
    pass


class RunDirHoldsARun(RuntimeError):
    pass


# What a finished or running training run (or another evaluation) leaves in its dir.
RUN_FILES = ("results.json", "checkpoints")


@contextmanager
def lock_run_dir(run_dir: str | Path, *, fresh: bool = False) -> Iterator[None]:
    """Holds ``<run dir>/.lock`` for the block (in the rank-0 process only; the other processes of a
    distributed run share rank 0's dir). ``fresh``: the dir must hold no run's files either (``RUN_FILES``):
    an evaluation writes its own results and plots, never over a run's. A refused process leaves nothing in
    the dir: the copy of its config Hydra wrote there (``.hydra-resume-<n>/``) is removed."""
    if not is_rank_zero():
        yield
        return
    lock = RunDirLock(run_dir)
    try:
        lock.acquire()
        found = [name for name in RUN_FILES if fresh and (Path(run_dir) / name).exists()]
        if found:
            lock.release()
            raise RunDirHoldsARun(
                f"run dir {run_dir} holds another run ({', '.join(found)}); an evaluation never writes over a run's "
                f"results, checkpoints or plots. Leave hydra.run.dir out (each evaluation gets a new dir of its "
                f"own) or give a new one: hydra.run.dir=<new dir>."
            )
    except (RunDirInUse, RunDirHoldsARun):
        remove_own_config_copy(run_dir)
        raise
    try:
        yield
    finally:
        lock.release()


def remove_own_config_copy(run_dir: str | Path) -> None:
    """Removes the ``.hydra-resume-<n>/`` this process's Hydra wrote into ``run_dir`` (a ``.hydra/`` may be the
    other process's own, written at the same moment: it stays)."""
    name = written_config_subdir(str(run_dir))
    if name and name != ".hydra":
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def owner_record() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextmanager
def lock_dir(folder: str | Path, *, key: str) -> Iterator[None]:
    """Holds ``<folder>/.lock`` for the block, in this process whatever its rank: an output that one process
    writes (an extraction's store; ``key`` is the setting that chooses another)."""
    lock = RunDirLock(folder, key=key, what="output")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


class RunDirLock:
    def __init__(self, run_dir: str | Path, *, key: str = "hydra.run.dir", what: str = "run dir") -> None:
        self.key, self.what = key, what
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                owner = self._read(fd)
                os.close(fd)
                raise self._in_use(owner)
            # A releasing owner removes the file: if ours was removed (or replaced) meanwhile, lock the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self._read(fd)
        if previous.get("pid") and not (
            previous.get("pid") == os.getpid() and previous.get("host") == socket.gethostname()
        ):
            log.warning(
                "taking over the lock of %s: process %s on %s holds it no longer",
                self.run_dir,
                previous.get("pid"),
                previous.get("host"),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner_record()).encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def _flock(self, fd: int) -> bool:
        """True when this process now holds the lock."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as e:
                if e.errno not in NO_FLOCK:
                    raise
        owner = self._read(fd)  # no flock here: the pid and host in the file decide
        if not owner.get("pid") or owner.get("host") != socket.gethostname():
            return not owner.get("pid")
        return owner["pid"] == os.getpid() or not process_alive(int(owner["pid"]))

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (ValueError, OSError):
            return {}

    def _in_use(self, owner: dict[str, Any]) -> RunDirInUse:
        who = f"process {owner.get('pid', '?')} on host {owner.get('host', '?')}"
        since = f" since {owner['since']}" if owner.get("since") else ""
        if self.key == "hydra.run.dir":
            fix = "hydra.run.dir=<new dir> (or leave hydra.run.dir out: each run then gets a new dir of its own)"
        else:
            fix = f"{self.key}=<new dir>"
        return RunDirInUse(
            f"{self.what} {self.run_dir} is in use by {who}{since} ({owner.get('command', 'another run')}). Two runs "
            f"in one dir overwrite each other's files: wait for that run to end, or choose another dir with {fix}."
        )

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiting process then finds a new file
        finally:
            os.close(self.fd)  # releases the flock
            self.fd = None
