"""Where a KB lives on disk, and how it is replaced without a moment in which it is missing or mixed.

Layout of a KB built at ``parent/NAME``::

    parent/NAME                 symlink -> .NAME.kb-<build id>   (what users pass to open)
    parent/.NAME.kb-<build id>/ the KB's files (manifest.json, shards, stores, tokenizer/)

* **Claim.** A build first takes an exclusive ``flock`` on ``parent/.NAME.lock`` (the file records the
  builder's pid and is unlinked when the build ends; the kernel drops the lock if the builder dies), so
  two builds into one path never run at once: the second one fails with :class:`KBError`.
* **Swap.** The new KB is written into ``.NAME.building-<pid>-<tag>``, renamed to its versioned name, and
  published by one ``rename`` of a fresh symlink over ``NAME`` (``rename`` replaces the old link
  atomically: every ``open`` sees the old KB or the new one, never none). A first build creates the
  link with ``symlink``, which fails if the path appeared meanwhile; a plain directory at ``NAME`` (a
  copy) is swapped with ``renameat2(RENAME_EXCHANGE)`` where the kernel has it.
* **Readers.** An opened KB holds a shared ``flock`` on its folder's ``manifest.json``; an old version
  is deleted only when an exclusive lock on it succeeds, so an opened KB keeps its files (and its lazily
  loaded tokenizer) after an overwrite. Versions that were still open are removed by a later build.
* **Stale leftovers** of killed builds (``.*.building-<pid>-*`` and ``.*.link-<pid>-*`` whose pid is dead,
  unreferenced versions of NAME without readers) are removed by the next build into the same parent.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from gemkr_llamaindex.kb.errors import IndexFormatError, KBError
from gemkr_llamaindex.kb.store import MANIFEST, missing_manifest_message

_TEMP = re.compile(r"\.(?P<name>.+)\.(?:building|link|copying)-(?P<pid>\d+)-[0-9a-f]+")
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def version_name(target: Path, build_id: str) -> str:
    return f".{target.name}.kb-{build_id[:16]}"


def _is_version_of(name: str, target: Path) -> bool:
    """Whether ``name`` is a versioned folder of ``target`` (and not of a KB whose name extends it)."""
    return re.fullmatch(re.escape(f".{target.name}.kb-") + r"(?:[0-9a-f]{16}|replaced-[0-9a-f]{12})", name) is not None


def temp_dir(target: Path, kind: str) -> Path:
    """A new, empty sibling folder ``.NAME.<kind>-<pid>-<tag>`` (permissions from the umask)."""
    path = target.with_name(f".{target.name}.{kind}-{os.getpid()}-{new_tag()}")
    os.mkdir(path)
    return path


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the libc, kernel or file system lacks it."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(str(src)), at_fdcwd, os.fsencode(str(dst)), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with :class:`FileExistsError` if ``dst`` exists."""
    if _renameat2(src, dst, RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):  # fallback: check, then rename (a race remains only without renameat2)
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    os.rename(src, dst)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (``RENAME_EXCHANGE``); False where unsupported."""
    return _renameat2(a, b, RENAME_EXCHANGE)


# ---------------------------------------------------------------------------------------------- claim
class TargetClaim:
    """Exclusive claim on building into ``target``: an ``flock`` on ``.NAME.lock`` next to it."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.lock_path = target.with_name(f".{target.name}.lock")
        self._fd = -1

    def __enter__(self) -> TargetClaim:
        for _ in range(50):
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise KBError(f"{self.target} is being built by another process (pid {owner}); wait for that build "
                              "to finish, or build into another directory") from None
            try:  # the previous holder unlinks the file before unlocking: make sure ours is the live one
                st, live = os.fstat(fd), os.stat(self.lock_path)
                same = (st.st_dev, st.st_ino) == (live.st_dev, live.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return self
            os.close(fd)
        raise KBError(f"cannot claim {self.lock_path}: it keeps being replaced")

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = -1


# ---------------------------------------------------------------------------------------------- publish
def publish(version: Path, target: Path, overwrite: bool) -> None:
    """Make ``target`` point at the finished ``version`` folder (a sibling), atomically."""
    rel = version.name
    if not os.path.lexists(target):
        try:
            os.symlink(rel, target)
            return
        except FileExistsError:
            if not overwrite:
                raise KBError(f"{target} appeared while the KB was being built; pass overwrite=True to replace it") from None
    elif not overwrite:
        raise KBError(f"{target} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    link = target.with_name(f".{target.name}.link-{os.getpid()}-{new_tag()}")
    os.symlink(rel, link)
    if target.is_symlink() or not target.is_dir():
        os.replace(link, target)  # the atomic swap
        return
    # A plain directory (e.g. a copy made with copy_to): exchange it with the link, then retire it as an
    # old version of NAME so that remove_stale deletes it once no reader has it open.
    retired = target.with_name(f".{target.name}.kb-replaced-{new_tag()}")
    if exchange(link, target):
        os.rename(link, retired)
    else:  # no renameat2: two renames, with a moment in which target is missing
        os.rename(target, retired)
        os.replace(link, target)


def remove_if_unused(folder: Path) -> bool:
    """Delete a KB folder unless a reader holds it open (shared lock on its manifest)."""
    try:
        fh = open(folder / MANIFEST, "rb")
    except FileNotFoundError:
        shutil.rmtree(folder, ignore_errors=True)
        return True
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            pass  # no flock on this file system: nothing to respect
        shutil.rmtree(folder, ignore_errors=True)
        return True


def remove_stale(target: Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Remove leftovers of killed builds in ``target``'s parent; call it while holding the claim on target.

    * ``.*.building-<pid>-*``, ``.*.link-<pid>-*``, ``.*.copying-<pid>-*`` of any name whose pid is dead;
    * versions of ``target`` (``.NAME.kb-*``) that it does not point to and that no reader holds open.
    """
    removed = []
    entries = list(os.scandir(target.parent))
    # Never touch a folder that any symlink here points to (this KB's current version or another KB's).
    linked = {os.readlink(e.path) for e in entries if e.is_symlink()}
    for entry in entries:
        name = entry.name
        if name in keep or name in linked:
            continue
        m = _TEMP.fullmatch(name)
        if m and not pid_alive(int(m["pid"])):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(name)
        elif _is_version_of(name, target) and entry.is_dir(follow_symlinks=False):
            if remove_if_unused(Path(entry.path)):
                removed.append(name)
    return removed


# ---------------------------------------------------------------------------------------------- readers
def bind(path: Path) -> tuple[Path, BinaryIO, bytes]:
    """Resolve ``path`` to the folder that holds the KB now and take a shared lock on its manifest.

    Returns (folder, the open manifest file holding the lock, the manifest's bytes). A build that swaps
    the KB meanwhile and deletes the old folder makes us retry with the new one.
    """
    if not path.is_dir():
        raise IndexFormatError(f"knowledge base directory {path} does not exist")
    for _ in range(200):
        folder = Path(os.path.realpath(path))
        try:
            fh = open(folder / MANIFEST, "rb")
        except FileNotFoundError:
            if Path(os.path.realpath(path)) != folder:
                continue  # swapped between resolving and opening
            raise IndexFormatError(missing_manifest_message(path)) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a build is deleting this (old) folder right now
            fh.close()
            time.sleep(0.01)
            continue
        except OSError:
            pass  # no flock on this file system
        try:
            st, live = os.fstat(fh.fileno()), os.stat(folder / MANIFEST)
            if (st.st_dev, st.st_ino) == (live.st_dev, live.st_ino):
                return folder, fh, fh.read()
        except FileNotFoundError:
            pass
        fh.close()
    raise IndexFormatError(f"cannot open the KB at {path}: it keeps being replaced")


def copy_folder(src: Path, names: list[str], dest: Path, overwrite: bool) -> Path:
    """Copy the files ``names`` (relative to ``src``) into a new folder that appears at ``dest`` at once."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(dest) and not overwrite:
        raise KBError(f"{dest} already exists; pass overwrite=True to replace it")
    tmp = temp_dir(dest, "copying")
    try:
        for name in names:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, tmp / name)
        try:
            rename_noreplace(tmp, dest)
            return dest
        except FileExistsError:
            if not overwrite:
                raise KBError(f"{dest} already exists; pass overwrite=True to replace it") from None
        if dest.is_symlink():
            _replace_link(tmp, dest)
            return dest
        if not dest.is_dir():
            dest.unlink()
            os.rename(tmp, dest)
            return dest
        retired = dest.with_name(f".{dest.name}.kb-replaced-{new_tag()}")
        if exchange(tmp, dest):
            os.rename(tmp, retired)
        else:
            os.rename(dest, retired)
            os.rename(tmp, dest)
        remove_if_unused(retired)
        return dest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_link(folder: Path, link: Path) -> None:
    """``link`` is a symlink (a built KB): put the copied folder there by exchanging, else by two steps."""
    if exchange(folder, link):
        os.unlink(folder)  # now the old symlink
        return
    os.unlink(link)
    os.rename(folder, link)
