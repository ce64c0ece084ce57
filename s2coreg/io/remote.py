"""Data where it lives: URLs of rasters and STAC documents, read through GDAL's virtual file systems.

Every reader of the project opens rasters by a *location*: a local path, or a URL —
``https://…`` / ``http://…`` (GDAL's ``/vsicurl/``), ``s3://bucket/key`` (``/vsis3/``),
``gs://`` (``/vsigs/``), ``az://`` (``/vsiaz/``) or a ``/vsi…/`` path as GDAL writes it. Only the
windows and overview levels a read needs are fetched (HTTP range requests on a Cloud-Optimized
GeoTIFF): nothing is downloaded whole.

The GDAL settings a COG reader should use are set here, in one place (``GDAL_SETTINGS``; a value
already in the environment wins, so a user can override any of them). Credentials and endpoints
are GDAL's own environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_S3_ENDPOINT``, ``AWS_NO_SIGN_REQUEST``, ``GDAL_HTTP_HEADERS`` …), never code or files of
ours. A failed request is retried by GDAL (``GDAL_HTTP_MAX_RETRY``) and an open by us
(``with_retries``), all within a total time bound an open (``within_deadline``: a server that
never answers costs one bound, not GDAL's retries of its timeout); then the input fails with one
line naming the URL.

Trust: hrefs in a remote STAC document are resolved against its URL and must stay remote — a
remote catalog never makes us read a local file (``resolve_href``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from s2coreg.utils import PipelineError

# GDAL configuration for reading COGs over the network (environment values win)
GDAL_SETTINGS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",   # never list a remote "directory" on open
    "CPL_VSIL_CURL_USE_HEAD": "NO",                # one ranged GET instead of HEAD + GET
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",                    # 429 / 5xx answers retried ...
    "GDAL_HTTP_RETRY_DELAY": "1",                  # ... after 1 s, then longer
    "GDAL_HTTP_TIMEOUT": "30",                     # a server that stops answering fails in bounded time
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "VSI_CACHE": "TRUE",                           # a block read twice is fetched once
    "VSI_CACHE_SIZE": str(64 * 2 ** 20),
}
OPEN_RETRIES = 3          # attempts to open a remote raster before its date fails
RETRY_DELAY_S = 0.5       # doubled after each failed attempt
# the most one remote open may take, retries included (GDAL retries a timed-out request itself,
# GDAL_HTTP_MAX_RETRY times: a server that accepts and never answers cost 4 × 30 s + delays =
# 139 s an open); COREGISTER_OPEN_TIMEOUT overrides it
OPEN_DEADLINE_S = 40.0

_SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}


def configure_gdal() -> None:
    """Put ``GDAL_SETTINGS`` into this process's environment where the user has not set them
    (GDAL reads its configuration from there; Dask workers import the readers, so they get them)."""
    for key, value in GDAL_SETTINGS.items():
        os.environ.setdefault(key, value)


def is_remote(location) -> bool:
    """Whether ``location`` is a URL (or a GDAL network path) rather than a local file."""
    text = str(location)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    return scheme in _SCHEMES or text.startswith(("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/"))


def gdal_path(location) -> str:
    """The path GDAL opens for ``location``: a local path as it is, a URL through its virtual file
    system (``https://h/a.tif`` → ``/vsicurl/https://h/a.tif``, ``s3://b/k`` → ``/vsis3/b/k``)."""
    text = str(location)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return "/vsicurl/" + text
    if scheme in _SCHEMES:
        return _SCHEMES[scheme] + text.split("://", 1)[1]
    return text


def name_of(location) -> str:
    """The file name of a path or URL (no query string): ``https://h/T36_B04.tif?x=1`` → ``T36_B04.tif``."""
    text = str(location)
    if is_remote(text):
        return Path(urllib.parse.urlsplit(text.split("/vsicurl/")[-1]).path).name
    return Path(text).name


def parts_of(location) -> list[str]:
    """A path's or URL's components, the file's name last (a URL: its path's, no query string)."""
    text = str(location)
    if is_remote(text):
        text = urllib.parse.urlsplit(text.split("/vsicurl/")[-1]).path
    return [q for q in text.replace("\\", "/").split("/") if q]


def stem_of(location) -> str:
    return Path(name_of(location)).stem


def suffix_of(location) -> str:
    return Path(name_of(location)).suffix.lower()


def parent_of(location) -> str:
    """The folder of a path or URL, as a string."""
    text = str(location)
    if is_remote(text):
        parts = urllib.parse.urlsplit(text)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rsplit("/", 1)[0], "", ""))
    return str(Path(text).parent)


def resolve_href(href: str, base, what: str) -> str:
    """An asset's or item's ``href`` as a location to read: relative hrefs against ``base`` (the
    document's URL or path). A document read from the network may only point at the network:
    a local path or ``file://`` href in it is refused (``what`` names the document)."""
    href = str(href).strip()
    if not href:
        raise PipelineError(f"{what}: an asset has no href")
    base_remote = is_remote(base)
    if urllib.parse.urlsplit(href).scheme.lower() == "file":
        href = urllib.parse.unquote(urllib.parse.urlsplit(href).path)
        local = True
    else:
        local = not is_remote(href)
    if not local:
        return href
    if base_remote:
        if href.startswith("/") or urllib.parse.urlsplit(href).scheme:
            raise PipelineError(f"{what}: names the local file {href}; a remote catalog may only point at "
                                "remote assets (download the catalog to use local files)")
        return urllib.parse.urljoin(str(base), href)
    return str((Path(base).parent / href).resolve())


def read_json(location, what: str = "STAC document") -> dict:
    """A JSON document from a local path or an http(s) URL (bounded retries on network errors)."""
    text = str(location)
    if not is_remote(text):
        try:
            return json.loads(Path(text).read_text())
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{text}: not a readable JSON file ({exc}); give a {what}") from exc
    if urllib.parse.urlsplit(text).scheme.lower() not in ("http", "https"):
        raise PipelineError(f"{text}: a {what} is read over http(s) only; give its https:// URL")
    def fetch():
        with urllib.request.urlopen(text, timeout=float(os.environ.get("GDAL_HTTP_TIMEOUT", 30))) as answer:
            return answer.read()

    def final(exc) -> bool:            # a client error (but 429) will not change on a retry
        return isinstance(exc, urllib.error.HTTPError) and exc.code < 500 and exc.code != 429

    try:
        body = with_retries(fetch, text, final)
    except urllib.error.HTTPError as exc:
        raise PipelineError(f"{text}: cannot be fetched (HTTP {exc.code} {exc.reason}); check the URL") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise PipelineError(f"{text}: cannot be fetched ({getattr(exc, 'reason', exc)}); check the URL and the "
                            "network") from exc
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError as exc:
        raise PipelineError(f"{text}: not JSON ({exc}); give the URL of a {what}") from exc


_RASTER_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"\x00\x00\x00\x0cjP", b"\xffO\xffQ")


def _first_bytes(url: str) -> tuple[bytes, str]:
    """The first 16 bytes of an http(s) URL (one ranged request) and its content type."""
    request = urllib.request.Request(url, headers={"Range": "bytes=0-15"})
    with urllib.request.urlopen(request, timeout=float(os.environ.get("GDAL_HTTP_CONNECTTIMEOUT", 10))) as answer:
        return answer.read(16), str(answer.headers.get("Content-Type", "")).lower()


def sniff(location) -> str:
    """What an http(s) URL without a telling file name holds, from its first bytes (one ranged
    request): ``"raster"`` (TIFF, BigTIFF, JPEG 2000), ``"json"``, or ``"unknown"`` (other
    schemes: ``"raster"``, as GDAL reads them)."""
    text = str(location)
    if urllib.parse.urlsplit(text).scheme.lower() not in ("http", "https"):
        return "raster"
    try:
        head, kind = _first_bytes(text)
    except (urllib.error.URLError, OSError, ValueError):
        return "unknown"
    if head.startswith(_RASTER_MAGIC) or "tiff" in kind or "jp2" in kind:
        return "raster"
    return "json" if "json" in kind or head.lstrip().startswith(b"{") else "unknown"


RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")


def is_raster(location) -> bool:
    """Whether a URL names a raster (by its file name, else by its first bytes: ``sniff``) rather
    than a STAC document."""
    suffix = suffix_of(location)
    if suffix in RASTER_SUFFIXES:
        return True
    return suffix not in (".json", ".geojson") and sniff(location) == "raster"


def diagnose(location) -> str:
    """Why an http(s) URL cannot be read, in a few words (one request): ``HTTP 404 Not Found``,
    ``connection refused``, ``no answer within 10 s`` …; empty for other schemes or when it answers."""
    text = str(location)
    if urllib.parse.urlsplit(text).scheme.lower() not in ("http", "https"):
        return ""
    try:
        head, _ = _first_bytes(text)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        return "no answer in time" if "timed out" in str(reason) else str(reason)
    except (TimeoutError, OSError) as exc:
        return "no answer in time" if "timed out" in str(exc) or isinstance(exc, TimeoutError) else str(exc)
    return "" if head.startswith(_RASTER_MAGIC) else "it answers, but not with a TIFF or JPEG 2000 file"


def with_retries(fn, location, final=lambda exc: False):
    """``fn()`` (a raster open, a fetch); a remote location's failures are retried ``OPEN_RETRIES``
    times with a growing delay (a network hiccup should not drop a date), a local one's are not,
    nor a timeout (a server that did not answer within GDAL_HTTP_TIMEOUT will not in the next
    second) or what ``final(exc)`` says will not change."""
    attempts = OPEN_RETRIES if is_remote(location) else 1
    delay = RETRY_DELAY_S
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 == attempts or "timed out" in str(exc).lower() or "timeout" in str(exc).lower() \
                    or final(exc):
                raise
            time.sleep(delay)
            delay *= 2


def open_deadline() -> float:
    """Seconds one remote open may take in all (``OPEN_DEADLINE_S``, or the environment's
    ``COREGISTER_OPEN_TIMEOUT``)."""
    try:
        return max(1.0, float(os.environ.get("COREGISTER_OPEN_TIMEOUT", OPEN_DEADLINE_S)))
    except ValueError:
        return OPEN_DEADLINE_S


class DeadlineExceeded(Exception):
    """A remote open that did not finish within ``open_deadline()`` seconds."""


def within_deadline(fn, location, seconds: float | None = None):
    """``fn()`` for a remote ``location``, given at most ``seconds`` (``open_deadline()``) in all:
    past that, ``DeadlineExceeded`` (the call goes on in a daemon thread until GDAL's own
    timeouts end it, holding no lock of ours; rasterio releases the GIL while GDAL waits, so
    the caller and other opens run meanwhile). A local location runs ``fn()`` as it is."""
    if not is_remote(location):
        return fn()
    import threading

    seconds = open_deadline() if seconds is None else seconds
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  handed to the caller as it is
            box["error"] = exc

    worker = threading.Thread(target=run, name=f"open {name_of(location)}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise DeadlineExceeded(f"no answer within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


HASH_CHUNK = 4 * 2 ** 20      # bytes read at a time when a local file is hashed whole


def content_key(location, memo: dict | None = None) -> str:
    """A short key that changes when the content at ``location`` changes (for reusing earlier work).

    - A local file: a BLAKE2b digest of its whole content, read in ``HASH_CHUNK`` blocks — any
      pixel edited changes it, whatever the file's size and modification time say (an in-place
      edit may keep both). ``memo`` (a dict the caller keeps for one run) holds each file's key
      by (path, size, modification time, inode), so a file read by several dates of a run is
      hashed once; it is never kept across runs, where exactly such an edit would go unseen.
    - A member of a zip (``/vsizip/ARCHIVE.zip/MEMBER``, a zipped ``.SAFE``): the CRC-32 and size
      the archive records for the member (rewritten with it; reading the archive whole would cost
      a second or two per product).
    - An http(s) URL (or ``/vsicurl/`` one): its ``ETag``, ``Last-Modified`` and length as its server states them (one
      ranged GET of one byte). A server that states neither ``ETag`` nor ``Last-Modified`` (or
      that does not answer) gives the URL no content key: the key is then a fresh random one, the
      same within one run (``memo``) but never again, so its work is never reused across runs.
      ``Last-Modified`` counts in whole seconds: a file rewritten with the same length within the
      same second on a server without ``ETag`` keeps its key.
    - ``s3://``, ``gs://``, ``az://`` and other GDAL network paths: the URL alone (their stores'
      ETags are only reachable through their SDKs): a replaced object keeps its key — give it a
      new name, or a fresh output folder.
    """
    text = str(location)
    if text.startswith("/vsicurl/"):
        text = text[len("/vsicurl/"):]
    if is_remote(text):
        if urllib.parse.urlsplit(text).scheme.lower() not in ("http", "https"):
            return hashlib.sha1(text.encode()).hexdigest()[:16]
        if memo is not None and ("url", text) in memo:
            return memo[("url", text)]
        key = _url_key(text)
        if memo is not None:
            memo[("url", text)] = key
        return key
    if text.startswith("/vsizip/"):
        return _zip_member_key(text)
    st = os.stat(text)
    ident = (os.path.abspath(text), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    if memo is not None and ident in memo:
        return memo[ident]
    h = hashlib.blake2b(digest_size=16)
    with open(text, "rb") as f:
        while block := f.read(HASH_CHUNK):
            h.update(block)
    key = h.hexdigest()[:16]
    if memo is not None:
        memo[ident] = key
    return key


def _url_key(url: str) -> str:
    """``content_key`` of an http(s) URL: its validators and length, or a fresh random key."""
    h = hashlib.sha1(url.encode())
    try:
        request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
        with urllib.request.urlopen(request, timeout=float(os.environ.get("GDAL_HTTP_TIMEOUT", 30))) as answer:
            headers = answer.headers
    except (urllib.error.URLError, OSError, ValueError):
        headers = {}
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    if not etag and not modified:
        return "nokey-" + os.urandom(8).hex()            # no content key: never equal to another run's
    total = str(headers.get("Content-Range", "")).rpartition("/")[2] or headers.get("Content-Length", "")
    h.update(f"{etag}|{modified}|{total}".encode())
    return h.hexdigest()[:16]


def _zip_member_key(path: str) -> str:
    """``content_key`` of ``/vsizip/ARCHIVE.zip/MEMBER``: the member's CRC-32 and size in the archive."""
    import zipfile

    inner = path[len("/vsizip/"):]
    archive, sep, member = inner.partition(".zip/")
    if not sep:
        raise OSError(f"{path}: not a path into a .zip archive")
    try:
        with zipfile.ZipFile(archive + ".zip") as zf:
            info = zf.getinfo(member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise OSError(f"{path}: cannot be read from its archive ({exc})") from exc
    return hashlib.sha1(f"{path}|{info.CRC}|{info.file_size}".encode()).hexdigest()[:16]
