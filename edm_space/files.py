"""Atomic file output: a file is either the old one or the complete new one, never half-written."""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import uuid
from typing import Any, Dict, List, Tuple

import numpy as np

from .errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# write_atomic's temporaries: .tmp-PID-RANDOM.EXT, named by the writing process so that a later run can
# tell one whose writer was killed (remove_stale_temporaries) from one being written.
_OWNED_TEMPORARY = re.compile(r"\.tmp-(\d+)-[^/]*")


def write_atomic(path: "str | os.PathLike[str]", data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; use the normal file mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_stale_temporaries(directory: "str | os.PathLike[str]") -> List[str]:
    """Remove write_atomic's temporaries in `directory` whose writing process no longer runs (killed mid-write,
    e.g. by SIGKILL, which no handler sees); returns the removed paths. Temporaries of live processes stay."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _OWNED_TEMPORARY.fullmatch(name)
        path = os.path.join(directory, name)
        if match and not process_alive(int(match.group(1))) and os.path.isfile(path):
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # exists, owned by someone else (or not a pid at all)
        return True
    return True


def save_npz_atomic(path: "str | os.PathLike[str]", arrays: Dict[str, np.ndarray]) -> None:
    """np.savez to `path` (the name is kept as given), atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


class StagedOutputs:
    """Several output files that replace their targets together, or not at all.

        with StagedOutputs() as stage:
            save_npz_atomic(stage.path("out.npz"), arrays)
            write_picture(stage.path("out.png"))
        # only now do out.npz and out.png change

    Each writer writes to a temporary name beside its target; when the block ends without an
    error every temporary is renamed over its target, else all of them are removed.
    """

    def __init__(self) -> None:
        self.staged: List[Tuple[str, str]] = []

    def path(self, target: "str | os.PathLike[str]") -> str:
        """The temporary path to write instead of `target`."""
        target = os.fspath(target)
        if os.path.isdir(target):  # refused now, before any target has been replaced
            raise ConfigError(f"cannot write {target!r}: it is a directory")
        directory, name = os.path.split(os.path.abspath(target))
        temporary = os.path.join(directory, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}-{name}")
        self.staged.append((temporary, target))
        return temporary

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            try:
                for temporary, target in self.staged:
                    os.replace(temporary, target)
                return
            except BaseException:
                self._discard()
                raise
        self._discard()

    def _discard(self) -> None:
        for temporary, _ in self.staged:
            try:
                os.unlink(temporary)
            except OSError:
                pass


def check_writable_file(path: "str | os.PathLike[str]", option: str, missing_folders: bool = False) -> None:
    """A one-line ConfigError, before any work, when `path` cannot be written as a file.

    missing_folders=True accepts a path whose folders do not exist yet when the nearest existing one is a
    writable folder (the writer creates the rest, see `make_folders`)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path!r} is a directory; give a file name")
    while missing_folders and not os.path.lexists(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    if not os.path.exists(directory):
        raise ConfigError(f"{option} {path!r}: the directory {directory!r} does not exist")
    if not os.path.isdir(directory):
        raise ConfigError(f"{option} {path!r}: {directory!r} is a file, not a directory")
    if not os.access(directory, os.W_OK):
        raise ConfigError(f"{option} {path!r}: the directory {directory!r} is not writable")


def make_folders(path: "str | os.PathLike[str]") -> None:
    """Create the missing folders of a file's path."""
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)


def read_json(path: str, what: str) -> Dict[str, Any]:
    """A JSON object from `path`, or a one-line ConfigError saying why not."""
    try:
        with open(path) as file:
            payload = json.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path!r} does not exist") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {what} {path!r}: {' '.join(str(error).split())[:160]}") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{what} {path!r} does not hold a JSON object")
    return payload
