"""Download ``data.uri`` (https://, s3://, gs://, hf://) to ``data.path`` with fsspec.

The file lands atomically: it is written to ``<path>.<host>.<pid>.partial`` and renamed when it
is complete, so ``path`` never holds half a file (and two nodes sharing one output volume never
write the same partial file). A sidecar ``<path>.source.json`` records where it came from (uri,
remote size, ETag / modification time when the store gives them), its sha256 and when it was
fetched. A later run asks the store for the file's size and ETag (a HEAD request for HTTP) and
reuses the copy while they match and the copy still hashes to the recorded sha256; when the
remote file changed (or the copy did) it downloads again.

Backends: HTTP(S) is fsspec's own (aiohttp, in the ``trainer`` extra), ``hf://`` is
huggingface_hub's HfFileSystem, ``s3://`` and ``gs://`` need s3fs / gcsfs (the ``remote-data``
extra; the trainer image has them). Credentials come from each library's usual environment
variables (``HF_TOKEN``, ``AWS_ACCESS_KEY_ID`` ..., ``FSSPEC_GS``); the operator passes them from
the Secrets a TrainingRun names.

Every failure is one :class:`~tac2sol.errors.InvalidInput` that names ``data.uri`` and what to do.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tac2sol.errors import InvalidInput
from tac2sol.trainer.data import sha256_file

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".source.json"
PARTIAL_SUFFIX = ".partial"
# The package that gives fsspec each scheme, for the "pip install" hint.
BACKENDS = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs", "hf": "huggingface_hub"}
_VERSION_KEYS = ("ETag", "etag", "blob_id", "generation", "VersionId")  # changes with the content
_MODIFIED_KEYS = ("Last-Modified", "LastModified", "last_modified", "updated", "mtime")
_TRUE = {"1", "on", "yes", "true"}

Say = Callable[[str], None]


@dataclass(frozen=True)
class Fetched:
    """The local copy of ``uri`` and what the sidecar says about it."""

    uri: str
    path: Path
    sha256: str
    size: int
    reused: bool
    source: dict[str, Any]


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def fetch(uri: str, path: Path, *, progress: bool = True, say: Say | None = None) -> Fetched:
    """Make ``path`` a copy of ``uri``: reuse the copy from an earlier run, or download it."""
    path = Path(path)
    scheme = urlsplit(uri).scheme
    if scheme == "hf" and _hf_offline():
        reused = _reuse_offline(uri, path, say)
        if reused is not None:
            return reused
        raise InvalidInput(
            f"data.uri: {uri}: Hugging Face offline mode is on (HF_HUB_OFFLINE=1) and there is no earlier "
            f"copy at {path}; copy the file here and use data.path, or unset HF_HUB_OFFLINE"
        )
    fs, rpath = _filesystem(uri, scheme)
    remote = _remote(uri, scheme, fs, rpath)
    side = read_sidecar(path)
    if side is not None and _unchanged(uri, side, remote, path) and _intact(path, side):
        message = (
            f"data: reusing {path} (fetched {side.get('fetchedAt')} from {uri}; the remote file is unchanged)"
        )
        log.info("reusing the downloaded dataset", extra={"uri": uri, "path": str(path)})
        (say or _no_say)(message)
        return Fetched(uri, path, str(side["sha256"]), int(side["size"]), True, side)
    return _download(uri, scheme, fs, rpath, path, remote, progress=progress, say=say or _no_say)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar of ``path``, or None when it is missing or unreadable (then: download again)."""
    try:
        data = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- remote side --------------------------------------------------------------------------------


def _filesystem(uri: str, scheme: str) -> tuple[Any, str]:
    import fsspec

    options: dict[str, Any] = {}
    if scheme in ("http", "https"):
        # Honour HTTP(S)_PROXY / NO_PROXY like every other HTTP client in the trainer does.
        configured = dict(fsspec.config.conf.get(scheme, {}).get("client_kwargs", {}))
        options["client_kwargs"] = {"trust_env": True, **configured}
    try:
        fs, rpath = fsspec.core.url_to_fs(uri, **options)
    except ImportError as exc:
        package = BACKENDS.get(scheme, f"the fsspec backend for {scheme}://")
        raise InvalidInput(
            f"data.uri: {scheme}:// needs the {package} package, which is not installed here ({exc}); "
            f"pip install {package} (or pip install 'tac2sol[remote-data]'; the trainer image has it)"
        ) from None
    except ValueError as exc:  # e.g. an hf:// path that names no repository
        raise InvalidInput(f"data.uri: {uri}: {exc}; give the URI of one file") from None
    return fs, rpath


def _remote(uri: str, scheme: str, fs: Any, rpath: str) -> dict[str, Any]:
    """Size, version (ETag ...) and modification time of the remote file, as the store says."""
    try:
        info = fs.info(rpath)
    except Exception as exc:
        explained = _explain(uri, scheme, exc, "ask for")
        if explained is exc:
            raise  # not a failure we know how to explain: a bug to see with its traceback
        raise explained from None
    if info.get("type") == "directory":
        raise InvalidInput(f"data.uri: {uri} is a directory; give the URI of one JSONL file")
    size = info.get("size")
    return {
        "size": int(size) if size is not None else None,
        "version": _first(info, _VERSION_KEYS),
        "modified": _first(info, _MODIFIED_KEYS),
    }


def _first(info: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = info.get(key)
        if value not in (None, ""):
            return value.isoformat() if isinstance(value, dt.datetime) else str(value)
    return None


def _unchanged(uri: str, side: dict[str, Any], remote: dict[str, Any], path: Path) -> bool:
    """The sidecar describes ``uri`` as the store describes it now, and the local file is whole."""
    if side.get("uri") != uri or not side.get("sha256") or not isinstance(side.get("size"), int):
        return False
    try:
        if path.stat().st_size != side["size"]:
            return False
    except OSError:
        return False
    known = [k for k in ("size", "version", "modified") if remote[k] is not None]
    if not known:
        log.info("the store gives no size, version or time: downloading again", extra={"uri": uri})
        return False
    return all(side.get(k) == remote[k] for k in known)


def _intact(path: Path, side: dict[str, Any]) -> bool:
    """The local copy still has the bytes that were downloaded (one read; preflight reads it next)."""
    if sha256_file(path) == side["sha256"]:
        return True
    log.warning("the local copy changed since its download: downloading again", extra={"path": str(path)})
    return False


# --- download -----------------------------------------------------------------------------------


def _download(
    uri: str,
    scheme: str,
    fs: Any,
    rpath: str,
    path: Path,
    remote: dict[str, Any],
    *,
    progress: bool,
    say: Say,
) -> Fetched:
    from fsspec.callbacks import TqdmCallback

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(
            f"data.path: cannot create {path.parent} for the download of data.uri ({exc.strerror or exc}); "
            "choose another output_dir or data.path"
        ) from None
    host = socket.gethostname()
    for stale in path.parent.glob(f"{path.name}.{host}.*{PARTIAL_SUFFIX}"):  # from a killed run here
        stale.unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)  # the old copy is no longer vouched for
    partial = path.with_name(f"{path.name}.{host}.{os.getpid()}{PARTIAL_SUFFIX}")
    size = remote["size"]
    say(f"data: downloading {uri} ({_mib(size)}) to {path}")
    log.info("downloading the dataset", extra={"uri": uri, "path": str(path), "bytes": size})
    started = time.monotonic()
    bar = TqdmCallback(
        tqdm_kwargs={
            "desc": "download",
            "unit": "B",
            "unit_scale": True,
            "unit_divisor": 1024,
            "disable": not progress,
            "mininterval": 2.0,
        }
    )
    try:
        try:
            fs.get_file(rpath, str(partial), callback=bar)
        except Exception as exc:
            got = partial.stat().st_size if partial.exists() else 0
            explained = _explain(uri, scheme, exc, "download", got=got, size=size)
            if explained is exc:
                raise
            raise explained from None
        got = partial.stat().st_size
        if size is not None and got != size:
            raise InvalidInput(
                f"data.uri: {uri}: the download stopped after {got} of {size} bytes; run again to retry "
                f"(nothing was kept at {path})"
            )
        digest = sha256_file(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        bar.close()
    source = {
        "uri": uri,
        "size": got,
        "version": remote["version"],
        "modified": remote["modified"],
        "sha256": digest,
        "fetchedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    _write_atomic(sidecar_path(path), json.dumps(source, indent=2) + "\n")
    seconds = time.monotonic() - started
    say(f"data: {uri} -> {path} ({_mib(got)} in {seconds:.1f} s, sha256 {digest[:12]})")
    log.info("downloaded the dataset", extra={"uri": uri, "path": str(path), "bytes": got, "sha256": digest})
    return Fetched(uri, path, digest, got, False, source)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _mib(size: int | None) -> str:
    return "size unknown" if size is None else f"{size / 2**20:.1f} MiB"


def _no_say(_: str) -> None:
    return None


# --- offline ------------------------------------------------------------------------------------


def _hf_offline() -> bool:
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in names):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _reuse_offline(uri: str, path: Path, say: Say | None) -> Fetched | None:
    """Offline, an earlier complete copy of the same uri is used as it is (nothing to compare with)."""
    side = read_sidecar(path)
    if side is None or side.get("uri") != uri or not side.get("sha256"):
        return None
    try:
        if path.stat().st_size != side.get("size") or not _intact(path, side):
            return None
    except OSError:
        return None
    (say or _no_say)(
        f"data: offline mode: reusing {path} (fetched {side.get('fetchedAt')} from {uri}) unchecked"
    )
    log.info("reusing the downloaded dataset (offline)", extra={"uri": uri, "path": str(path)})
    return Fetched(uri, path, str(side["sha256"]), int(side["size"]), True, side)


# --- errors -------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an error (aiohttp, httpx / huggingface_hub, botocore), if any."""
    for e in _chain(exc):
        for value in (
            getattr(e, "status", None),
            getattr(e, "status_code", None),
            getattr(getattr(e, "response", None), "status_code", None),
        ):
            if isinstance(value, int) and 100 <= value < 600:
                return value
    return None


def _network_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    try:
        import aiohttp

        found += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    try:
        import httpx

        found.append(httpx.TransportError)
    except ImportError:
        pass
    try:
        import requests

        found.append(requests.exceptions.ConnectionError)
    except ImportError:
        pass
    return tuple(found)


_CREDENTIALS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible "
    "store); in a TrainingRun put them in the Secret named by spec.dataset.credentialsSecret",
    "gs": 'set GOOGLE_APPLICATION_CREDENTIALS (a service-account key file) or FSSPEC_GS=\'{"token": <key '
    "JSON>}'; in a TrainingRun put FSSPEC_GS in the Secret named by spec.dataset.credentialsSecret "
    "(or use Workload Identity)",
    "hf": "set HF_TOKEN to a token that can read the dataset (accept its terms first if it is gated); "
    "in a TrainingRun name its Secret in spec.hfTokenSecret",
}
_HTTP_CREDENTIALS = (
    "use a URL that needs no login (a public or presigned URL), or copy the file and use data.path"
)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _explain(
    uri: str, scheme: str, exc: BaseException, doing: str, got: int = 0, size: int | None = None
) -> BaseException:
    """One InvalidInput for a failure to ``ask for`` / ``download`` ``uri``; unknown errors stay as is."""
    if isinstance(exc, InvalidInput):
        return exc
    status = _status(exc)
    chain = list(_chain(exc))
    names = " ".join(type(e).__name__ for e in chain)
    reason = _describe(exc)
    if any(type(e).__name__ == "OfflineModeIsEnabled" for e in chain):
        return InvalidInput(
            f"data.uri: {uri}: Hugging Face offline mode is on (HF_HUB_OFFLINE=1); copy the file here "
            "and use data.path, or unset HF_HUB_OFFLINE"
        )
    if status in (401, 403) or any(isinstance(e, PermissionError) for e in chain) or "Credential" in names:
        hint = _CREDENTIALS.get(scheme, _HTTP_CREDENTIALS)
        code = f"HTTP {status}" if status else reason
        return InvalidInput(f"data.uri: {uri}: access denied ({code}); {hint}")
    if status == 404:
        return InvalidInput(f"data.uri: {uri} was not found (HTTP 404); check the URI")
    network = next((e for e in chain if isinstance(e, _network_errors())), None)
    if network is not None:
        where = urlsplit(uri).netloc or uri
        reason = _describe(network)
        if doing == "download" and got:
            return InvalidInput(
                f"data.uri: {uri}: the download stopped after {got} of {size if size is not None else '?'} "
                f"bytes ({reason}); run again to retry (nothing was kept at data.path)"
            )
        return InvalidInput(
            f"data.uri: cannot reach {where} to {doing} {uri} ({reason}); check the network, DNS and proxy "
            "(HTTPS_PROXY) from this machine, or copy the file and use data.path"
        )
    if isinstance(exc, FileNotFoundError) or "NotFound" in names:
        return InvalidInput(f"data.uri: {uri} was not found ({reason}); check the URI")
    if status is not None:
        return InvalidInput(f"data.uri: {uri}: the server answered HTTP {status} ({reason}); try again later")
    return exc
