"""A stand-in for the part of the Hugging Face Hub's HTTP API that a folder push uses.

It speaks to the real `huggingface_hub` client (2.4), pointed at it through `HF_ENDPOINT`::

    with HubStandin(tokens={"hf_alice...": "alice"}) as hub:
        env = {**hub.client_env(), "HF_HOME": str(tmp_home)}   # for the process that pushes
        ...                                                    # HfApi().create_repo, upload, ...
        repo = hub.repo("alice/set", "dataset")   # id, type, private, branches, commits, files
        repo.pushed_commits()                     # commits made through the commit API
        hub.requests                              # method, path, Authorization, status, size
        hub.statuses("POST", "/commit/main$")     # the statuses it answered such requests

Endpoints (what the client sends, read from its source):

- POST /api/repos/create                                   create_repo
- POST /api/validate-yaml                                  the README.md card's YAML header
- GET  /api/{type}s/{ns}/{name}[/revision/{rev}]           repo_info / dataset_info
- GET  /api/{type}s/{ns}/{name}/refs                       list_repo_refs
- POST /api/{type}s/{ns}/{name}/branch/{branch}            create_branch (409 if it exists)
- POST /api/{type}s/{ns}/{name}/preupload/{rev}            regular or LFS, and each file's oid
- POST /api/{type}s/{ns}/{name}/commit/{rev}               the NDJSON commit
- POST /[{type}s/]{ns}/{name}.git/info/lfs/objects/batch   LFS batch: where to PUT each object
- PUT  /_lfs/{ticket}                                      the object itself (a presigned URL's
                                                           stand-in: no Authorization header)
- POST /[{type}s/]{ns}/{name}.git/info/lfs/objects/verify  the object arrived whole
- GET  /api/agent-harnesses                                the client's user-agent registry

Like the Hub: a token it does not know gets 401 on every endpoint, and a missing repo 404 with
`X-Error-Code: RepoNotFound`; a new repo starts with a system commit holding .gitattributes.
Unlike the Hub, every error body quotes the Authorization header it came with: the Hub does not
do that today, but the client copies server messages into its exceptions, so only an echo
proves that the pusher scrubs them rather than trusting the server's discretion.

Xet: with `hf_xet` installed, huggingface_hub 2.4 sends every LFS-mode file through Xet storage,
and decides that on the client alone (`is_xet_available()`: `hf_xet` importable and
`HF_HUB_DISABLE_XET` unset); no preupload or batch answer can change its mind. So the stand-in
steers it through the environment it hands out (`client_env()` sets HF_HUB_DISABLE_XET=1),
which makes the client fall back to the LFS batch protocol against this server, and it refuses
the Xet token routes with a line that says so, rather than letting `hf_xet` go looking for a
content-addressed store that is not here. The client reads the variable once, at import: it
must be in the environment of the process before that process imports `huggingface_hub`.

Run it alone: `python tests/hub_standin.py --token hf_xxx=alice` prints its endpoint.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import re
import secrets
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

#: The Hub stores a file with LFS when it is at least this big, or binary (a NUL byte in the
#: first 512 bytes the client samples), whatever its name.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
# What a new repo's first commit holds, as on the Hub; the stand-in does not read its rules.
INITIAL_GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"

_REPO = r"(?P<ns>[\w.-]+)/(?P<name>[\w.-]+)"
API_REPO = re.compile(rf"^/api/(?P<types>models|datasets|spaces)/{_REPO}(?P<rest>/.*)?$")
LFS_ROUTE = re.compile(
    rf"^/(?:(?P<types>datasets|spaces)/)?{_REPO}\.git/info/lfs/objects/(?P<op>batch|verify)$"
)


def git_blob_oid(data: bytes) -> str:
    """The oid git gives a regular file: what the client compares to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hub_time(moment: datetime) -> str:
    """The Hub's timestamps, milliseconds and a Z: the client parses no other form."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def stored_as_lfs(size: int, sample: bytes) -> bool:
    return size >= LFS_SIZE_THRESHOLD or b"\0" in sample[:512]


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def oid(self, as_lfs: bool) -> str:
        return self.sha256 if as_lfs else git_blob_oid(self.data)


@dataclass
class Commit:
    oid: str
    summary: str
    description: str
    author: str
    parent: str | None
    #: The files this commit added or changed (path -> file), and the whole tree after it.
    files: dict[str, StoredFile]
    deleted: list[str]
    tree: dict[str, StoredFile]
    created_at: str = field(default_factory=lambda: _hub_time(datetime.now(UTC)))


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    owner: str
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head commit oid
    commits: list[Commit] = field(default_factory=list)  # in the order they were made
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes

    def commit(self, oid: str) -> Commit:
        return next(commit for commit in self.commits if commit.oid == oid)

    def head(self, branch: str = "main") -> Commit:
        return self.commit(self.branches[branch])

    def files(self, branch: str = "main") -> dict[str, StoredFile]:
        return dict(self.head(branch).tree)

    def pushed_commits(self) -> list[Commit]:
        """Every commit but the system one the Hub makes when it creates the repo."""
        return [commit for commit in self.commits if commit.author != "system"]

    def history(self, branch: str = "main") -> list[Commit]:
        """The branch's commits, newest first, as `git log` shows them."""
        chain, oid = [], self.branches[branch]
        while oid is not None:
            chain.append(self.commit(oid))
            oid = chain[-1].parent
        return chain


@dataclass
class Recorded:
    """One request the stand-in received, and the status it answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    status: int = 0
    size: int = 0  # of the request body
    received_at: float = field(default_factory=time.monotonic)


class HubError(Exception):
    """An answer the Hub gives as an error: status, message, and its X-Error-Code if any."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class HubStandin:
    def __init__(
        self,
        *,
        tokens: dict[str, str] | None = None,
        echo_credentials: bool = True,
        port: int = 0,
    ) -> None:
        #: token -> user name; the only credentials it accepts.
        self.tokens = dict(tokens or {})
        self.echo_credentials = echo_credentials
        self.requests: list[Recorded] = []
        self._repos: dict[tuple[str, str], Repo] = {}
        self._tickets: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._httpd = _Listener(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def address(self) -> tuple[str, int]:
        return self._httpd.server_address[:2]

    def client_env(self) -> dict[str, str]:
        """Variables for the process that runs the client; see the module docstring on Xet."""
        return {"HF_ENDPOINT": self.endpoint, "HF_HUB_DISABLE_XET": "1"}

    def start(self) -> HubStandin:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubStandin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests read -------------------------------------------------------------

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo | None:
        with self._lock:
            return self._repos.get((repo_type, repo_id))

    @property
    def repos(self) -> list[Repo]:
        with self._lock:
            return list(self._repos.values())

    def recorded(self, method: str | None = None, pattern: str = "") -> list[Recorded]:
        """Requests whose method matches (any if None) and whose path matches the regex."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and re.search(pattern, r.path)
            ]

    def statuses(self, method: str | None = None, pattern: str = "") -> list[int]:
        """The status of each request `recorded(method, pattern)` returns, in arrival order."""
        return [r.status for r in self.recorded(method, pattern)]

    # -- state -----------------------------------------------------------------------

    def _record(self, entry: Recorded) -> None:
        with self._lock:
            self.requests.append(entry)

    def user_for(self, authorization: str | None, *, required: bool) -> str | None:
        """The user a request acts as; 401 for a token it does not know, or none when needed."""
        if authorization is None:
            if required:
                raise HubError(401, "You must be authenticated to access this resource.")
            return None
        token = authorization.removeprefix("Bearer ")
        user = self.tokens.get(token) if authorization.startswith("Bearer ") else None
        if user is None:
            raise HubError(401, INVALID_CREDENTIALS)
        return user

    def _find(self, repo_type: str, repo_id: str, user: str | None, *, write: bool) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _next_oid(self, *parts: str) -> str:
        seed = "\0".join((str(next(self._ids)), *parts)).encode("utf-8")
        return hashlib.sha1(seed).hexdigest()

    def create_repo(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        namespace, name = body.get("organization") or user, body["name"]
        repo_type = body.get("type") or "model"
        repo_id = f"{namespace}/{name}"
        url = f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        with self._lock:
            if namespace != user:
                raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
            if (repo_type, repo_id) in self._repos:
                # The client reads the url out of this 409 when it was told exist_ok.
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            repo = Repo(repo_id, repo_type, body.get("visibility") == "private", owner=user)
            tree = {".gitattributes": StoredFile(INITIAL_GITATTRIBUTES, lfs=False)}
            initial = Commit(
                self._next_oid(repo_id), "initial commit", "", "system", None, dict(tree), [], tree
            )
            repo.commits.append(initial)
            repo.branches["main"] = initial.oid
            self._repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": repo_id}

    def repo_info(self, repo: Repo, revision: str) -> dict[str, Any]:
        head = self._head(repo, revision)
        return {
            "id": repo.repo_id,
            "author": repo.owner,
            "sha": head.oid,
            "private": repo.private,
            "lastModified": head.created_at,
            "siblings": [{"rfilename": path} for path in sorted(head.tree)],
        }

    def refs(self, repo: Repo) -> dict[str, Any]:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in repo.branches.items()
        ]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}

    def tree(self, repo: Repo, revision: str, folder: str) -> list[dict[str, Any]]:
        """Every file under `folder` of the revision's tree, as the recursive listing answers.

        One page: the client follows a `Link` header for more, and a stand-in tree never needs
        a second page.
        """
        with self._lock:
            files = dict(self._head(repo, revision).tree)
        prefix = folder.rstrip("/") + "/" if folder else ""
        return [
            {"type": "file", "path": path, "size": len(stored.data),
             "oid": git_blob_oid(stored.data)}
            | ({"lfs": {"oid": stored.sha256, "size": len(stored.data), "pointerSize": 134}}
               if stored.lfs else {})
            for path, stored in sorted(files.items())
            if path.startswith(prefix)
        ]  # fmt: skip

    def create_branch(self, repo: Repo, branch: str, body: dict[str, Any]) -> None:
        with self._lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            start = body.get("startingPoint") or "main"
            oid = repo.branches.get(start, start)
            if not any(commit.oid == oid for commit in repo.commits):
                raise HubError(404, f"Invalid rev id: {start}", "RevisionNotFound")
            repo.branches[branch] = oid

    def preupload(self, repo: Repo, revision: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            head = self._head(repo, revision)
        answers = []
        for item in body["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = stored_as_lfs(int(item["size"]), sample)
            remote = head.tree.get(item["path"])
            answers.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    # The client compares this with its own oid to leave unchanged files out.
                    "oid": remote.oid(lfs) if remote is not None else None,
                }
            )
        return {"files": answers, "commitOid": head.oid}

    def lfs_batch(self, repo: Repo, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("operation") != "upload":
            raise HubError(400, "The stand-in only takes LFS uploads")
        prefix = f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}.git"
        objects = []
        with self._lock:
            for item in body["objects"]:
                oid, size = item["oid"], int(item["size"])
                entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if len(repo.lfs_objects.get(oid, b"")) != size:
                    # One ticket per object plays the presigned storage URL: whoever holds it
                    # may PUT that object once, no Authorization header needed or sent.
                    ticket = secrets.token_urlsafe(16)
                    self._tickets[ticket] = ((repo.repo_type, repo.repo_id), oid, size)
                    entry["actions"] = {
                        "upload": {"href": f"{self.endpoint}/_lfs/{ticket}"},
                        "verify": {"href": f"{prefix}/info/lfs/objects/verify"},
                    }
                objects.append(entry)
        # No chunk_size header: the client then PUTs each object whole (basic transfer).
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_put(self, ticket: str, data: bytes) -> None:
        with self._lock:
            if ticket not in self._tickets:
                raise HubError(403, "Upload URL is not valid (or was used already)")
            key, oid, size = self._tickets.pop(ticket)
            if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
                raise HubError(400, f"Uploaded object does not match oid {oid} and size {size}")
            self._repos[key].lfs_objects[oid] = data

    def lfs_verify(self, repo: Repo, body: dict[str, Any]) -> None:
        if len(repo.lfs_objects.get(body.get("oid", ""), b"")) != body.get("size"):
            raise HubError(404, f"LFS object {body.get('oid')} was not uploaded", "EntryNotFound")

    def commit(self, repo: Repo, user: str, revision: str, payload: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in payload.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit starts with its header line")
        header = lines[0]["value"]
        with self._lock:
            head = self._head(repo, revision)
            parent = header.get("parentCommit")
            if parent is not None and not head.oid.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree, changed, deleted = dict(head.tree), {}, []
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    if stored_as_lfs(len(data), data[:512]):
                        raise HubError(
                            400, f"{path}: binary files and files over 10 MB must go through LFS"
                        )
                    tree[path] = changed[path] = StoredFile(data, lfs=False)
                elif key == "lfsFile":
                    data = repo.lfs_objects.get(value["oid"])
                    if data is None:
                        raise HubError(400, f"{path}: LFS object {value['oid']} was not uploaded")
                    tree[path] = changed[path] = StoredFile(data, lfs=True)
                elif key in ("deletedFile", "deletedFolder"):
                    gone = [p for p in tree if p == path or p.startswith(path.rstrip("/") + "/")]
                    if not gone:
                        raise HubError(404, f"{path}: no such file", "EntryNotFound")
                    for p in gone:
                        del tree[p]
                    deleted.extend(gone)
                else:
                    raise HubError(400, f"The stand-in does not take {key!r} commit lines")
            oid = self._next_oid(repo.repo_id, head.oid, json.dumps(header))
            summary, description = header.get("summary", ""), header.get("description", "")
            repo.commits.append(
                Commit(oid, summary, description, user, head.oid, changed, deleted, tree)
            )
            repo.branches[revision] = oid
        url = f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{oid}"
        return {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None}

    def _head(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision, revision)
        for commit in repo.commits:
            if commit.oid == oid:
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def validate_card(body: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML header must parse to a mapping, as the Hub's validator insists."""
    content = body.get("content", "")
    if not content.startswith("---"):
        return {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
    header = content.split("\n---", 1)[0].removeprefix("---")
    try:
        metadata = yaml.safe_load(header)
    except yaml.YAMLError as error:
        raise HubError(400, f"Invalid YAML metadata: {error}") from None
    if not isinstance(metadata, dict):
        raise HubError(400, "The YAML metadata must be a mapping")
    return {"errors": [], "warnings": []}


class _Listener(ThreadingHTTPServer):
    # The client uploads with several threads at once; the default backlog of 5 resets some.
    request_queue_size = 128


def _handler_for(hub: HubStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub's front end does
        # Headers and body go out in two writes; with Nagle on, the client's delayed ACK
        # would add 40 ms to every answer.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read `hub.requests` instead."""

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def _serve(self, method: str) -> None:
            split = urlsplit(self.path)
            auth = self.headers.get("Authorization")
            entry = Recorded(method, split.path, parse_qs(split.query), auth)
            hub._record(entry)
            try:
                payload = self._read_body()
                entry.size = len(payload)
                status, answer, headers = self._route(method, split.path, auth, payload)
            except HubError as error:
                status, answer, headers = self._error_answer(error, auth)
            except Exception as error:  # noqa: BLE001
                # A stand-in bug must reach the test as a 500 it can read, not as a connection
                # dropped mid-request (which the client retries, then reports as a network error).
                status, answer, headers = 500, {"error": f"stand-in failure: {error!r}"}, {}
            entry.status = status
            self._reply(status, answer, headers)

        def _error_answer(
            self, error: HubError, auth: str | None
        ) -> tuple[int, dict[str, Any], dict[str, str]]:
            # The client reads both: X-Error-Code picks its exception class (RepoNotFound,
            # RevisionNotFound, ...), and the header and body messages go into its text.
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            message = error.message
            if auth is not None and hub.echo_credentials:
                message = f"{message} (request had Authorization: {auth})"  # see the docstring
            return error.status, {"error": message, **error.extra}, headers

        def _route(
            self, method: str, path: str, auth: str | None, payload: bytes
        ) -> tuple[int, dict[str, Any], dict[str, str]]:
            if method == "GET" and path == "/api/agent-harnesses":
                # Asked once per process for the user-agent string; an empty registry is a
                # valid answer and keeps the client from looking anywhere else.
                return 200, {"standardEnvVars": [], "harnesses": {}}, {}
            if method == "PUT" and (match := re.fullmatch(r"/_lfs/([\w-]+)", path)):
                hub.lfs_put(match.group(1), payload)
                return 200, {}, {"ETag": f'"{hashlib.md5(payload).hexdigest()}"'}
            # Every body is JSON but the commit's (NDJSON, read line by line) and an object's.
            content_type = self.headers.get("Content-Type", "")
            plain_json = payload and "json" in content_type and "ndjson" not in content_type
            body = json.loads(payload) if plain_json else {}
            if method == "POST" and path == "/api/repos/create":
                user = hub.user_for(auth, required=True)
                return 200, hub.create_repo(user, body), {}
            if method == "POST" and path == "/api/validate-yaml":
                hub.user_for(auth, required=False)
                return 200, validate_card(body), {}
            if match := LFS_ROUTE.fullmatch(path):
                user = hub.user_for(auth, required=True)
                repo_type = REPO_TYPES[match.group("types") or "models"]
                repo_id = f"{match.group('ns')}/{match.group('name')}"
                with hub._lock:
                    repo = hub._find(repo_type, repo_id, user, write=True)
                if match.group("op") == "batch":
                    return 200, hub.lfs_batch(repo, body), {}
                hub.lfs_verify(repo, body)
                return 200, {"success": True}, {}
            if match := API_REPO.fullmatch(path):
                return self._repo_route(method, match, auth, body, payload)
            raise HubError(404, f"The stand-in has no route for {method} {path}")

        def _repo_route(
            self, method: str, match: re.Match[str], auth: str | None, body: Any, payload: bytes
        ) -> tuple[int, dict[str, Any], dict[str, str]]:
            repo_type = REPO_TYPES[match.group("types")]
            repo_id = f"{match.group('ns')}/{match.group('name')}"
            rest = match.group("rest") or ""
            writes = method == "POST"
            user = hub.user_for(auth, required=writes)
            if re.fullmatch(r"/xet-(read|write)-token/.*", rest):
                raise HubError(501, "The stand-in speaks LFS, not Xet: set HF_HUB_DISABLE_XET=1")
            with hub._lock:
                repo = hub._find(repo_type, repo_id, user, write=writes)
            if method == "GET" and (rest == "" or rest.startswith("/revision/")):
                revision = unquote(rest.removeprefix("/revision/")) or "main"
                return 200, hub.repo_info(repo, revision), {}
            if method == "GET" and rest == "/refs":
                return 200, hub.refs(repo), {}
            if method == "GET" and (tree := re.fullmatch(r"/tree/([^/]+)(/.*)?", rest)):
                folder = unquote((tree.group(2) or "").lstrip("/"))
                return 200, hub.tree(repo, unquote(tree.group(1)), folder), {}
            if method == "POST" and (branch := re.fullmatch(r"/branch/(.+)", rest)):
                hub.create_branch(repo, unquote(branch.group(1)), body)
                return 200, {}, {}
            if method == "POST" and (revision := re.fullmatch(r"/preupload/(.+)", rest)):
                return 200, hub.preupload(repo, unquote(revision.group(1)), body), {}
            if method == "POST" and (revision := re.fullmatch(r"/commit/(.+)", rest)):
                return 200, hub.commit(repo, user, unquote(revision.group(1)), payload), {}
            raise HubError(404, f"The stand-in has no route for {method} {match.group(0)}")

        def _read_body(self) -> bytes:
            if "Transfer-Encoding" in self.headers:
                # The client sends a Content-Length with every body, file uploads included
                # (it measures the file); a chunked body would be a change worth noticing.
                self.close_connection = True  # the unread body would poison the connection
                raise HubError(411, "The stand-in takes bodies with a Content-Length only")
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reply(self, status: int, answer: dict, headers: dict[str, str]) -> None:
            data = json.dumps(answer).encode("utf-8")
            # The client may have given up already: nothing left to tell it.
            with suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the Hub stand-in until stdin closes.")
    parser.add_argument("--token", action="append", default=[], help="TOKEN=USER, repeatable")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    tokens = dict(pair.split("=", 1) for pair in args.token)
    hub = HubStandin(tokens=tokens, port=args.port).start()
    print(hub.endpoint, flush=True)
    sys.stdin.read()  # the parent closes our stdin (or exits) to stop us
    hub.stop()


if __name__ == "__main__":
    main()
