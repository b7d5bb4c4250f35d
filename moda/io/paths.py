"""Writing files safely: names from data stay inside their folder, and a file is replaced whole or not at all.

    confined_path(output_dir / "images", name, "file_name")        # the path inside, or ValueError naming the name
    confined_source(images_dir, row["image"], "file_name")          # a file to read and copy: its real path, inside
    write_atomically(path, lambda handle: handle.write(data))       # temp file, fsync, rename; no litter
    with replacing_atomically(path) as temp: os.link(source, temp)  # the same, for a file made another way

And whether a name from the user is a local path rather than a Hub id (looks_like_a_path); whether it is an http(s)
URL is image_io_moda.is_url's to say.
"""

import os
from contextlib import contextmanager
from pathlib import Path, PurePath


def confined_path(root, relative, what: str) -> Path:
    """
    root/relative, resolved, when it lies inside `root`; else ValueError naming `what` and the name: an absolute
    name, a ".." that climbs out of root, a NUL character, a name that is root itself, or a path that leads out of
    root through an existing symbolic link. `relative` comes from data (a catalog's file name): it must not decide
    where outside root a file is written.
    """
    name = str(relative)
    root = Path(root)
    if "\0" in name:
        raise ValueError(f"{what} {name!r} holds a NUL character")
    if PurePath(name).is_absolute():
        raise ValueError(f"{what} {name!r} is an absolute path: it must be relative to {root}")
    normalised = os.path.normpath(name)
    if normalised == os.curdir:
        raise ValueError(f"{what} {name!r} names the folder {root} itself, not a file in it")
    if normalised == os.pardir or normalised.startswith(os.pardir + os.sep):
        raise ValueError(f"{what} {name!r} leads out of {root}: its '..' climbs above it")
    resolved = (root / name).resolve()
    if root.resolve() not in resolved.parents:
        raise ValueError(f"{what} {name!r} leads out of {root} through a symbolic link (to {resolved})")
    return resolved


def confined_source(root, path, what: str) -> Path:
    """
    The real path of `path` (a file that data names, to be read and copied: absolute, or relative to `root`) when it
    lies inside `root`; else ValueError naming `what` and the path. Symbolic links are followed first, so a link in
    the input that points elsewhere (at a private file) is refused, and what is copied is the file itself.
    """
    root = Path(root).resolve()
    resolved = (root / path).resolve()
    if root not in resolved.parents:
        raise ValueError(f"{what} {str(path)!r} lies outside {root}" +
                         (f" (it leads to {resolved})" if str(resolved) != os.path.normpath(root / path) else ""))
    return resolved


def fsync_directory(path) -> None:
    """Makes a rename (or new file) in the folder `path` survive a crash of the machine."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextmanager
def replacing_atomically(path):
    """
    Yields a temp path next to `path` for the caller to create the new file at; when the block ends, the temp file
    is renamed over `path` (a reader sees the old file or the new one, whole). When the block raises (or is
    interrupted), the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.unlink(missing_ok=True)  # left by a killed process that had this PID (os.link needs the name free)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)  # the rename itself survives a crash


def write_atomically(path, write) -> None:
    """Calls write(handle) on a temp file next to `path`, fsyncs it and renames it over `path` (replacing_atomically:
    a failed write leaves no temp file and the old file intact)."""
    with replacing_atomically(path) as temp:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())


# File suffixes that say "a local table", not a Hub id (Hub ids may hold dots too: "owner/moda-v1.0", "opt-1.3b").
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def looks_like_a_path(source: str) -> bool:
    """A trailing or leading separator, a leading "." or "~", or a table's suffix (.csv): a local path, not a Hub id."""
    return (source.endswith(("/", os.sep)) or source.startswith((".", "/", "~", os.sep))
            or Path(source).suffix.lower() in TABLE_SUFFIXES)
