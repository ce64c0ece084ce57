"""A local HTTP server for tests and benchmarks: files with Range requests (as a COG host
answers), and optionally a minimal STAC API (``--stac-api``: a landing page with the item-search
conformance class and ``/search``, GET and POST, over the Items found in the folder).

    python tests/local_server.py FOLDER [--stac-api] [--log BYTES.log] [--hang GLOB]
                                        [--validators etag|last-modified|none]

Prints ``PORT`` on its first line once it listens (port chosen by the system). With ``--log``,
appends ``<path> <bytes sent>`` a request, so a benchmark can count what a reader fetched. With
``--hang GLOB``, a request whose path matches it is accepted and never answered (a hung server).
``--validators``: what a file's answer says of its version — ``last-modified`` (the default, as
Python's server does), ``etag`` (also an ``ETag`` of its content, as S3 and most CDNs) or
``none`` (neither, as some dynamic servers).

It runs as its own process on purpose: GDAL reading over HTTP from a server in the same Python
process deadlocks (the read holds the GIL the server needs).
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import sys
import threading
import time
import urllib.parse
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path

from RangeHTTPServer import RangeRequestHandler

CONFORMANCE = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]


class Counting:
    """A write-only stream that counts what goes through it."""

    def __init__(self, stream):
        self.stream, self.sent = stream, 0

    def write(self, data):
        self.sent += len(data)
        return self.stream.write(data)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Handler(RangeRequestHandler):
    log_file: str | None = None
    stac_api: bool = False
    hang: str | None = None
    validators: str = "last-modified"
    lock = threading.Lock()

    def send_header(self, keyword, value):
        if self.validators == "none" and keyword.lower() in ("last-modified", "etag"):
            return
        super().send_header(keyword, value)

    def end_headers(self):
        path = Path(self.translate_path(self.path)) if getattr(self, "path", None) else None
        if self.validators == "etag" and path is not None and path.is_file():
            super().send_header("ETag", f'"{hashlib.sha1(path.read_bytes()).hexdigest()}"')
        super().end_headers()

    def setup(self):
        super().setup()
        self.wfile = Counting(self.wfile)

    def log_message(self, *args):                      # quiet
        pass

    def finish(self):
        if self.log_file and getattr(self, "path", None):
            with self.lock, open(self.log_file, "a") as f:
                f.write(f"{urllib.parse.urlsplit(self.path).path} {self.wfile.sent}\n")
        super().finish()

    # ------------------------------------------------------------------ STAC API
    def _json(self, doc: dict, status: int = 200):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _root(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def _items(self) -> list[dict]:
        items = []
        for p in sorted(Path(self.directory).rglob("*.json")):
            try:
                doc = json.loads(p.read_text())
            except ValueError:
                continue
            if doc.get("type") == "Feature" and "assets" in doc:
                base = f"{self._root()}/{p.parent.relative_to(self.directory).as_posix()}/"
                for asset in doc["assets"].values():    # hrefs as an API serves them: absolute URLs
                    asset["href"] = urllib.parse.urljoin(base, asset["href"])
                items.append(doc)
        return items

    def _search(self, params: dict):
        items = self._items()
        if params.get("collections"):
            wanted = params["collections"]
            wanted = wanted.split(",") if isinstance(wanted, str) else wanted
            items = [i for i in items if i.get("collection") in wanted]
        if params.get("bbox"):
            w, s, e, n = [float(v) for v in (params["bbox"].split(",") if isinstance(params["bbox"], str)
                                             else params["bbox"])]
            items = [i for i in items if not i.get("bbox") or (i["bbox"][0] <= e and i["bbox"][2] >= w
                                                               and i["bbox"][1] <= n and i["bbox"][3] >= s)]
        if params.get("datetime"):
            start, _, end = str(params["datetime"]).partition("/")
            when = lambda i: str(i.get("properties", {}).get("datetime", ""))[:10]   # noqa: E731
            items = [i for i in items if (start in ("", "..") or when(i) >= start[:10])
                     and (end in ("", "..") or when(i) <= end[:10])]
        self._json({"type": "FeatureCollection", "features": items, "numberReturned": len(items),
                    "links": [{"rel": "root", "href": f"{self._root()}/"}]})

    def _hangs(self) -> bool:
        """Whether this request is one never to answer (``--hang``): the connection held open."""
        if self.hang and fnmatch.fnmatch(urllib.parse.urlsplit(self.path).path, self.hang):
            time.sleep(3600)
            return True
        return False

    def do_HEAD(self):
        if not self._hangs():
            super().do_HEAD()

    def do_GET(self):
        if self._hangs():
            return
        if self.stac_api:
            parts = urllib.parse.urlsplit(self.path)
            if parts.path in ("", "/"):
                root = self._root()
                return self._json({"type": "Catalog", "stac_version": "1.0.0", "id": "test-api",
                                   "description": "a STAC API stub for tests", "conformsTo": CONFORMANCE,
                                   "links": [{"rel": "self", "href": f"{root}/"}, {"rel": "root", "href": f"{root}/"},
                                             {"rel": "search", "href": f"{root}/search", "method": "GET",
                                              "type": "application/geo+json"},
                                             {"rel": "search", "href": f"{root}/search", "method": "POST",
                                              "type": "application/geo+json"}]})
            if parts.path == "/conformance":
                return self._json({"conformsTo": CONFORMANCE})
            if parts.path == "/search":
                return self._search({k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()})
        return super().do_GET()

    def do_POST(self):
        if self.stac_api and urllib.parse.urlsplit(self.path).path == "/search":
            length = int(self.headers.get("Content-Length", 0))
            return self._search(json.loads(self.rfile.read(length) or b"{}"))
        self.send_error(404)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A reader that hangs up mid-answer (GDAL, once it has the bytes it wanted) is normal."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--stac-api", action="store_true")
    parser.add_argument("--log")
    parser.add_argument("--hang", metavar="GLOB", help="never answer requests whose path matches")
    parser.add_argument("--validators", choices=("last-modified", "etag", "none"), default="last-modified")
    args = parser.parse_args(argv)
    Handler.log_file, Handler.stac_api, Handler.hang = args.log, args.stac_api, args.hang
    Handler.validators = args.validators
    server = Server(("127.0.0.1", 0), partial(Handler, directory=str(Path(args.folder).resolve())))
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
