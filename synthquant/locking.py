"""One run per work dir and output dir: advisory locks that die with their process.

A participant run holds ``fcntl.flock`` on ``.synthquant.lock`` in its work dir and in each
output dir. A second run on either folder is refused in one line (exit 2) that names the
holder: PID, host, start time and command, which the holder writes into the lock file.

The kernel drops a flock when the last descriptor of the open file closes, and that includes
a process killed with SIGKILL: a crashed run never leaves a stale lock that blocks its restart.
The lock file is left in place (removing it would race with a run that is opening it); its
content only names a holder while the flock is held.

Within one process the locks are re-entrant (the CLI takes them before its first write, the
graph runner again around the run). Processes started by the holder (a pydra worker, a SLURM
job) inherit ``SYNTHQUANT_RUN_LOCKS`` and run inside the holder's lock instead of refusing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from synthquant.errors import InputError

LOCK_NAME = ".synthquant.lock"
ENV_VAR = "SYNTHQUANT_RUN_LOCKS"


class DirectoryInUse(InputError):
    """Another live run holds the work dir or output dir."""


@dataclass
class _Hold:
    fd: int | None      # None: the lock belongs to the ancestor run that started this process
    count: int = 1


_holds: dict[Path, _Hold] = {}
_until_run_ends: list[Path] = []
_started = time.strftime("%Y-%m-%d %H:%M:%S")


def _after_fork_in_child() -> None:
    # A forked child (a pydra or multiprocessing worker) shares its parent's open lock files: it
    # runs under the parent's holds but must never truncate or close them as their owner.
    for hold in _holds.values():
        hold.fd = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _started,
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"}


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict) -> str:
    if not holder.get("pid"):
        return "holder unknown"
    return (f"PID {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}, "
            f"command: {holder.get('command', '?')}")


def _inherited(directory: Path, holder: dict) -> bool:
    """Is the holder the run that started this process (and passed its locks down)?"""
    try:
        parent = json.loads(os.environ.get(ENV_VAR, "{}"))
    except ValueError:
        return False
    same_run = all(parent.get(k) == holder.get(k) for k in ("pid", "host", "started")) and holder.get("pid")
    return bool(same_run) and str(directory) in parent.get("dirs", [])


def _export() -> None:
    """Tell child processes which folders this run holds (they run under its lock)."""
    mine = [str(d) for d, hold in _holds.items() if hold.fd is not None]
    if mine:
        os.environ[ENV_VAR] = json.dumps({**{k: v for k, v in _me().items() if k != "command"}, "dirs": mine})
    elif _owns_env():
        os.environ.pop(ENV_VAR, None)


def _owns_env() -> bool:
    try:
        return json.loads(os.environ.get(ENV_VAR, "{}")).get("pid") == os.getpid()
    except ValueError:
        return False


def acquire(directory: str | Path) -> Path:
    """Lock ``directory`` for this process (re-entrant); raise :class:`DirectoryInUse` if taken."""
    directory = Path(directory).resolve()
    if directory in _holds:
        _holds[directory].count += 1
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        if _inherited(directory, holder):
            _holds[directory] = _Hold(None)
            return directory
        raise DirectoryInUse(directory, f"in use by another synthquant run ({describe_holder(holder)}); "
                                        "wait for it to end, or use another work/output directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_me()) + "\n").encode(), 0)
    _holds[directory] = _Hold(fd)
    _export()
    return directory


def release(directory: str | Path) -> None:
    """Undo one :func:`acquire`; the lock is dropped when the last one is undone."""
    directory = Path(directory).resolve()
    hold = _holds.get(directory)
    if hold is None:
        return
    hold.count -= 1
    if hold.count > 0:
        return
    del _holds[directory]
    if hold.fd is not None:
        with contextlib.suppress(OSError):
            os.ftruncate(hold.fd, 0)  # while still locked: the file no longer names a holder
        os.close(hold.fd)             # closing drops the flock
    _export()


@contextlib.contextmanager
def locked(*directories: str | Path):
    """Hold every directory for the block; all or none (a refused one releases the others)."""
    taken = []
    try:
        for directory in dict.fromkeys(Path(d).resolve() for d in directories):
            taken.append(acquire(directory))
        yield taken
    finally:
        for directory in reversed(taken):
            release(directory)


def hold_for_run(*directories: str | Path) -> None:
    """Lock the directories until :func:`end_run` (the graph runner calls it) or process exit.

    For the CLI, which must hold the folders from before its first write (dataset_description,
    logs/config.json) to the end of the graph, across functions.
    """
    with locked(*directories) as taken:
        for directory in taken:
            acquire(directory)   # the extra hold outlives the block
            _until_run_ends.append(directory)


def end_run() -> None:
    """Release the holds taken by :func:`hold_for_run`."""
    while _until_run_ends:
        release(_until_run_ends.pop())


def held() -> list[Path]:
    """The directories this process holds now."""
    return list(_holds)
