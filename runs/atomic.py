"""Writing files so that a reader (or a resumed run) never sees a half-written one."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def replacing(path: str | Path, *, durable: bool = True, keep: str | Path | None = None) -> Iterator[Path]:
    """Yields ``<path>.tmp`` in the same folder to be filled; on success renames it over ``path`` (atomic on
    POSIX and Windows), on any failure removes it, so ``path`` is either the old file or the complete new one.
    ``durable`` also fsyncs the folder, so that the rename survives a power cut. ``keep``: the old ``path``
    stays there (a hard link, made before the rename: ``path`` exists throughout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # left by a killed writer
    try:
        yield tmp
        if keep is not None and path.exists():
            atomic_link(path, keep, durable=False)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if out_of_space(e, path.parent):
            raise OSError(
                errno.ENOSPC,
                f"no space left on {path.parent} while writing {path.name} (No space left on device); "
                f"{'the previous ' + path.name + ' is kept' if path.exists() else 'nothing was written'}. "
                f"Free space there (or write elsewhere: hydra.run.dir=<dir>) and resume.",
            ) from e
        raise
    if durable:
        fsync_dir(path.parent)


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", *, durable: bool = True, keep: str | Path | None = None
) -> Iterator[IO]:
    """``open`` for writing through ``replacing``: a reader never sees a half-written ``path``.

    ``durable`` also fsyncs the file and the folder, so the new file survives a power cut; frequent small
    progress records can skip that cost.
    """
    with replacing(path, durable=durable, keep=keep) as tmp, open(tmp, mode) as f:
        yield f
        if durable:
            f.flush()
            os.fsync(f.fileno())


def atomic_link(source: str | Path, path: str | Path, *, durable: bool = True, keep: str | Path | None = None) -> None:
    """Makes ``path`` a hard link to ``source`` (a copy where the file system has no hard links), replacing
    any old ``path`` atomically (kept as ``keep`` when given). Writers that replace files by renames
    (``atomic_open``) give the other name a new file, so the two never change together."""
    with replacing(path, durable=durable, keep=keep) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def out_of_space(error: BaseException, directory: Path) -> bool:
    """Whether a failed write ran out of space: an ENOSPC anywhere in the exception chain (torch.save turns
    its file's OSError into ``RuntimeError: unexpected pos ...``), or a file system left with no free space."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(error, Exception):
        return False  # KeyboardInterrupt, SystemExit: not a write failure
    try:
        return shutil.disk_usage(directory).free == 0
    except OSError:
        return False


def fsync_dir(directory: Path) -> None:
    """Makes a rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
