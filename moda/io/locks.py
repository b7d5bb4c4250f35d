"""One run at a time on an output: an exclusive lock on `<output>.lock`, refused at once when another run holds it.

    with exclusive_lock(Path("captions.jsonl"), "--output captions.jsonl"):
        ...  # no other run writes captions.jsonl (or its parts) meanwhile

The lock is fcntl.flock's: the kernel releases it when the holder's process ends, however it ends (a SIGKILLed run
does not block the next one). The holder writes its PID into the lock file, so a refused run can say who holds it.
"""

import fcntl
import os
import stat
from contextlib import contextmanager
from pathlib import Path


class OutputLockedError(ValueError):
    """Another process holds the output's lock (a ValueError: the moda commands print it as one error line)."""


def lock_file_for(path) -> Path:
    """The lock file of an output file or folder: `<path>.lock`, next to it (for "." too: next to the folder). The
    path is resolved first, so that two names of one output (a symbolic link and its target) share one lock."""
    path = Path(os.path.realpath(path))
    return path.with_name(path.name + ".lock")


@contextmanager
def exclusive_lock(path, what: str):
    """
    Holds the exclusive lock of `path` (a file or folder that a run writes) for the block, or raises
    OutputLockedError at once, naming `what`, the lock file and the PID that holds it. The lock file is removed when
    the block ends; one a killed holder left behind is taken over.
    """
    lock_file = lock_file_for(path)
    while True:
        descriptor = open_lock_file(lock_file, what)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 64, 0).decode("ascii", "replace").strip()
            os.close(descriptor)
            by = f"PID {holder}" if holder else "another process (which has not written its PID yet)"
            raise OutputLockedError(f"{what} is being written by another run: its lock {lock_file} is held by {by}; "
                                    "wait for that run to end, or stop it") from None
        except BaseException:
            os.close(descriptor)
            raise
        # The holder before us may have removed the file between our open and our lock: then we hold the lock of a
        # file that no longer names the lock, and must lock the file that does.
        try:
            current = os.stat(lock_file)
        except FileNotFoundError:
            current = None
        locked = os.fstat(descriptor)
        if current is not None and (current.st_dev, current.st_ino) == (locked.st_dev, locked.st_ino):
            break
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        yield lock_file
    finally:
        # Removed while still locked: a run waiting on this file finds it gone (above) and locks a new one.
        lock_file.unlink(missing_ok=True)
        os.close(descriptor)


def open_lock_file(lock_file: Path, what: str) -> int:
    """Opens (or creates) the lock file without following a symbolic link, and only if it is a regular file: a link
    planted at the lock's name must not make a run truncate the file it points to."""
    try:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:  # ELOOP: the name is a symbolic link
        raise OutputLockedError(f"{what}: its lock {lock_file} cannot be opened as a plain file ({err.strerror}); "
                                "remove it if no run is writing the output") from err
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OutputLockedError(f"{what}: its lock {lock_file} is not a regular file; remove it if no run is writing "
                                "the output")
    return descriptor
