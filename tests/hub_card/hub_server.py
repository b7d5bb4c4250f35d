"""A small local stand-in for the Hugging Face Hub API, enough for push_to_hub / upload_folder / from_pretrained.

    with LocalHub(tmp_path) as hub:          # listens on 127.0.0.1, a free port; stops on exit
        env["HF_ENDPOINT"] = hub.url

Repos live in memory with git-like history: every commit is a full snapshot {path: blob id} with a parent and a
40-hex sha; branches point at commits; file contents are blobs on disk named by their git blob sha1. Files resolve
by branch name or commit sha, so a pinned revision keeps serving the old files after new commits.

Routes (model repos, and Space repos under spaces/), as huggingface_hub 2.x calls them:
    POST /api/repos/create                              create_repo (409 when it exists; a Space records its sdk)
    POST /api/validate-yaml                             README.md metadata check before a commit
    GET  /api/models/{repo}[/revision/{rev}]            repo_info / model_info (cardData: README.md's metadata)
    GET  /api/models/{repo}/tree/{rev}[/{path}]         list_repo_tree (one page)
    POST /api/models/{repo}/preupload/{rev}             upload modes: always "regular" (base64 in the commit)
    POST /api/models/{repo}/commit/{rev}                NDJSON commit: header, file, deletedFile, deletedFolder
    POST /api/models/{repo}/branch/{branch}             create_branch
    HEAD|GET /{repo}/resolve/{rev}/{path}               file download with ETag, X-Repo-Commit, Content-Length
    the same under /api/spaces/{repo}/... and /spaces/{repo}/resolve/...
A Space is stored as the repo "spaces/{namespace}/{name}" (store.repos, store.files), as its URLs name it.
Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) as the Hub's do, so huggingface_hub
raises its usual exceptions. Writes need an `Authorization: Bearer` header; any token is accepted.
"""

import base64
import hashlib
import json
import os
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def hub_date(date: datetime) -> str:
    """A UTC date as the Hub writes it, and huggingface_hub parses it: 2026-01-31T12:00:00.000000Z."""
    return date.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubStore:
    """Repos, commits, branches and blobs; every method runs under one lock."""

    def __init__(self, root: Path):
        self.blob_dir = Path(root) / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.repos = {}
        self.lock = threading.Lock()
        self.requests = []  # (method, path): what the clients asked, for tests and debugging

    def put_blob(self, content: bytes) -> str:
        blob_id = git_blob_id(content)
        path = self.blob_dir / blob_id
        if not path.exists():
            path.write_bytes(content)
        return blob_id

    def blob_path(self, blob_id: str) -> Path:
        return self.blob_dir / blob_id

    def create_repo(self, repo_id: str, private: bool, sdk: str = None) -> None:
        """`repo_id`: namespace/name for a model, spaces/namespace/name for a Space (which has an `sdk`)."""
        if repo_id in self.repos:
            raise HubError(409, "You already created this repo")
        self.repos[repo_id] = {"private": bool(private), "branches": {}, "commits": {}, "sdk": sdk,
                               "created": datetime.now(timezone.utc)}
        self.commit(repo_id, "main", "initial commit", {".gitattributes": self.put_blob(GITATTRIBUTES)}, new_branch=True)

    def repo(self, repo_id: str) -> dict:
        if repo_id not in self.repos:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repos[repo_id]

    def resolve(self, repo_id: str, revision: str) -> str:
        """A branch name or a commit sha -> the commit sha."""
        repo = self.repo(repo_id)
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def files(self, repo_id: str, sha: str) -> dict:
        return self.repo(repo_id)["commits"][sha]["files"]

    def commit(self, repo_id: str, branch: str, message: str, files: dict, new_branch: bool = False) -> str:
        repo = self.repo(repo_id)
        parent = None if new_branch else self.resolve(repo_id, branch)
        date = datetime.now(timezone.utc)
        record = {"parent": parent, "files": dict(files), "message": message, "date": date}
        digest = json.dumps([parent, sorted(files.items()), message, time.time_ns()]).encode()
        sha = hashlib.sha1(digest).hexdigest()
        repo["commits"][sha] = record
        repo["branches"][branch] = sha
        return sha

    def create_branch(self, repo_id: str, branch: str, starting_point: str = None) -> None:
        repo = self.repo(repo_id)
        if branch in repo["branches"]:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo["branches"][branch] = self.resolve(repo_id, starting_point or "main")


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response sends Content-Length
    store: HubStore = None  # set per server by LocalHub

    def log_message(self, format, *args):  # quiet: the test output stays readable
        pass

    # --- dispatch -------------------------------------------------------------------------------------------
    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        # Split before unquoting: a quoted revision such as refs%2Fpr%2F1 is one segment.
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        self.store.requests.append((method, url.path))
        try:
            with self.store.lock:
                self._route(method, parts, query)
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send_json(err.status, {"error": err.message}, headers)

    def _route(self, method: str, parts: list, query: dict):
        if method == "POST" and parts[:3] == ["api", "repos", "create"]:
            return self._create_repo()
        if method == "POST" and parts[:2] == ["api", "validate-yaml"]:
            return self._validate_yaml()
        if method == "GET" and parts[:2] == ["api", "whoami-v2"]:
            self._require_token()
            return self._send_json(200, {"type": "user", "name": "local-user", "orgs": []})
        if parts[:2] in (["api", "models"], ["api", "spaces"]) and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}" if parts[1] == "models" else f"spaces/{parts[2]}/{parts[3]}"
            action, rest = parts[4] if len(parts) > 4 else None, parts[5:]
            if method == "GET" and action is None:
                return self._repo_info(repo_id, "main")
            if method == "GET" and action == "revision" and rest:
                return self._repo_info(repo_id, rest[0])
            if method == "GET" and action == "tree" and rest:
                return self._tree(repo_id, rest[0], "/".join(rest[1:]), query)
            if method == "POST" and action == "preupload" and rest:
                return self._preupload(repo_id, rest[0])
            if method == "POST" and action == "commit" and rest:
                return self._commit(repo_id, rest[0])
            if method == "POST" and action == "branch" and rest:
                return self._create_branch(repo_id, "/".join(rest))
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve_file(method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        if method in ("GET", "HEAD") and len(parts) >= 6 and parts[0] == "spaces" and parts[3] == "resolve":
            return self._resolve_file(method, "/".join(parts[:3]), parts[4], "/".join(parts[5:]))
        raise HubError(404, f"The local Hub does not serve {method} {self.path}")

    # --- helpers --------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> dict:
        try:
            return json.loads(self._body() or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Request body is not JSON: {err}")

    def _require_token(self):
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            raise HubError(401, "Invalid username or password.")

    def _send(self, status: int, body: bytes, headers: dict, content_length: int = None):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_json(self, status: int, payload, headers: dict = None):
        body = b"" if self.command == "HEAD" else json.dumps(payload, default=str).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    # --- routes ---------------------------------------------------------------------------------------------
    def _create_repo(self):
        self._require_token()
        payload = self._json_body()
        repo_type = payload.get("type", "model")
        if repo_type not in ("model", "space"):
            raise HubError(400, "The local Hub stores model and Space repos only")
        if repo_type == "space" and not payload.get("sdk"):
            raise HubError(400, "A Space needs an sdk")
        repo_id = f"{payload.get('organization') or 'local-user'}/{payload['name']}"
        if repo_type == "space":
            repo_id = f"spaces/{repo_id}"
        private = payload.get("private") or payload.get("visibility") == "private"
        url = f"http://{self.headers['Host']}/{repo_id}"
        try:
            self.store.create_repo(repo_id, private, payload.get("sdk"))
        except HubError as err:
            return self._send_json(err.status, {"error": err.message, "url": url})
        self._send_json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _validate_yaml(self):
        content = self._json_body().get("content", "")
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---")[1])
            except yaml.YAMLError as err:
                return self._send_json(400, {"errors": [{"message": str(err)}], "warnings": []})
        self._send_json(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo_id: str, revision: str):
        repo = self.store.repo(repo_id)
        sha = self.store.resolve(repo_id, revision)
        files = self.store.files(repo_id, sha)
        name = repo_id.removeprefix("spaces/")
        self._send_json(200, {
            "id": name,
            "modelId": name,
            "author": name.split("/")[0],
            "sha": sha,
            "sdk": repo["sdk"],
            "cardData": self._card_data(files),
            "private": repo["private"],
            "disabled": False,
            "gated": False,
            "tags": [],
            "createdAt": hub_date(repo["created"]),
            "lastModified": hub_date(repo["commits"][sha]["date"]),
            "siblings": [
                {"rfilename": path, "size": self.store.blob_path(blob_id).stat().st_size, "blobId": blob_id}
                for path, blob_id in sorted(files.items())
            ],
        })

    def _card_data(self, files: dict):
        """README.md's YAML metadata, as the Hub serves it with a repo's info (None without one)."""
        if "README.md" not in files:
            return None
        text = self.store.blob_path(files["README.md"]).read_text(encoding="utf-8")
        return yaml.safe_load(text.split("---")[1]) if text.startswith("---") else None

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict):
        files = self.store.files(repo_id, self.store.resolve(repo_id, revision))
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries, folders = [], set()
        for path, blob_id in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            relative = path[len(prefix):]
            if "/" in relative:
                names = relative.split("/")[:-1]
                for depth in range(1, len(names) + 1 if recursive else 2):
                    folders.add(prefix + "/".join(names[:depth]))
                if not recursive:
                    continue
            entries.append({"type": "file", "oid": blob_id, "path": path,
                            "size": self.store.blob_path(blob_id).stat().st_size})
        if prefix and not entries and not folders:
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": path} for path in sorted(folders)]
        self._send_json(200, entries)

    def _preupload(self, repo_id: str, revision: str):
        self._require_token()
        files = self.store.files(repo_id, self.store.resolve(repo_id, revision))
        payload = self._json_body()
        self._send_json(200, {"files": [
            {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(item["path"])}
            for item in payload.get("files", [])
        ]})

    def _commit(self, repo_id: str, branch: str):
        self._require_token()
        repo = self.store.repo(repo_id)
        if branch not in repo["branches"]:
            raise HubError(404, f"Invalid rev id: {branch} (commits go to a branch)", "RevisionNotFound")
        head = repo["branches"][branch]
        files = dict(self.store.files(repo_id, head))
        message = None
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                message = value.get("summary")
                parent = value.get("parentCommit")
                if parent and parent != head:
                    raise HubError(412, f"parentCommit {parent} is not the head of {branch} ({head})")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported file encoding {value.get('encoding')!r}")
                files[value["path"]] = self.store.put_blob(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: blob for path, blob in files.items() if not path.startswith(prefix)}
            else:  # lfsFile: preupload never asks for LFS here
                raise HubError(400, f"The local Hub does not accept commit operations of type {key!r}")
        if not message:
            raise HubError(400, "The commit has no header with a summary")
        sha = self.store.commit(repo_id, branch, message, files)
        url = f"http://{self.headers['Host']}/{repo_id}/commit/{sha}"
        self._send_json(200, {"success": True, "commitOid": sha, "commitUrl": url, "hookOutput": ""})

    def _create_branch(self, repo_id: str, branch: str):
        self._require_token()
        self.store.create_branch(repo_id, branch, self._json_body().get("startingPoint"))
        self._send_json(200, {})

    def _resolve_file(self, method: str, repo_id: str, revision: str, path: str):
        sha = self.store.resolve(repo_id, revision)
        blob_id = self.store.files(repo_id, sha).get(path)
        if blob_id is None:
            raise HubError(404, f"Entry not found: {path} at {revision}", "EntryNotFound")
        content = self.store.blob_path(blob_id).read_bytes()
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{blob_id}"', "X-Repo-Commit": sha,
                   "Accept-Ranges": "bytes"}
        start = self._range_start()
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        body = content[start:]
        self._send(status, b"" if method == "HEAD" else body, headers, content_length=len(body))

    def _range_start(self) -> int:
        value = self.headers.get("Range") or ""
        if value.startswith("bytes=") and value.endswith("-"):
            return int(value[len("bytes="):-1])
        return 0


class LocalHub:
    """Runs the local Hub on 127.0.0.1 (a free port) in a background thread for the length of a `with` block."""

    def __init__(self, root):
        self.store = HubStore(Path(root))
        handler = type("BoundHubRequestHandler", (HubRequestHandler,), {"store": self.store})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="local-hub", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def add_folder(self, repo_id: str, folder, message: str = "Upload folder") -> str:
        """Puts every file under `folder` into `repo_id` (created when missing) on main, in one commit, without a
        client: a fixture's model, ready to load. Returns the commit sha."""
        folder = Path(folder)
        with self.store.lock:
            if repo_id not in self.store.repos:
                self.store.create_repo(repo_id, private=False)
            files = dict(self.store.files(repo_id, self.store.resolve(repo_id, "main")))
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    files[path.relative_to(folder).as_posix()] = self.store.put_blob(path.read_bytes())
            return self.store.commit(repo_id, "main", message, files)

    def environment(self, home, token: bool = True) -> dict:
        """os.environ for a client process of this Hub: HF_ENDPOINT here, online, an own cache under `home`, no
        PYTHONPATH; HF_TOKEN set (any token is accepted) or, with token=False, none."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
        env.update(HF_ENDPOINT=self.url, HF_HUB_OFFLINE="0", HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
        if token:
            env["HF_TOKEN"] = "hf_local_test_token"
        return env

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
