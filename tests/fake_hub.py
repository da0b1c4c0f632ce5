"""A fake Hugging Face Hub for tests: a stand-in at the network edge that speaks exactly the HTTP API huggingface_hub
2.4.0 uses for ``HfApi.create_repo(repo, exist_ok=True)`` and ``HfApi.upload_folder`` (with hf_xet installed, its
pipelined upload, ``_upload_pipeline.py``):

- ``POST /api/repos/create``: ``{"name", "organization", ...}`` -> ``{"url"}``, 409 if the repo exists;
- ``POST /api/validate-yaml``: the README.md's metadata -> ``{"errors": [], "warnings": []}``;
- ``POST /api/models/{repo}/preupload/{rev}``: ``{"files": [{path, sample, size}]}`` -> each file's upload mode;
- ``POST /api/models/{repo}/commit/{rev}``: ndjson, a header line then one line per file with its base64 content ->
  ``{"commitUrl", "commitOid"}``.

Every file is answered "regular" at preupload, so its bytes ride the commit itself. A real Hub sends binary files
(the ``.safetensors``) through xet storage instead, which this fake does not implement: it checks what the client
sends and how, not the Hub's storage. The fake says it is one: every response carries ``X-Fake-Hub: 1`` and its
commit URLs are on its own ``127.0.0.1`` endpoint.

``FakeHub.repos`` holds what was committed (repo -> path -> bytes); ``FakeHub.requests`` every request's method,
path and headers. A repo in ``FakeHub.forbidden`` is created but its commits are refused with 403, in an error that
quotes the request's Authorization header."""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, forbidden: tuple[str, ...] = ("someone/forbidden",)):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.forbidden = set(forbidden)
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer has a Content-Length

            def log_message(self, *args):  # quiet: the test reads the requests from `hub.requests`
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hub._lock:
                    hub.requests.append(("POST", self.path, dict(self.headers.items())))
                    status, answer = hub._answer(self.path.split("?")[0], body, self.headers.get("Authorization"))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Fake-Hub", "1")
                if status >= 400:  # where the Hub puts an error, which huggingface_hub quotes
                    self.send_header("X-Error-Message", answer["error"])
                if status == 404:
                    self.send_header("X-Error-Code", "RepoNotFound")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # nothing the upload needs: a call this fake does not know is an error
                with hub._lock:
                    hub.requests.append(("GET", self.path, dict(self.headers.items())))
                self.send_response(501)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _answer(self, path: str, body: bytes, auth: str | None) -> tuple[int, dict]:
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            if repo in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo}"}
            self.repos[repo] = {}
            return 200, {"url": f"{self.endpoint}/{repo}", "name": repo}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        parts = path.split("/")  # "", "api", "models", org, name, "preupload"|"commit", rev
        if len(parts) != 7 or parts[:3] != ["", "api", "models"] or parts[5] not in ("preupload", "commit"):
            return 501, {"error": f"not faked: POST {path}"}
        repo = f"{parts[3]}/{parts[4]}"
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        if parts[5] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                   for f in files]}
        if repo in self.forbidden:
            # quotes the credentials it was sent, as an error text may: the client must not pass them on
            return 403, {"error": f"You don't have the rights to create a commit in {repo} (authorization: {auth})"}
        lines = [json.loads(x) for x in body.splitlines() if x.strip()]
        if not lines or lines[0]["key"] != "header":
            return 400, {"error": "a commit starts with its header line"}
        for line in lines[1:]:
            v = line["value"]
            if line["key"] != "file" or v.get("encoding") != "base64":
                return 501, {"error": f"not faked: a commit line {line['key']}"}
            self.repos[repo][v["path"]] = base64.b64decode(v["content"])
        oid = hashlib.sha1(body).hexdigest()
        return 200, {"commitUrl": f"{self.endpoint}/{repo}/commit/{oid}", "commitOid": oid}

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
