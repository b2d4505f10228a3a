"""A Hugging Face hub on 127.0.0.1 for the tests and benchmarks (no internet here): the part of the hub's HTTP API
that huggingface_hub calls to list and download a repository's files, with the hub's headers
(X-Repo-Commit, ETag: the sha256 of the content, Content-Length), ranges, and its error codes (401
GatedRepo, 404 RepoNotFound / EntryNotFound). Point huggingface_hub at it with HF_ENDPOINT. It
counts requests, and can misbehave on purpose: stop a download halfway (`hold`) or serve a file
whose bytes do not match its checksum (`corrupt`)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, Path]           # name in the repository -> file on disk
    sha: str = "1" * 40              # the commit a revision resolves to
    gated: bool = False              # 401 without a token


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)   # "METHOD path" of every request
    ranges: list[str] = field(default_factory=list)     # "name Range" of every download asking a range
    hold: dict[str, int] = field(default_factory=dict)  # name -> bytes sent before the download stalls (once)
    holding: threading.Event = field(default_factory=threading.Event)   # set while a download stalls
    release: threading.Event = field(default_factory=threading.Event)   # ends the stall (the connection closes)
    corrupt: set[str] = field(default_factory=set)      # names served with a flipped byte, under the right ETag
    _sha256: dict[Path, str] = field(default_factory=dict)

    def __post_init__(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- answers ------------------------------------------------------------------------------

    def answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{h.command} {path}")
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/.*)?)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo_id = api.group(1) if api else resolve.group(1) if resolve else None
        repo = self.repos.get(repo_id or "")
        if repo is None:
            return self.error(h, 404, "RepoNotFound", f"Repository Not Found for url: {path}.")
        if repo.gated and not h.headers.get("Authorization"):
            return self.error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted.")
        if api and api.group(2) == "tree":
            return self.json(h, [{"type": "file", "path": n, "size": p.stat().st_size, "oid": repo.sha}
                                 for n, p in sorted(repo.files.items())], body)
        if api:
            return self.json(h, {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                                 "gated": "manual" if repo.gated else False,
                                 "siblings": [{"rfilename": n, "size": p.stat().st_size}
                                              for n, p in sorted(repo.files.items())]}, body)
        name = resolve.group(3)
        if name not in repo.files:
            return self.error(h, 404, "EntryNotFound", f"{name} does not exist in {repo_id}", commit=repo.sha)
        path = repo.files[name]
        size = path.stat().st_size
        start, end = 0, size - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if m and body:
            self.ranges.append(f"{name} {m.group(0)}")
            start, end = int(m.group(1)), min(int(m.group(2) or end), end)
        partial = (start, end) != (0, size - 1)
        h.send_response(206 if partial else 200)
        h.send_header("X-Repo-Commit", repo.sha)
        h.send_header("ETag", f'"{self.sha256(path)}"')
        h.send_header("Content-Length", str(end + 1 - start))
        if partial:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        if not body:
            return
        stall = self.hold.pop(name, None) if start == 0 else None
        flip = size // 2 if name in self.corrupt else -1
        with open(path, "rb") as f:
            f.seek(start)
            pos = start
            while pos <= end:
                chunk = bytearray(f.read(min(1 << 20, end + 1 - pos)))
                if pos <= flip < pos + len(chunk):
                    chunk[flip - pos] ^= 0xFF
                if stall is not None and pos + len(chunk) >= stall:
                    # part of the file, then nothing until released, then a closed connection
                    h.wfile.write(chunk[:stall - pos])
                    h.wfile.flush()
                    self.holding.set()
                    self.release.wait(120)
                    h.close_connection = True
                    return
                h.wfile.write(chunk)
                pos += len(chunk)

    def sha256(self, path: Path) -> str:
        """The content's sha256 (the ETag of an LFS file on the hub), computed once per file."""
        if path not in self._sha256:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
            self._sha256[path] = h.hexdigest()
        return self._sha256[path]

    @staticmethod
    def json(h: BaseHTTPRequestHandler, obj, body: bool) -> None:
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def error(h: BaseHTTPRequestHandler, status: int, code: str, message: str, commit: str | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
