"""Crash-safe writes: a file or folder is complete under its name, or absent.

A writer puts the new content under a hidden temporary name in the same
folder, flushes it to disk (`fsync`) and moves it into place with
`os.replace`, which replaces a file atomically. Folders cannot be swapped
atomically with portable calls, so `replace_directory` renames the old
folder aside, renames the new one in, and only then deletes the old one: a
process killed at any moment leaves the old or the new folder under its
name, or, between the two renames, the old one under its aside name, which
`recover` (called by every writer here) puts back.

Temporary names are hidden siblings of the target, ".tmp-PID-XXXXXXXX.NAME"
for new content and ".old-PID-XXXXXXXX.NAME" for an old folder set aside.
The process id tells the leftovers of a killed process, which the next
writer of the same target removes, from the work of a live one, which is
left alone. Readers never see temporaries: they open the target's name.
"""

import contextlib
import json
import os
import re
import secrets
import shutil

_TEMPORARY = re.compile(r"^\.(tmp|old)-(\d+)-[0-9a-f]{8}\.(.+)$")


def _sibling(path, kind):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{kind}-{os.getpid()}-{secrets.token_hex(4)}.{name}")


def _process_alive(pid):
    if pid == os.getpid():
        # Our own id on a leftover means a killed earlier process had it
        # (e.g. a restarted container); this process is not mid-write.
        return False
    if os.name != "posix":
        return True  # no safe liveness probe: leave the leftover alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(path):
    """Temporaries of `path` left by killed processes, as {"tmp": [...], "old": [...]}.

    Args:
        path: the target file or folder.

    Returns:
        Dict of the full paths of dead processes' new-content temporaries
        ("tmp") and old folders set aside ("old"), oldest first.
    """
    folder, name = os.path.split(os.path.abspath(path))
    found = {"tmp": [], "old": []}
    if not os.path.isdir(folder):
        return found
    for entry in os.listdir(folder):
        match = _TEMPORARY.match(entry)
        if match and match.group(3) == name and not _process_alive(int(match.group(2))):
            found[match.group(1)].append(os.path.join(folder, entry))
    for paths in found.values():
        paths.sort(key=_modified_time)
    return found


def _modified_time(path):
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def recover(path):
    """Repairs what a killed writer of `path` left, and returns `path`.

    If `path` is missing but a dead process had set an old folder aside (it
    was killed between its two renames), that folder is renamed back. Every
    other leftover of dead processes is removed. Temporaries of live
    processes are not touched.

    Args:
        path: a file or folder written with this module.

    Returns:
        `path`, unchanged.
    """
    found = leftovers(path)
    if found["old"] and not os.path.lexists(path):
        os.rename(found["old"].pop(), path)  # the newest old folder
    for leftover in found["tmp"] + found["old"]:
        _remove(leftover)
    return path


def _sync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _sync_directory(path):
    # POSIX makes a rename durable by syncing the folder that holds it;
    # Windows cannot open folders, and renames there need no such step.
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_tree(path):
    for root, _, files in os.walk(path):
        for name in files:
            _sync_file(os.path.join(root, name))
        _sync_directory(root)


def remove_directory(path):
    """Deletes the folder `path` so that a kill leaves it whole or gone.

    It is renamed to a temporary name first, then deleted; a kill during the
    delete leaves only a temporary, which the next writer of `path` removes.

    Args:
        path: the folder (nothing happens if it does not exist).
    """
    if not os.path.lexists(path):
        return
    doomed = _sibling(path, "tmp")
    os.rename(path, doomed)
    _sync_directory(os.path.dirname(doomed))
    _remove(doomed)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path to write; on success it replaces `path`.

    For writers that take a file name (e.g. `model.save_weights`). The
    temporary name ends with the target's name, so suffix checks such as
    ".weights.h5" still pass. If the block raises, the temporary is removed
    and `path` keeps its previous content.

    Args:
        path: the file to write.

    Example:

    ```python
    with atomic_path("run/latest.weights.h5") as temporary:
        model.save_weights(temporary)
    ```
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    recover(path)
    temporary = _sibling(path, "tmp")
    try:
        yield temporary
        _sync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    _sync_directory(folder)


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """`open(path, mode)` whose content appears under `path` only when complete.

    Args:
        path: the file to write.
        mode: "w" or "wb" (the file is always written whole).
        **kwargs: further `open` arguments (encoding, newline).

    Example:

    ```python
    with atomic_open("results.json") as f:
        json.dump(results, f)
    ```
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb'; got {mode!r}.")
    with atomic_path(path) as temporary:
        with open(temporary, mode, **kwargs) as f:
            yield f


def write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically; returns `path`."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def write_json(path, value):
    """Writes `value` as indented JSON to `path` atomically; returns `path`."""
    return write_text(path, json.dumps(value, indent=2) + "\n")


def replace_directory(path, build):
    """Builds a folder with `build(folder)` and puts it in place of `path`.

    `build` writes into a fresh hidden sibling; if it raises, that sibling
    is removed and `path` is untouched. Then an existing `path` is renamed
    aside, the new folder renamed in, and the old one deleted. The new
    folder gets the usual permissions (umask applied), readable by others
    where the umask allows, unlike `tempfile.mkdtemp`'s 0700.

    Args:
        path: the folder to create or replace.
        build: callable taking the staging folder's path.

    Returns:
        `path` as an absolute path.

    Example:

    ```python
    replace_directory("runs/x/preset", backbone.save_to_preset)
    ```
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    recover(path)
    staging = _sibling(path, "tmp")
    os.mkdir(staging)
    try:
        build(staging)
        _sync_tree(staging)
    except BaseException:
        _remove(staging)
        raise
    aside = None
    if os.path.lexists(path):
        aside = _sibling(path, "old")
        os.rename(path, aside)
    os.rename(staging, path)
    _sync_directory(folder)
    if aside is not None:
        _remove(aside)
    return path
