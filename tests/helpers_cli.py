"""Driving `edm-space` as a user does, and checking what a failed command leaves behind.

A failed command must print ONE line on stderr that starts with ``error: ``, exit
non-zero, show no traceback, leave no new file (temporary files included) and
change no file that existed before. :func:`cli_error` checks all of that for an
in-process call; :func:`error_line` does the stderr part for a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import pytest

from conftest import snapshot
from edm_space.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The smallest training that exercises everything: 3 steps of a one-block MLP of width 16 on 256 moons
#: (a warm-up of one step, short enough that no note about it is printed).
TINY_TRAIN = ["--data", "moons", "--data-size", "256", "--net-option", "width=16", "--net-option", "depth=1",
              "--steps", "3", "--batch", "16", "--warmup", "16"]

#: Sampling the exact denoiser of 50 moons points: 4 samples, 2 steps.
TINY_SAMPLE = ["--data-size", "50", "--n", "4", "--steps", "2"]

#: A process id no process has: above Linux's default pid_max (2**22).
DEAD_PID = 2**22 + 12345

# One tqdm progress-bar state, e.g. "train edm on moons:  33%|###   | 1/3 [00:00<00:01, 9.1step/s]".
_PROGRESS_BAR = re.compile(r"\|\s*\d+/\d+\s*\[")

# A name the message must contain; a tuple means any one of its spellings (e.g. "--s-noise" or "s_noise").
Name = Union[str, Tuple[str, ...]]


def tree_state(root: "str | os.PathLike[str]") -> Dict[str, str]:
    """Every entry below `root`, hidden ones included: relative path -> sha256 of a file, or 'folder'."""
    root = os.fspath(root)
    if not os.path.exists(root):
        return {}
    state = {path: hashlib.sha256(data).hexdigest() for path, data in snapshot(root).items()}
    for folder, subfolders, _ in os.walk(root):
        for name in subfolders:
            state[os.path.relpath(os.path.join(folder, name), root) + os.sep] = "folder"
    return state


def assert_tree_unchanged(before: Dict[str, str], root: "str | os.PathLike[str]") -> None:
    """Nothing added below `root` since `before` (no temp file, no folder), nothing removed, nothing changed."""
    after = tree_state(root)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"below {root}: added {added}, removed {removed}, changed {changed}"


def error_line(stderr: str) -> str:
    """The one error line of a failed command's stderr; progress bars are the only other output allowed."""
    assert "Traceback" not in stderr, stderr
    pieces = [p.strip() for p in re.split(r"[\r\n]+", stderr)]
    lines = [p for p in pieces if p and not _PROGRESS_BAR.search(p)]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def assert_names(line: str, names: Iterable[Name]) -> None:
    """Every name (or one spelling of it) appears in the message."""
    for name in names:
        spellings = (name,) if isinstance(name, str) else name
        assert any(s in line for s in spellings), f"{line!r} does not name {' or '.join(map(repr, spellings))}"


def cli_run(argv: Sequence[str], capsys) -> Tuple[int, str, str]:
    """Run `edm-space ARGV` in this process: (exit code, stdout, stderr).

    Warnings are shown as a fresh interpreter shows them (Python's default filters) and added to
    stderr, where a user would see them.
    """
    capsys.readouterr()
    code = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", hidden)
        try:
            main([str(a) for a in argv])
        except SystemExit as done:
            code = 0 if done.code is None else done.code
    captured = capsys.readouterr()
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    return code, captured.out, shown + captured.err


def cli_ok(argv: Sequence[str], capsys) -> str:
    """Run a command that must succeed; its stdout."""
    code, out, err = cli_run(argv, capsys)
    assert code == 0, err
    return out


def cli_error(argv: Sequence[str], capsys, names: Iterable[Name] = (), roots: Iterable["str | os.PathLike[str]"] = ()) -> str:
    """Run a command that must fail cleanly; its error line, which names every one of `names`.

    Every folder in `roots` must be exactly as it was before (no file added, removed or changed).
    """
    roots = [os.fspath(r) for r in roots]
    before = {root: tree_state(root) for root in roots}
    code, _, err = cli_run(argv, capsys)
    assert code != 0, f"exit code {code}; stderr: {err!r}"
    line = error_line(err)
    assert_names(line, names)
    for root in roots:
        assert_tree_unchanged(before[root], root)
    return line


def subprocess_env() -> Dict[str, str]:
    """The environment of a child `edm-space`: one thread, no debug tracebacks, this checkout importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("EDM_SPACE_DEBUG", None)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def limit_memory(limit_bytes: int = 3 << 30) -> Callable[[], None]:
    """A preexec_fn capping a child's address space, so a runaway allocation fails instead of exhausting the machine."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def cli_command(args: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", "edm_space.cli", *[str(a) for a in args]]


def cli_subprocess(args: Sequence[str], cwd, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run `edm-space ARGS` in a fresh interpreter (text output captured unless `stdout` is given)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(cli_command(args), cwd=cwd, env=subprocess_env(), text=True, timeout=timeout, **kwargs)


def cli_start(args: Sequence[str], cwd, stderr_path: "str | os.PathLike[str]") -> subprocess.Popen:
    """Start `edm-space ARGS` in the background; its stderr goes to `stderr_path`."""
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen(cli_command(args), cwd=cwd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=stderr)


def wait_until(condition: Callable[[], bool], process: Optional[subprocess.Popen] = None, timeout: float = 120) -> None:
    """Poll `condition` until it holds; fail if `process` ends first or `timeout` seconds pass (a guard, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended (exit code {process.returncode}) before the awaited state")
        if time.monotonic() > deadline:
            pytest.fail(f"the awaited state did not come within {timeout} s")
        time.sleep(0.02)


def temp_files(root: "str | os.PathLike[str]") -> List[str]:
    """Temporary files below `root`: .tmp-* and *.tmp-PID, as atomic writers name them."""
    found = []
    for folder, _, names in os.walk(os.fspath(root)):
        found += [os.path.join(folder, n) for n in names if n.startswith(".tmp") or re.search(r"\.tmp-\d+$", n)]
    return found
