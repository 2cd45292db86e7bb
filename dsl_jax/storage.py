"""The one I/O layer: every file or directory a command reads or writes goes through
these functions, so each path may be local or a bucket (``gs://bucket/...``, ``s3://...``).

Remote paths use :mod:`etils.epath` on its fsspec backend (gcsfs for ``gs://``; set
here before epath is first used, so that emulators and ``STORAGE_EMULATOR_HOST`` work,
which tf.io.gfile ignores). Local paths keep plain POSIX behaviour: whole-file writes go
to a hidden temporary sibling, fsync'd, then ``os.replace`` (a killed writer's
temporary is removed by the next write); appends are ``O_APPEND`` writes, fsync'd, cut
back on failure. A local OSError that names no path is raised again naming it, and
:func:`os_error_line` gives any OSError as the one line the CLI prints.

On a remote path, a storage error (missing bucket, no permission, server gone) is raised
as one :class:`~dsl_jax.errors.UserError` line naming the path (see :func:`user_errors`);
on a local path the OS error is raised unchanged. Directory listings of remote paths are
re-read from the server each time (gcsfs caches them otherwise). See docs/storage.md.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import glob as _glob
import os
import posixpath
import shutil
from typing import IO, Iterator

os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402

from dsl_jax.errors import UserError  # noqa: E402

REMOTE = ("gs://", "s3://")


def is_remote(p) -> bool:
    return str(p).startswith(REMOTE)


def path(p) -> epath.Path:
    """``p`` as an :class:`etils.epath.Path` (``~`` expanded for local paths)."""
    p = str(p)
    return epath.Path(p if is_remote(p) else os.path.expanduser(p))


def join(p, *parts) -> str:
    p = str(p)
    return posixpath.join(p, *parts) if is_remote(p) else os.path.join(p, *parts)


def abspath(p) -> str:
    """``p`` absolute (``~`` expanded) when local; a bucket URL without a trailing slash."""
    p = str(p)
    return p.rstrip("/") if is_remote(p) else os.path.abspath(os.path.expanduser(p))


def dirname(p) -> str:
    """The directory holding ``p`` (absolute for a local path)."""
    p = str(p)
    return posixpath.dirname(p.rstrip("/")) if is_remote(p) else os.path.dirname(
        os.path.abspath(os.path.expanduser(p)))


def basename(p) -> str:
    p = str(p)
    return posixpath.basename(p.rstrip("/")) if is_remote(p) else os.path.basename(
        os.path.normpath(p))


def _resolved(p) -> str:
    """``p`` with links followed when local (what it really names); a bucket path
    normalised (``..``, ``.``, doubled and trailing slashes removed)."""
    p = str(p)
    if is_remote(p):
        proto, rest = p.split("://", 1)
        return f"{proto}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(os.path.expanduser(p))


def _under(inner: str, outer: str) -> bool:
    """Whether resolved path ``inner`` lies inside resolved path ``outer`` (or is it)."""
    if inner == outer:
        return True
    sep = "/" if is_remote(outer) else os.sep
    return inner.startswith(outer.rstrip(sep) + sep)


def check_output_apart(output, inputs, what: str = "output") -> None:
    """Refuse, with one :class:`UserError` line, an ``output`` that equals, contains or
    lies inside one of ``inputs``, compared after resolving links (local paths) or after
    normalising (bucket paths), so that writing or replacing the output can never
    destroy or change an input. Called by every command before it does any work.

    ``inputs``: a mapping label -> path (or list of paths), the label naming the input
    in the message (e.g. ``"--ckpt"``), or an iterable of paths. Empty paths are skipped.
    ``what`` names the output in the message (e.g. ``"--out"``).
    """
    if not output:
        return
    pairs = []
    items = inputs.items() if hasattr(inputs, "items") else ((None, p) for p in inputs)
    for label, value in items:
        for p in ([value] if isinstance(value, (str, os.PathLike)) else value or ()):
            if p:
                pairs.append((label, str(p)))
    out = _resolved(output)
    for label, p in pairs:
        inp = _resolved(p)
        if is_remote(out) != is_remote(inp):
            continue
        named = f"{label} {p}" if label else p
        if out == inp:
            relation = "is the same place as the input"
        elif _under(inp, out):
            relation = "contains the input"
        elif _under(out, inp):
            relation = "lies inside the input"
        else:
            continue
        shown = str(output) if out == str(output) else f"{output} (= {out})"
        raise UserError(f"{what} {shown} {relation} {named}"
                        + ("" if inp == p else f" (= {inp})")
                        + "; choose an output apart from every input")


# ---- errors ------------------------------------------------------------------------

def _is_storage_error(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return True
    kinds = []
    with contextlib.suppress(ImportError):
        import google.auth.exceptions
        kinds.append(google.auth.exceptions.GoogleAuthError)
    with contextlib.suppress(ImportError):
        import gcsfs.retry
        kinds.append(gcsfs.retry.HttpError)
    with contextlib.suppress(ImportError):
        import aiohttp
        kinds.append(aiohttp.ClientError)
    return isinstance(e, tuple(kinds))


# errno -> the reason shown for an OSError (one line, with the path; see docs/storage.md)
_ERRNO_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
    errno.ENAMETOOLONG: "file name too long",
}


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[e.errno]
    if isinstance(e, FileNotFoundError):
        return "not found (no such file, directory or bucket)"
    first = _first_line(e)
    if isinstance(e, PermissionError) or getattr(e, "code", None) == 403 or \
            "403" in first or first.startswith("Forbidden"):
        return "permission denied" + (f" ({_first_line(e)})" if _first_line(e) else "")
    return _first_line(e) or type(e).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


@contextlib.contextmanager
def user_errors(what) -> Iterator[None]:
    """An OSError, fsspec/gcsfs or google-auth error inside the block becomes one
    :class:`UserError` line ``"{what}: {reason}"``."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - filtered below
        if not _is_storage_error(e):
            raise
        raise UserError(f"{what}: {_reason(e)}") from None


def os_error_line(e: OSError) -> str:
    """An OSError as one line ``"PATH: reason"`` (``"PATH -> PATH2: reason"`` for a
    rename; the reason alone when the error names no path): what the CLI prints."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {_reason(e)}" if where else _reason(e)


@contextlib.contextmanager
def named_errors(p) -> Iterator[None]:
    """An OSError inside the block that names no path (``os.write`` on a descriptor,
    a flush) is raised again naming ``p``."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            e.filename = str(p)
        raise


def _remote(p):
    """``user_errors(p)`` for a remote path, nothing for a local one."""
    return user_errors(p) if is_remote(p) else contextlib.nullcontext()


def _fs(p):
    """The fsspec filesystem of a remote path, with its listing cache dropped for ``p``
    (so a listing sees writes made since, by this process or another)."""
    import fsspec
    fs, _ = fsspec.core.url_to_fs(str(p))
    fs.invalidate_cache()
    return fs


def _protocol(p) -> str:
    return str(p).split("://", 1)[0] + "://"


# ---- queries -----------------------------------------------------------------------

def _kind(p) -> str | None:
    """"file", "directory" or None (nothing there) for a remote path. Any other failure
    (no permission, the server unreachable) is one :class:`UserError` line, not taken for
    "nothing there" as fsspec's own ``exists``/``isdir``/``isfile`` would."""
    with user_errors(p):
        try:
            return _fs(p).info(str(p).rstrip("/")).get("type")
        except FileNotFoundError:
            return None


def exists(p) -> bool:
    if not is_remote(p):
        return os.path.exists(os.path.expanduser(p))
    return _kind(p) is not None


def isdir(p) -> bool:
    if not is_remote(p):
        return os.path.isdir(os.path.expanduser(p))
    return _kind(p) == "directory"


def isfile(p) -> bool:
    if not is_remote(p):
        return os.path.isfile(os.path.expanduser(p))
    return _kind(p) == "file"


def listdir(p) -> list[str]:
    """Names of the entries of directory ``p`` (unsorted, like ``os.listdir``)."""
    if not is_remote(p):
        return os.listdir(os.path.expanduser(p))
    with user_errors(p):
        fs = _fs(p)
        base = fs._strip_protocol(str(p)).rstrip("/")
        return [posixpath.basename(e.rstrip("/")) for e in fs.ls(base, detail=False)
                if e.rstrip("/") != base]


def glob(pattern) -> list[str]:
    """Sorted full paths matching ``pattern`` (``*``, ``?``, ``[...]``, ``**``)."""
    if not is_remote(pattern):
        return sorted(_glob.glob(os.path.expanduser(pattern)))
    with user_errors(pattern):
        proto = _protocol(pattern)
        return sorted(proto + m for m in _fs(pattern).glob(str(pattern)))


# ---- reading -----------------------------------------------------------------------

def open(p, mode: str = "r") -> IO:  # noqa: A001 - the module's file opener
    """A file object on ``p`` (text modes in UTF-8), for reading or streaming."""
    binary = "b" in mode
    if not is_remote(p):
        return builtins.open(os.path.expanduser(p), mode,
                             **({} if binary else {"encoding": "utf-8"}))
    with user_errors(p):
        _fs(p)
        return path(p).open(mode, **({} if binary else {"encoding": "utf-8"}))


def read_bytes(p) -> bytes:
    with _remote(p):
        return path(p).read_bytes()


def read_text(p) -> str:
    """``p``'s contents decoded as UTF-8 (UnicodeDecodeError on other bytes)."""
    return read_bytes(p).decode("utf-8")


# ---- writing -----------------------------------------------------------------------

def makedirs(p) -> None:
    """``mkdir -p`` locally; nothing for a bucket prefix (objects need no directories).
    A regular file on the way is an ENOTDIR error naming that file."""
    if is_remote(p):
        return
    p = os.path.expanduser(p)
    try:
        os.makedirs(p, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        check_can_create(p)
        raise


def check_can_create(p) -> None:
    """For a local path, an ENOTDIR error naming the regular file (or link to one) that
    stands where ``p`` or one of its parent folders should be; creates nothing. Commands
    whose output is written only at the end call it before any work."""
    if is_remote(p):
        return
    p = os.path.abspath(os.path.expanduser(p))
    parts = []
    while p and not os.path.lexists(p):
        parts.append(p)
        p = os.path.dirname(p)
    if parts and p and not os.path.isdir(p):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), p)
    if not parts and os.path.lexists(p) and not os.path.isdir(p):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), p)


def temp_sibling(p, tag: str = "tmp") -> str:
    """The temporary a local write of ``p`` goes through: a hidden sibling
    ``.NAME.TAG-HOST-PID``, unique to this process, so a later run recognises (and
    :func:`remove_stale_temps` removes) what a killed one left."""
    p = os.path.abspath(os.path.expanduser(p))
    host = _host()
    return os.path.join(os.path.dirname(p),
                        f".{os.path.basename(p)}.{tag}-{host}-{os.getpid()}")


def _host() -> str:
    return os.uname().nodename.replace("-", "_").replace("/", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(p, tag: str = "tmp") -> None:
    """Remove the temporaries (files or folders, see :func:`temp_sibling`) that writes of
    local ``p`` by processes of this machine no longer running left behind."""
    if is_remote(p):
        return
    p = os.path.abspath(os.path.expanduser(p))
    parent, prefix = os.path.dirname(p), f".{os.path.basename(p)}.{tag}-{_host()}-"
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            stale = os.path.join(parent, name)
            if os.path.isdir(stale) and not os.path.islink(stale):
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(stale)


def write_bytes(p, data: bytes) -> None:
    """The whole file, atomically: readers see the old contents or the new, never part
    (local: a hidden temporary sibling (:func:`temp_sibling`), fsync'd, then
    ``os.replace``; the temporary is removed on any failure, and by the next write of
    ``p`` when a killed process left it; remote: one upload)."""
    if is_remote(p):
        with user_errors(p):
            path(p).write_bytes(data)
        return
    p = os.path.expanduser(p)
    remove_stale_temps(p)
    tmp = temp_sibling(p)
    try:
        with builtins.open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:  # named by the file asked for, not by its temporary
        if e.filename == tmp or (e.filename is None and e.errno is not None):
            e.filename = p
        raise
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def write_text(p, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def append_bytes(p, data: bytes) -> None:
    """Add ``data`` at the end of ``p`` (created if missing). Local: ``O_APPEND`` writes
    (repeated until all is written), fsync'd; on a failure the file is cut back to its
    length before the call, so it never keeps part of ``data``. Remote: the object is
    read and rewritten whole (one writer at a time)."""
    if is_remote(p):
        old = read_bytes(p) if isfile(p) else b""
        write_bytes(p, old + data)
        return
    p = os.path.expanduser(p)
    with named_errors(p):
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            before = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    if n <= 0:
                        raise OSError(errno.EIO, "write wrote nothing", p)
                    view = view[n:]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, before)
                raise
        finally:
            os.close(fd)


def remove(p) -> None:
    """Delete file ``p``; a missing one is fine."""
    if not is_remote(p):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.expanduser(p))
        return
    with user_errors(p):
        fs = _fs(p)
        if fs.isfile(str(p)):
            fs.rm(str(p))


def rmtree(p) -> None:
    """Delete directory ``p`` and everything under it; a missing one is fine."""
    if not is_remote(p):
        shutil.rmtree(os.path.expanduser(p), ignore_errors=True)
        return
    with user_errors(p):
        fs = _fs(p)
        if fs.exists(str(p)):
            fs.rm(str(p).rstrip("/"), recursive=True)
        fs.invalidate_cache()


def _files_under(p) -> list[str]:
    """Paths relative to directory ``p`` of every file under it."""
    if not is_remote(p):
        root = os.path.expanduser(p)
        return sorted(os.path.relpath(os.path.join(d, f), root)
                      for d, _, files in os.walk(root) for f in files)
    fs = _fs(p)
    base = fs._strip_protocol(str(p)).rstrip("/")
    return sorted(posixpath.relpath(f, base) for f in fs.find(base))


def copytree(src, dst, last: str | None = None) -> None:
    """Copy every file under directory ``src`` to the same relative path under ``dst``
    (either may be local or remote; existing files at ``dst`` are overwritten). ``last``:
    a relative path copied after every other file (a completion marker)."""
    if not is_remote(src) and not is_remote(dst) and last is None:
        shutil.copytree(os.path.expanduser(src), os.path.expanduser(dst), dirs_exist_ok=True)
        return
    with user_errors(src if is_remote(src) else dst):
        rels = _files_under(src)
        if last in rels:
            rels = [r for r in rels if r != last] + [last]
        for rel in rels:
            a, b = join(src, *rel.split("/")), join(dst, *rel.split("/"))
            if is_remote(a) and is_remote(b):  # a copy made by the server, no bytes here
                _fs(a).copy(str(a), str(b))
            elif is_remote(b):  # streamed upload
                _fs(b).put_file(os.path.expanduser(a), str(b))
            elif not is_remote(a):
                makedirs(os.path.dirname(b))
                shutil.copyfile(os.path.expanduser(a), b)
            else:  # streamed download
                makedirs(os.path.dirname(b))
                _fs(a).get_file(str(a), b)


def replace_dir(src, dst) -> None:
    """Move directory ``src`` to ``dst`` (which must not exist, or be an empty local
    directory). Local: ``os.replace``, atomic. Remote: every object copied, then ``src``
    deleted: NOT atomic, so callers write a completion marker last and trust only
    directories that have it."""
    if not is_remote(src) and not is_remote(dst):
        os.replace(os.path.expanduser(src), os.path.expanduser(dst))
        return
    copytree(src, dst)
    rmtree(src)


def require_bucket(p) -> None:
    """For a bucket path, one :class:`UserError` line when its bucket does not exist or
    cannot be reached (checked before writing, since writers outside this module, such as
    orbax's tensorstore, would fail later with a traceback); nothing for a local path."""
    if not is_remote(p):
        return
    bucket = _protocol(p) + str(p).split("://", 1)[1].split("/", 1)[0]
    with user_errors(p):
        found = _fs(p).exists(bucket)
    if not found:
        raise UserError(f"{p}: bucket {bucket} does not exist (or is not accessible)")


# TensorStore (orbax's array reads and writes) retries a failed gs:// request 32 times by
# default, up to 32 s apart: a server that is gone holds a command about 15 minutes before
# it fails. Bounded to 6 retries 1 s to 32 s apart (about a minute in all), the order of
# gcsfs's own 6 tries (about 35 s), so a bucket that stays unreachable stops a command
# within a minute or two while a passing outage is still ridden out.
TENSORSTORE_GCS_RETRIES = {"max_retries": 6, "initial_delay": "1s", "max_delay": "32s"}


def bound_array_io_retries() -> None:
    """Give orbax's TensorStore contexts :data:`TENSORSTORE_GCS_RETRIES` (called before
    every orbax checkpoint read or write; orbax builds each context from these defaults)."""
    from orbax.checkpoint._src.serialization import tensorstore_utils

    for context in (tensorstore_utils._BASE_TS_CONTEXT,
                    tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):
        context.setdefault("gcs_request_retries", dict(TENSORSTORE_GCS_RETRIES))
