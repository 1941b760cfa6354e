"""Local paths and Cloud Storage (`gs://`) through one file-system layer.

Every file the project reads or writes goes through this module (fsspec:
the local file system, or gcsfs for `gs://`), or through orbax, which gets
its paths from here (etils.epath on the same gcsfs; tensorstore for the
arrays). A path of any other scheme (`s3://`, `http://`, ...) is refused
with one line (`errors.PathError`), never taken for a local folder named
after it.

Object stores have no rename and no append, so writes are whole objects:
`atomic_write` streams to the object, which appears only when the upload
completes (a killed process leaves nothing), and on a local disk writes
`<path>.tmp` and renames it.

Emulators: with `STORAGE_EMULATOR_HOST=http://HOST:PORT` in the environment
(the variable Google's clients and gcsfs read) every `gs://` path goes to
that server. On the first `gs://` path this module also points tensorstore
at it (`TENSORSTORE_GCS_HTTP_URL` and a testing token), makes the clients
anonymous, turns off gcsfs's bucket-layout probe (gRPC, which emulators do
not speak: a 60 s wait per call) and keeps etils.epath on gcsfs even where
TensorFlow is installed. Without the variable nothing is changed: real GCS
with the machine's default credentials.
"""
from __future__ import annotations

import contextlib
import functools
import glob as glob_lib
import io
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
from typing import IO, Any, Iterator

import fsspec
import numpy as np
from etils import epath as _epath

from matpac_jax import errors

SCHEMES = ("gs",)
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# Ranged reads in flight at once per `read_ranges` call (gcsfs runs them on
# its asyncio loop). A shard record is ~100-200 KB and an object store
# answers a small read in tens of ms, so one host's batch of ~1000 crops per
# step needs on the order of a hundred requests in flight to keep up
# (docs/BENCHMARKS.md, "Reading from Cloud Storage").
READ_CONCURRENCY = 128

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str | os.PathLike) -> str | None:
    """'gs' for `gs://...`, None for a local path (or `file://`)."""
    match = _SCHEME.match(os.fspath(path))
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def is_remote(path: str | os.PathLike) -> bool:
    return scheme(path) is not None


def check(path: str | os.PathLike, what: str = "path") -> str:
    """The path as a string, if this layer can read and write it; else one
    `errors.PathError` line naming it. `file://` becomes the local path."""
    text = os.fspath(path)
    kind = scheme(text)
    if kind is None:
        if slip := re.match(r"^(gs|s3|gcs|az|hf|https?):/(?!/)", text, re.I):
            raise errors.PathError(f"{what} {text}: did you mean {slip.group(1)}://...? "
                                   "(one slash would make a local folder of that name)")
        return text[len("file://"):] if text.lower().startswith("file://") else text
    if kind not in SCHEMES:
        raise errors.PathError(f"{what} {text}: the {kind}:// scheme is not supported "
                               "(paths are local or gs://BUCKET/...)")
    if not re.match(r"^gs://[^/]+", text):
        raise errors.PathError(f"{what} {text}: a gs:// path needs a bucket (gs://BUCKET/...)")
    configure()
    return text


def configure() -> None:
    """Points every Cloud Storage client at `STORAGE_EMULATOR_HOST` when it is
    set (before gcsfs and tensorstore first read their settings); once per
    value of the variable."""
    _configure(os.environ.get(EMULATOR_ENV, ""))


def _without_traceback(record: logging.LogRecord) -> bool:
    """gcsfs logs each failed request with its whole traceback; its message is
    enough (the error the caller sees says what to do)."""
    record.exc_info = record.exc_text = None
    return True


@functools.lru_cache(maxsize=None)
def _configure(host: str) -> None:
    logging.getLogger("gcsfs").addFilter(_without_traceback)
    os.environ.setdefault("EPATH_USE_TF", "false")  # one layer: gcsfs, not tf.io.gfile
    # No cached listings in any gcsfs client (orbax's through epath too): other
    # processes and hosts write the same folders (checkpoint steps, shards).
    for name in ("gs", "gcs"):
        fsspec.config.conf.setdefault(name, {})["use_listings_cache"] = False
    if host in ("", "default"):
        return
    url = host if host.startswith(("http://", "https://")) else f"http://{host}"
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url  # follows the variable
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    import gcsfs.core  # here: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when imported

    for name in ("gs", "gcs"):
        fsspec.config.conf[name]["token"] = "anon"
        # The plain client even if gcsfs was imported before the probe was off.
        fsspec.register_implementation(name, gcsfs.core.GCSFileSystem, clobber=True)


def filesystem(path: str | os.PathLike):
    """The fsspec file system of `path` (gcsfs for gs://, else the local one)."""
    if is_remote(check(path)):
        return fsspec.filesystem("gs")
    return fsspec.filesystem("file")


def path(p: str | os.PathLike) -> _epath.Path:
    """An etils.epath.Path (what orbax takes) of a checked path."""
    return _epath.Path(check(p))


def join(base: str | os.PathLike, *parts: str) -> str:
    base = os.fspath(base)
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def parent(p: str | os.PathLike) -> str:
    p = os.fspath(p).rstrip("/") if is_remote(p) else os.fspath(p)
    return posixpath.dirname(p) if is_remote(p) else os.path.dirname(os.path.abspath(p))


def absolute(p: str | os.PathLike) -> str:
    """gs:// paths as they are; local ones made absolute (for manifests, configs)."""
    p = check(p)
    return p if is_remote(p) else os.path.abspath(p)


def _kind(p: str) -> str | None:
    """'file', 'directory' or None (missing) of a gs:// path; a server that does
    not answer (network, credentials) is one errors.PathError line, not a
    'no such file' (gcsfs's own exists/isdir would say False)."""
    try:
        return filesystem(p).info(p).get("type")
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001  (aiohttp, auth and HTTP errors alike)
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise errors.PathError(
            f"{p}: Cloud Storage refused or did not answer ({reason}); check the network and the "
            "credentials (a TPU VM's service account, or `gcloud auth "
            "application-default login`)") from None


def exists(p: str | os.PathLike) -> bool:
    p = check(p)
    return _kind(p) is not None if is_remote(p) else os.path.exists(p)


def isdir(p: str | os.PathLike) -> bool:
    p = check(p)
    return _kind(p) == "directory" if is_remote(p) else os.path.isdir(p)


def isfile(p: str | os.PathLike) -> bool:
    p = check(p)
    return _kind(p) == "file" if is_remote(p) else os.path.isfile(p)


def size(p: str | os.PathLike) -> int:
    p = check(p)
    return int(filesystem(p).size(p)) if is_remote(p) else os.path.getsize(p)


def version(p: str | os.PathLike) -> str:
    """What changes when the file is rewritten: size and mtime (locally) or
    size and generation (gs://), for cache keys."""
    p = check(p)
    if is_remote(p):
        info = filesystem(p).info(p)
        return f"{info.get('size')}:{info.get('generation') or info.get('updated')}"
    st = os.stat(p)
    return f"{st.st_size}:{st.st_mtime_ns}"


def find(root: str | os.PathLike, suffixes: tuple[str, ...] | None = None,
         detail: bool = False) -> list[str] | dict[str, dict]:
    """Every file under `root` (recursive, sorted), optionally only those whose
    lower-cased name ends with one of `suffixes`. `detail`: {path: {'size'}}.
    One listing call per 1000 objects on gs://, not one per file."""
    root = check(root)
    if is_remote(root):
        found = filesystem(root).find(root, detail=True)
        items = {f"gs://{k}": {"size": int(v.get("size") or 0)} for k, v in found.items()
                 if v.get("type") != "directory"}
    else:
        items = {}
        for folder, _, files in os.walk(root):
            for f in files:
                full = os.path.join(folder, f)
                items[full] = {"size": os.path.getsize(full)} if detail else {}
    keep = sorted(k for k in items
                  if suffixes is None or k.lower().endswith(tuple(s.lower() for s in suffixes)))
    return {k: items[k] for k in keep} if detail else keep


def sizes(paths: list[str]) -> dict[str, int | None]:
    """Byte size of each path (None: missing); on gs:// from one listing per
    folder, not one request per file."""
    checked = {p: check(p) for p in paths}
    listed: dict[str, dict] = {}
    for folder in sorted({parent(c) for c in checked.values() if is_remote(c)}):
        listed.update(find(folder, detail=True))
    return {p: (listed.get(c, {}).get("size") if is_remote(c)
                else os.path.getsize(c) if os.path.isfile(c) else None)
            for p, c in checked.items()}


def listdir(p: str | os.PathLike) -> list[str]:
    """The paths directly inside a folder, sorted."""
    p = check(p)
    if is_remote(p):
        return sorted(f"gs://{x}" for x in filesystem(p).ls(p, detail=False)
                      if f"gs://{x}".rstrip("/") != p.rstrip("/"))
    return [os.path.join(p, n) for n in sorted(os.listdir(p))]


def glob(pattern: str) -> list[str]:
    pattern = check(pattern)
    if is_remote(pattern):
        return sorted(f"gs://{p}" for p in filesystem(pattern).glob(pattern))
    return sorted(glob_lib.glob(pattern))


def makedirs(p: str | os.PathLike) -> None:
    """A local folder (and its parents); nothing on gs://, where folders are
    name prefixes."""
    p = check(p)
    if not is_remote(p):
        os.makedirs(p, exist_ok=True)


def open_file(p: str | os.PathLike, mode: str = "rb", **kwargs) -> IO:
    """Open for reading (or appending/writing a local file); use `atomic_write`
    to write a file that must never be seen half-written."""
    p = check(p)
    if is_remote(p):
        return filesystem(p).open(p, mode, **kwargs)
    return open(p, mode, **kwargs)  # noqa: SIM115


def read_bytes(p: str | os.PathLike) -> bytes:
    p = check(p)
    if is_remote(p):
        return filesystem(p).cat_file(p)
    with open(p, "rb") as f:
        return f.read()


def read_text(p: str | os.PathLike) -> str:
    return read_bytes(p).decode("utf-8")


def read_json(p: str | os.PathLike) -> Any:
    return json.loads(read_bytes(p))


def read_many(paths: list[str]) -> list[bytes | Exception]:
    """Whole files, concurrently on gs:// (one request each, `READ_CONCURRENCY`
    in flight); an unreadable one is its exception in the list."""
    if not paths:
        return []
    if not is_remote(paths[0]):
        out: list[bytes | Exception] = []
        for p in paths:
            try:
                out.append(read_bytes(p))
            except OSError as e:
                out.append(e)
        return out
    fs = filesystem(paths[0])
    got = fs.cat([check(p) for p in paths], on_error="return", batch_size=READ_CONCURRENCY)
    return [got.get(fs._strip_protocol(p), FileNotFoundError(p)) for p in paths]


def read_ranges(paths: list[str], starts: list[int], ends: list[int]
                ) -> list[bytes | Exception]:
    """Byte ranges [start, end) of gs:// objects, each its bytes or the exception
    that stopped it, all requested at once (gcsfs, `READ_CONCURRENCY` in
    flight). Local files are read with os.pread where they are open
    (shards.ShardSource)."""
    if not paths:
        return []
    checked = {p: check(p) for p in set(paths)}  # a batch names few shards
    return filesystem(paths[0]).cat_ranges([checked[p] for p in paths], list(starts),
                                           list(ends), on_error="return",
                                           batch_size=READ_CONCURRENCY)


@contextlib.contextmanager
def atomic_write(p: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """A file that appears under `p` only when the block ends without error:
    locally `<p>.tmp` renamed (fsync'd), on gs:// an upload committed on close
    and cancelled on error."""
    p = check(p)
    if is_remote(p):
        f = filesystem(p).open(p, mode, **kwargs)
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard()  # never commit a partial object
            raise
        f.close()
        return
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    tmp = p + ".tmp"
    f = open(tmp, mode, **kwargs)  # noqa: SIM115
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, p)
    except BaseException:
        f.close()
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    with atomic_write(p, "wb") as f:
        f.write(data)


def write_text(p: str | os.PathLike, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def write_json(p: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    write_text(p, json.dumps(obj, indent=indent))


def write_npy(p: str | os.PathLike, array: np.ndarray) -> None:
    """np.save to a local or gs:// path (whole, atomically)."""
    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes(p, buf.getvalue())


def write_npz(p: str | os.PathLike, **arrays) -> None:
    """np.savez to a local or gs:// path (whole, atomically)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(p, buf.getvalue())


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """src -> dst between any two supported places (streamed, atomic at dst)."""
    with open_file(src, "rb") as fin, atomic_write(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 8 << 20)


def remove(p: str | os.PathLike, recursive: bool = False) -> None:
    """Delete a file (or a whole folder with `recursive`); missing is fine."""
    p = check(p)
    if is_remote(p):
        fs = filesystem(p)
        if fs.exists(p):
            fs.rm(p, recursive=recursive)
    elif recursive:
        shutil.rmtree(p, ignore_errors=True)
    elif os.path.exists(p):
        os.remove(p)


@contextlib.contextmanager
def local_file(p: str | os.PathLike) -> Iterator[str]:
    """A local file name with `p`'s bytes, for readers that need one (audioread,
    zipfile on a whole checkpoint): `p` itself when local, else a temporary copy."""
    p = check(p)
    if not is_remote(p):
        yield p
        return
    suffix = os.path.splitext(p)[1]
    with tempfile.TemporaryDirectory(prefix="matpac_jax_") as tmp:
        local = os.path.join(tmp, "file" + suffix)
        filesystem(p).get_file(p, local)
        yield local


def display(p: str | os.PathLike) -> str:
    """How a path is shown in messages: as given for gs://, absolute locally."""
    return os.fspath(p) if is_remote(p) else os.path.abspath(os.fspath(p))
