"""What uses my space: the biggest folders and files under ``$HOME``, and
deleting them.

Sizes are measured by hubfs's parallel walker (``hubfs du --json
--children DIR``: each entry on its own, counted as the quota counts —
apparent bytes of files and symlinks, hard links once, symlinks never
followed, other filesystems not entered). Where the image has no ``hubfs``
binary a plain Python walk with the same rules stands in, and the answer
says so (``measured_by``).

Paths come from the browser and are relative to the home; nothing outside
it is ever listed or deleted (``..``, absolute paths and symlinks that leave
the home are refused), and a symlink is deleted as a link, never followed.
"""

import json
import os
import shutil
import stat
import subprocess

#: Entries returned per folder (the biggest).
LIMIT = 200


class SpaceError(Exception):
    """A request that cannot be served; ``code`` is the HTTP status."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def resolve(home, rel):
    """The absolute path of ``rel`` inside ``home``, or SpaceError. The
    last component is not followed (it may be a symlink to delete)."""
    rel = (rel or "").strip("/")
    if "\0" in rel:
        raise SpaceError(400, "bad path")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise SpaceError(400, "path %r leaves your home" % rel)
    real_home = os.path.realpath(home)
    if not parts:
        return real_home
    parent = os.path.realpath(os.path.join(real_home, *parts[:-1]))
    if parent != real_home and not parent.startswith(real_home + os.sep):
        raise SpaceError(400, "path %r leaves your home" % rel)
    return os.path.join(parent, parts[-1])


def _relative(home, path):
    return os.path.relpath(path, os.path.realpath(home))


def _hubfs_du(hubfs, directory, timeout):
    out = subprocess.run(
        [hubfs, "du", "--json", "--children", "--timeout", str(timeout), directory],
        capture_output=True,
        timeout=timeout + 30,
        check=False,
    )
    if out.returncode not in (0, 2):
        raise SpaceError(500, "hubfs du failed: %s" % out.stderr.decode("utf-8", "replace").strip())
    entries = []
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        v = json.loads(line)
        entries.append(
            {
                "path": v["path"],
                "kind": v.get("kind", "other"),
                "bytes": v["usage_bytes"],
                "files": v.get("files", 0),
                "dirs": v.get("dirs", 0),
                "partial": bool(v.get("timed_out")),
            }
        )
    return entries


def _python_du(directory):
    """The walker's rules in Python: apparent sizes of files and symlinks,
    hard links once, no symlink followed, one filesystem."""
    dev = os.lstat(directory).st_dev
    entries = []
    with os.scandir(directory) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        st = os.lstat(child.path)
        kind = (
            "dir"
            if stat.S_ISDIR(st.st_mode)
            else "file" if stat.S_ISREG(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "other"
        )
        seen = set()
        total, files, dirs = 0, 0, 0
        stack = [(child.path, st)]
        while stack:
            path, s = stack.pop()
            if stat.S_ISDIR(s.st_mode):
                dirs += 1
                if s.st_dev != dev:
                    continue
                try:
                    with os.scandir(path) as sub:
                        for e in sub:
                            try:
                                stack.append((e.path, e.stat(follow_symlinks=False)))
                            except OSError:
                                pass
                except OSError:
                    pass
                continue
            if s.st_nlink > 1:
                if (s.st_dev, s.st_ino) in seen:
                    continue
                seen.add((s.st_dev, s.st_ino))
            files += 1
            total += s.st_size
        entries.append(
            {"path": child.path, "kind": kind, "bytes": total, "files": files, "dirs": dirs, "partial": False}
        )
    return entries


def listing(home, rel, hubfs=None, timeout=60):
    """The entries of the folder ``rel`` of ``home``, biggest first."""
    directory = resolve(home, rel)
    if not os.path.isdir(directory) or os.path.islink(directory):
        raise SpaceError(404, "%r is not a folder of your home" % (rel or "~"))
    hubfs = hubfs or shutil.which("hubfs")
    if hubfs:
        entries, measured_by = _hubfs_du(hubfs, directory, timeout), "hubfs du"
    else:
        entries, measured_by = _python_du(directory), "python (no hubfs binary in this image)"
    for e in entries:
        e["name"] = os.path.basename(e["path"])
        e["path"] = _relative(home, e["path"])
    entries.sort(key=lambda e: (-e["bytes"], e["name"]))
    return {
        "path": _relative(home, directory) if directory != os.path.realpath(home) else "",
        "total_bytes": sum(e["bytes"] for e in entries),
        "entries": entries[:LIMIT],
        "more": max(0, len(entries) - LIMIT),
        "measured_by": measured_by,
    }


def delete(home, rel):
    """Deletes the file, symlink or folder tree ``rel`` of ``home``."""
    path = resolve(home, rel)
    if path == os.path.realpath(home):
        raise SpaceError(400, "will not delete your whole home")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SpaceError(404, "%r does not exist" % rel) from None
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError as e:
        raise SpaceError(403, "cannot delete %r: %s" % (rel, e.strerror)) from None
