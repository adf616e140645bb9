"""A small Hub-compatible HTTP server for offline tests (stdlib only, in memory).

It implements only the part of the Hugging Face Hub HTTP API that the ``huggingface_hub`` client (2.x) calls in the
tests (docs/guides/hub.md, "Tested offline"), with the Hub's semantics where the client depends on them:

- ``create_repo`` / ``init_hf_repo``: ``POST /api/repos/create`` (409 + url when it exists, ``private``);
- ``upload_folder`` / ``create_commit`` / ``ModelCard.push_to_hub``: ``POST /api/validate-yaml``,
  ``POST .../preupload/{rev}`` (regular vs LFS by .gitattributes pattern, binary sample or size; the remote oid so
  unchanged files are skipped), ``POST /{repo}.git/info/lfs/objects/batch`` + ``PUT`` of each object (sha256
  checked), ``POST .../commit/{rev}`` (NDJSON: header, file, lfsFile, deletedFile, deletedFolder; parentCommit);
- ``create_branch``: ``POST .../branch/{name}`` (409 when it exists);
- ``model_info`` / ``repo_info`` and every ``from_pretrained``: ``GET /api/models/{repo}[/revision/{rev}]`` (sha,
  siblings; 404 RevisionNotFound); ``list_repo_files``: ``GET .../tree/{rev}[/{path}]``;
- ``hf_hub_download`` (transformers, timm, ``ModelCard.load``): ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``
  (X-Repo-Commit, ETag, X-Linked-Etag/-Size for LFS, and the Hub's X-Error-Code on 404/401);
- private repos: invisible (401 RepoNotFound) without a token, as on the Hub.

Anything else answers 404 (the client tolerates that for ``GET /api/agent-harnesses``). Xet is not implemented:
clients must run with ``HF_HUB_DISABLE_XET=1`` (huggingface_hub uses Xet for large files whenever hf_xet is
installed, with no fallback to plain LFS). Tests can make requests fail with
``HubServer.fail(method, path_regex, status)`` (or ``POST /_test/fail`` from another process).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "testuser"
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.pkl", "*.msgpack", "*.npy",
                "*.npz", "*.zip", "*.gz", "*.tar", "*.png", "*.jpg", "*tfevents*")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
REPO = r"([\w.-]+/[\w.-]+)"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def regular(data: bytes) -> dict:
    return {"size": len(data), "blob": git_blob_sha1(data), "lfs": None, "data": data}


def is_lfs(path: str, size: int, sample: bytes) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS) or size > 10 * 1024 * 1024 or b"\0" in sample


class Repo:
    def __init__(self, repo_id: str, private: bool):
        self.id, self.private, self.created = repo_id, private, time.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        self.commits: dict[str, dict] = {}
        self.branches = {"main": self.add_commit(None, {".gitattributes": regular(GITATTRIBUTES)}, "initial commit")}

    def add_commit(self, parent, files, title) -> str:
        sha = hashlib.sha1(json.dumps([parent, title, time.time_ns(), sorted(
            (p, f["blob"]) for p, f in files.items())]).encode()).hexdigest()
        self.commits[sha] = {"parent": parent, "files": files, "title": title}
        return sha

    def resolve(self, rev: str):
        """Commit sha of a branch name or commit id, or None."""
        rev = rev.removeprefix("refs/heads/")
        return self.branches.get(rev) or (rev if rev in self.commits else None)


class HubServer(ThreadingHTTPServer):
    """``with HubServer() as hub:`` serves on 127.0.0.1:<free port> in a thread; ``hub.url`` is the endpoint."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.failures: list[list] = []
        self.lock = threading.RLock()

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    def fail(self, method: str, path_regex: str, status: int = 500, times: int = 1):
        """Answer the next ``times`` requests matching (method, path_regex) with ``status``."""
        self.failures.append([method, path_regex, status, times])

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """{path: content} of a repo at a revision (LFS files resolved to their content)."""
        repo = self.repos[repo_id]
        files = repo.commits[repo.resolve(rev)]["files"]
        return {p: self.lfs[f["lfs"]] if f["lfs"] else f["data"] for p, f in files.items()}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.route("GET")

    def do_HEAD(self):
        self.route("HEAD")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    # --- plumbing -----------------------------------------------------------------------------------------------------
    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None):
        body = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status: int, code: str, message: str, commit: str | None = None):
        headers = {"X-Error-Code": code, "X-Error-Message": message, **({"X-Repo-Commit": commit} if commit else {})}
        self.send(status, {"error": message}, headers)

    def route(self, method: str):
        hub, url = self.server, urlsplit(self.path)
        self.base, self.query = f"http://{self.headers.get('Host')}", parse_qs(url.query)
        self.body = self.read_body() if method in ("POST", "PUT") else b""
        with hub.lock:
            hub.requests.append((method, unquote(url.path)))
            for f in hub.failures:
                if f[3] > 0 and f[0] == method and re.search(f[1], unquote(url.path)):
                    f[3] -= 1
                    return self.send(f[2], {"error": f"Internal Error (injected failure {f[2]})"})
            for m, pattern, fn in ROUTES:
                if m == method and (match := re.fullmatch(pattern, url.path)):
                    return fn(self, *[unquote(g) if g else g for g in match.groups()])
        self.error(404, "EndpointNotFound", f"{method} {url.path} is not a route of the test hub")

    def user(self):
        return USER if self.headers.get("Authorization", "").startswith("Bearer ") else None

    def repo(self, repo_id: str, write: bool = False):
        """The repo if this caller may see it (write: and push to it); otherwise answer as the Hub does."""
        repo = self.server.repos.get(repo_id)
        if repo is None or (repo.private and repo_id.split("/")[0] != self.user()):
            self.error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return None
        if write and repo_id.split("/")[0] != self.user():
            self.error(403, "Forbidden", "You don't have the rights to push to this repo. Use a write token.")
            return None
        return repo

    def revision(self, repo: Repo, rev: str):
        sha = repo.resolve(rev)
        if sha is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    # --- account, repos -------------------------------------------------------------------------------------------
    def create_repo(self):
        req = json.loads(self.body)
        if req.get("type", "model") not in (None, "model"):
            return self.error(400, "BadRequest", "the test hub only hosts model repos")
        repo_id = f"{req.get('organization') or self.user()}/{req['name']}"
        if not self.user() or repo_id.split("/")[0] != self.user():
            return self.error(403, "Forbidden", "You don't have the rights to create a model under this namespace")
        if repo_id in self.server.repos:
            return self.send(409, {"error": "You already created this model repo", "url": f"{self.base}/{repo_id}"})
        private = req.get("visibility", "public") != "public"  # huggingface_hub 2.x sends visibility, not private
        self.server.repos[repo_id] = Repo(repo_id, private)
        self.send(200, {"url": f"{self.base}/{repo_id}", "name": repo_id, "id": repo_id})

    def validate_yaml(self):
        self.send(200, {"errors": [], "warnings": []})

    def branch(self, repo_id, name):
        if (repo := self.repo(repo_id, write=True)) is None:
            return
        if name in repo.branches:
            return self.error(409, "Conflict", f"Reference refs/heads/{name} already exists")
        start = (json.loads(self.body or b"{}") or {}).get("startingPoint") or "main"
        if (sha := self.revision(repo, start)) is not None:
            repo.branches[name] = sha
            self.send(200, {})

    # --- upload ---------------------------------------------------------------------------------------------------
    def preupload(self, repo_id, rev):
        if (repo := self.repo(repo_id, write=True)) is None or (sha := self.revision(repo, rev)) is None:
            return
        current, out = repo.commits[sha]["files"], []
        for f in json.loads(self.body)["files"]:
            lfs = is_lfs(f["path"], f["size"], base64.b64decode(f["sample"]))
            old = current.get(f["path"])
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": (old["lfs"] or old["blob"]) if old else None})
        self.send(200, {"files": out, "commitOid": sha})

    def lfs_batch(self, repo_id):
        if self.repo(repo_id, write=True) is None:
            return
        req, objects = json.loads(self.body), []
        if req.get("operation") != "upload" or "basic" not in req.get("transfers", ["basic"]):
            return self.error(400, "BadRequest", "the test hub only takes basic LFS uploads")
        for obj in req["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.server.lfs:
                item["actions"] = {"upload": {"href": f"{self.base}/_lfs/{obj['oid']}", "header": {}}}
            objects.append(item)
        self.send(200, {"transfer": "basic", "objects": objects},
                  {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, oid):
        if hashlib.sha256(self.body).hexdigest() != oid:
            return self.error(400, "BadRequest", "sha256 of the uploaded content does not match the LFS oid")
        self.server.lfs[oid] = self.body
        self.send(200, {})

    def commit(self, repo_id, rev):
        if (repo := self.repo(repo_id, write=True)) is None or (head := self.revision(repo, rev)) is None:
            return
        if "create_pr" in self.query:
            return self.error(400, "BadRequest", "the test hub does not do pull requests")
        if rev.removeprefix("refs/heads/") not in repo.branches:
            return self.error(400, "BadRequest", "commits go to a branch, not to a commit id")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        if header.get("parentCommit") not in (None, head):
            return self.error(412, "PreconditionFailed", "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head]["files"])
        for item in lines:
            key, v = item["key"], item["value"]
            if key == "file":
                files[v["path"]] = regular(base64.b64decode(v["content"]))
            elif key == "lfsFile":
                if v["oid"] not in self.server.lfs:
                    return self.error(422, "LFSObjectNotFound", f"LFS object {v['oid']} of {v['path']} not uploaded")
                data = self.server.lfs[v["oid"]]
                files[v["path"]] = {"size": len(data), "blob": git_blob_sha1(lfs_pointer(v["oid"], len(data))),
                                    "lfs": v["oid"], "data": None}
            elif key == "deletedFile":
                if files.pop(v["path"], None) is None:
                    return self.error(404, "EntryNotFound", f"A file with this name doesn't exist: {v['path']}")
            elif key == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(v["path"].rstrip("/") + "/")}
        sha = repo.add_commit(head, files, header.get("summary", ""))
        repo.branches[rev.removeprefix("refs/heads/")] = sha
        self.send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.base}/{repo_id}/commit/{sha}",
                        "commitMessage": header.get("summary", ""), "hookOutput": ""})

    # --- download -------------------------------------------------------------------------------------------------
    def model_info(self, repo_id, rev=None):
        if (repo := self.repo(repo_id)) is None or (sha := self.revision(repo, rev or "main")) is None:
            return
        self.send(200, {"_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
                        "sha": sha, "private": repo.private, "disabled": False, "gated": False, "tags": [],
                        "createdAt": repo.created, "lastModified": repo.created,
                        "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha]["files"])]})

    def tree(self, repo_id, rev, prefix=None):
        if (repo := self.repo(repo_id)) is None or (sha := self.revision(repo, rev)) is None:
            return
        prefix, recursive = (prefix or "").strip("/"), self.query.get("recursive", ["false"])[0] in ("1", "true")
        entries = {}
        for path, f in sorted(repo.commits[sha]["files"].items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            parts = path[len(prefix) + 1 if prefix else 0:].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 1)):
                d = "/".join(filter(None, [prefix, *parts[:depth]]))
                entries[d] = {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            if recursive or len(parts) == 1:
                lfs = {"oid": f["lfs"], "size": f["size"], "pointerSize": len(lfs_pointer(f["lfs"], f["size"]))}
                entries[path] = {"type": "file", "oid": f["blob"], "size": f["size"], "path": path,
                                 **({"lfs": lfs} if f["lfs"] else {})}
            else:
                d = "/".join(filter(None, [prefix, parts[0]]))
                entries[d] = {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
        self.send(200, list(entries.values()))

    def resolve(self, repo_id, rev, path):
        if (repo := self.repo(repo_id)) is None or (sha := self.revision(repo, rev)) is None:
            return
        f = repo.commits[sha]["files"].get(path)
        if f is None:
            return self.error(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"", commit=sha)
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha, "ETag": f'"{f["blob"]}"'}
        if f["lfs"]:
            headers.update({"ETag": f'"{f["lfs"]}"', "X-Linked-Etag": f'"{f["lfs"]}"', "X-Linked-Size": str(f["size"])})
        self.send(200, headers=headers, raw=self.server.lfs[f["lfs"]] if f["lfs"] else f["data"])

    def test_fail(self):
        req = json.loads(self.body)
        self.server.fail(req["method"], req["path"], req.get("status", 500), req.get("times", 1))
        self.send(200, {})


ROUTES = [
    ("POST", r"/api/repos/create", Handler.create_repo),
    ("POST", r"/api/validate-yaml", Handler.validate_yaml),
    ("POST", rf"/api/models/{REPO}/preupload/([^/]+)", Handler.preupload),
    ("POST", rf"/api/models/{REPO}/commit/([^/]+)", Handler.commit),
    ("POST", rf"/api/models/{REPO}/branch/([^/]+)", Handler.branch),
    ("GET", rf"/api/models/{REPO}/tree/([^/]+)(?:/(.*))?", Handler.tree),
    ("GET", rf"/api/models/{REPO}(?:/revision/([^/]+))?", Handler.model_info),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", Handler.lfs_batch),
    ("PUT", r"/_lfs/([0-9a-f]{64})", Handler.lfs_put),
    ("HEAD", rf"/{REPO}/resolve/([^/]+)/(.+)", Handler.resolve),
    ("GET", rf"/{REPO}/resolve/([^/]+)/(.+)", Handler.resolve),
    ("POST", r"/_test/fail", Handler.test_fail),
]
