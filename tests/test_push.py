"""Pushing an exported folder to the Hub: the real huggingface_hub client against the stand-in.

Every push runs in a fresh Python process. huggingface_hub reads HF_ENDPOINT, HF_HOME (where
the saved login lives) and HF_HUB_DISABLE_XET once, when it is imported, and this process may
have imported it already (datasets does): only a new process shows that the pusher finds the
stand-in through the client's own HF_ENDPOINT handling, and only a new process keeps the
user's real Hugging Face login and config out of reach. The child logs everything at DEBUG to
its stderr, and an audit hook in it notes every address it resolves or connects to.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hub_standin import LFS_SIZE_THRESHOLD, HubStandin, Recorded

TOKEN = "hf_PushTestToken0123456789abcdefghij"
# Shaped like no known credential, so no pattern (redact.py's hf_... included) can spot them:
# only the pusher's own scrubbing keeps them out of sight.
PLAIN_TOKEN = "plain-credential-42d1e8b06c"
WRONG_TOKEN = "wrong-credential-7f3a9c1e5b"
USER = "alice"
README = """---
configs:
- config_name: instruct
  data_files:
  - split: train
    path: data/instruct/train-*.parquet
license: cc-by-nc-sa-4.0
---
# adinstruct (test export)
"""
PARQUET = "data/instruct/train-00000-of-00001.parquet"
BIG = "assets/overlays.bin"  # binary, and over the Hub's LFS size threshold

CHILD = r"""
import json, logging, sys, traceback

plan = json.load(sys.stdin)
addresses = []


def audit(event, args):
    # Whoever opens a socket in this process, the interpreter reports it here first.
    if event == "socket.getaddrinfo":
        addresses.append(["resolve", str(args[0])])
    elif event == "socket.connect":
        addresses.append(["connect", list(args[1]) if isinstance(args[1], tuple) else args[1]])


sys.addaudithook(audit)
logging.basicConfig(
    level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
)

from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.utils import logging as hub_logging

from adinstruct.builder.export.push import push_folder

hub_logging.set_verbosity_debug()
outcomes = []
for push in plan["pushes"]:
    try:
        result = push_folder(Path(push.pop("folder")), push.pop("repo_id"), **push)
    except Exception as error:
        types = [kind.__name__ for kind in type(error).__mro__]
        trace = "" if "AdinstructError" in types else traceback.format_exc()
        outcomes.append({"error": {"types": types, "message": str(error), "trace": trace}})
    else:
        outcomes.append({"result": result.model_dump()})
report = {
    "outcomes": outcomes,
    "addresses": addresses,
    "offline": constants.is_offline_mode(),
    "endpoint": constants.ENDPOINT,
}
print("REPORT " + json.dumps(report))
"""


@dataclass
class Run:
    outcomes: list[dict[str, Any]]
    addresses: list[list[Any]]
    offline: bool
    endpoint: str
    stdout: str
    stderr: str

    def result(self, index: int = 0) -> dict[str, Any]:
        outcome = self.outcomes[index]
        assert "result" in outcome, outcome["error"]
        return outcome["result"]

    def error(self, index: int = 0) -> dict[str, Any]:
        outcome = self.outcomes[index]
        assert "error" in outcome, f"push {index} succeeded: {outcome}"
        assert not outcome["error"]["trace"], outcome["error"]["trace"]
        return outcome["error"]

    def everything_shown(self) -> str:
        """All the child printed or logged, and every result and error message it got."""
        return "\n".join([self.stdout, self.stderr, json.dumps(self.outcomes)])


def run_pushes(
    hub: HubStandin, home: Path, pushes: list[dict[str, Any]], env: dict[str, str] | None = None
) -> Run:
    """push_folder(**push) for each push, in order, in one fresh process; never raises."""
    # Nothing of the user's Hugging Face setup reaches the child: no token, no offline switch,
    # no endpoint of theirs; its HF_HOME is a tmp folder.
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("HF_", "HUGGING_FACE_", "HUGGINGFACE_"))
        and name != "TRANSFORMERS_OFFLINE"
    }
    environment.update(hub.client_env(), HF_HOME=str(home), **(env or {}))
    plan = {"pushes": [{**push, "folder": str(push["folder"])} for push in pushes]}
    completed = subprocess.run(
        [sys.executable, "-c", CHILD], input=json.dumps(plan), env=environment,
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    (line,) = [line for line in completed.stdout.splitlines() if line.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    return Run(**report, stdout=completed.stdout, stderr=completed.stderr)


def make_export(
    root: Path, *, rows: int = 3, manifest: bool = True, big: bool = False, card: str = README
) -> tuple[Path, dict[str, bytes]]:
    """A folder shaped like the Hugging Face export, and the visible files it holds.

    The large file is the same in every export (fixed seed): a second push finds it unchanged.
    """

    def write(name: str, data: bytes) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)

    write("README.md", card.encode("utf-8"))
    write_parquet(root / PARQUET, rows)
    if manifest:
        write("manifest.json", json.dumps({"recipe": "anomaly-instruct", "rows": rows}).encode())
    if big:
        write(BIG, random.Random(0).randbytes(LFS_SIZE_THRESHOLD + 1024 * 1024))
    visible = {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
    }
    # Hidden files and folders the push must leave behind.
    write(".cache/huggingface/upload/README.md.metadata", b"local upload state")
    write("data/.DS_Store", b"\0\0\0\1Bud1")
    write(".gitignore", b"*.tmp\n")
    return root, visible


def write_parquet(path: Path, rows: int) -> bytes:
    """A few instruction rows, written with pyarrow as the export writes its shards."""
    question = json.dumps([{"from": "human", "value": "<image>\nIs there a defect?"}])
    table = pa.table(
        {
            "id": [f"mvtec_ad/bottle/{index:03d}" for index in range(rows)],
            "image": [f"images/bottle/{index:03d}.png" for index in range(rows)],
            "conversations": [question] * rows,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def api_requests(hub: HubStandin) -> list[Recorded]:
    """Requests to the Hub's API and LFS routes: everything but the storage PUTs and the
    user-agent registry, which the client sends without credentials, as it should."""
    return [r for r in hub.requests if not r.path.startswith(("/_lfs/", "/api/agent-harnesses"))]


@pytest.fixture
def hub():
    with HubStandin(tokens={TOKEN: USER, PLAIN_TOKEN: USER}) as server:
        yield server


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "hf-home"
    home.mkdir()
    return home


# --------------------------------------------------------------------------------------
# One private push, looked at from every side
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_push(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("private-push")
    folder, visible = make_export(tmp / "export", big=True)
    home = tmp / "hf-home"
    home.mkdir()
    push = {"folder": folder, "repo_id": "alice/ad-instruct", "private": True, "token": TOKEN}
    with HubStandin(tokens={TOKEN: USER}) as hub:
        # A wrong HF_TOKEN as well: the token argument must win over the environment.
        run = run_pushes(hub, home, [push], env={"HF_TOKEN": WRONG_TOKEN})
    return SimpleNamespace(hub=hub, run=run, visible=visible)


def test_push_creates_the_private_dataset_repo(private_push):
    hub = private_push.hub
    repo = hub.repo("alice/ad-instruct", "dataset")
    assert repo is not None, [r.repo_id for r in hub.repos]
    assert repo.private is True and repo.owner == USER
    assert hub.repos == [repo]
    assert hub.statuses("POST", "^/api/repos/create$") == [200]


def test_one_commit_holds_every_file_byte_for_byte(private_push):
    repo = private_push.hub.repo("alice/ad-instruct", "dataset")
    (commit,) = repo.pushed_commits()
    assert {path: file.data for path, file in commit.files.items()} == private_push.visible
    assert commit.deleted == []
    # The branch holds the folder and nothing else but the Hub's own .gitattributes: no
    # hidden file (.cache, .DS_Store, .gitignore) went up.
    assert set(repo.files("main")) == set(private_push.visible) | {".gitattributes"}
    assert repo.branches == {"main": commit.oid}
    for path, data in private_push.visible.items():
        assert commit.files[path].sha256 == sha256(data), path


def test_large_and_binary_files_go_through_lfs_to_the_standin(private_push):
    hub = private_push.hub
    (commit,) = hub.repo("alice/ad-instruct", "dataset").pushed_commits()
    assert len(private_push.visible[BIG]) > LFS_SIZE_THRESHOLD
    lfs = {path for path, file in commit.files.items() if file.lfs}
    assert lfs == {BIG, PARQUET}
    puts = hub.recorded("PUT", "^/_lfs/")
    assert [r.status for r in puts] == [200, 200]
    assert hub.statuses("POST", r"\.git/info/lfs/objects/batch$") == [200]
    assert hub.statuses("POST", r"\.git/info/lfs/objects/verify$") == [200] * 2
    # Steered off Xet: it never asked for a Xet token.
    assert not hub.recorded(pattern="xet")


def test_commit_message_and_result_name_the_manifest_hash(private_push):
    hub, run = private_push.hub, private_push.run
    (commit,) = hub.repo("alice/ad-instruct", "dataset").pushed_commits()
    manifest_hash = sha256(private_push.visible["manifest.json"])
    assert commit.summary == f"adinstruct export (manifest sha256 {manifest_hash})"
    assert commit.author == USER
    assert run.result() == {
        "repo_id": "alice/ad-instruct",
        "revision": "main",
        "commit_oid": commit.oid,
        "commit_url": f"{hub.endpoint}/datasets/alice/ad-instruct/commit/{commit.oid}",
        "files": len(private_push.visible),
        "bytes": sum(len(data) for data in private_push.visible.values()),
        "hashed_file": "manifest.json",
        "sha256": manifest_hash,
    }


def test_token_goes_as_a_bearer_token_to_the_standin_only(private_push):
    hub = private_push.hub
    assert api_requests(hub), "the client sent nothing"
    assert {r.authorization for r in api_requests(hub)} == {f"Bearer {TOKEN}"}
    # The storage PUTs carry their ticket in the URL, as a presigned URL does: no token.
    assert {r.authorization for r in hub.recorded("PUT")} == {None}


def test_nothing_is_contacted_but_the_standin(private_push):
    hub, run = private_push.hub, private_push.run
    host, port = hub.address
    assert run.endpoint == hub.endpoint  # what the client made of HF_ENDPOINT
    connected = [address for kind, address in run.addresses if kind == "connect"]
    assert connected and all(address == [host, port] for address in connected), run.addresses
    assert {address for kind, address in run.addresses if kind == "resolve"} == {host}
    # Not offline mode passing quietly: the client was online, and the stand-in heard it all.
    assert run.offline is False
    assert hub.recorded("POST", "/commit/main$")


def test_a_successful_push_shows_no_token(private_push):
    shown = private_push.run.everything_shown()
    assert "DEBUG huggingface_hub" in shown and "HTTP Request: POST" in shown  # logs captured
    assert TOKEN not in shown and TOKEN.removeprefix("hf_") not in shown


# --------------------------------------------------------------------------------------
# Pushing again, and to a branch
# --------------------------------------------------------------------------------------


def test_a_changed_folder_adds_one_commit_and_an_unchanged_one_none(hub, home, tmp_path):
    first, _ = make_export(tmp_path / "first", rows=3, big=True)
    second, visible = make_export(tmp_path / "second", rows=5, big=True)  # same large file
    validation = "data/instruct/validation-00000-of-00001.parquet"
    visible[validation] = write_parquet(second / validation, rows=2)
    push = {"repo_id": "alice/ad-instruct", "token": TOKEN}
    run = run_pushes(
        hub,
        home,
        [{**push, "folder": first}, {**push, "folder": second}, {**push, "folder": second}],
    )

    repo = hub.repo("alice/ad-instruct", "dataset")
    assert hub.repos == [repo] and repo.private is False
    assert hub.statuses("POST", "^/api/repos/create$") == [200, 409, 409]
    first_commit, second_commit = repo.pushed_commits()
    assert second_commit.parent == first_commit.oid
    # Only what changed is in the second commit; the branch then holds the new folder exactly.
    assert set(second_commit.files) == {PARQUET, "manifest.json", validation}
    assert {path: file.data for path, file in repo.files("main").items()} == {
        **visible, ".gitattributes": repo.files("main")[".gitattributes"].data,
    }  # fmt: skip
    assert second_commit.summary == (
        f"adinstruct export (manifest sha256 {sha256(visible['manifest.json'])})"
    )
    # Four objects went to storage (three parquets, the large file), the large one only once.
    put_sizes = [r.size for r in hub.recorded("PUT", "^/_lfs/")]
    assert len(put_sizes) == 4 and put_sizes.count(len(visible[BIG])) == 1
    assert [run.result(i)["commit_oid"] for i in range(3)] == [
        first_commit.oid, second_commit.oid, second_commit.oid,
    ]  # fmt: skip
    assert len(hub.recorded("POST", "/commit/main$")) == 2  # the unchanged push sent none


def test_files_an_earlier_export_had_are_deleted_in_the_same_commit(hub, home, tmp_path):
    first, _ = make_export(tmp_path / "first", rows=3)
    stale = "data/instruct/train-00001-of-00002.parquet"
    write_parquet(first / stale, rows=2)  # the earlier export had two shards
    second, visible = make_export(tmp_path / "second", rows=5)
    push = {"repo_id": "alice/ad-instruct", "token": TOKEN}
    run_pushes(hub, home, [{**push, "folder": first}, {**push, "folder": second}])

    repo = hub.repo("alice/ad-instruct", "dataset")
    _, second_commit = repo.pushed_commits()
    # A stale shard would still match the card's `data/instruct/train-*` glob.
    assert second_commit.deleted == [stale]
    assert set(repo.files("main")) == {*visible, ".gitattributes"}


def test_revision_creates_the_branch_and_leaves_main_alone(hub, home, tmp_path):
    first_folder, visible = make_export(tmp_path / "first", manifest=False)
    second_folder, _ = make_export(tmp_path / "second", manifest=False, card=README + "More.\n")
    push = {"repo_id": "alice/ad-instruct", "revision": "v1", "token": TOKEN}
    run = run_pushes(
        hub, home, [{**push, "folder": first_folder}, {**push, "folder": second_folder}]
    )
    run_first, run_second = run.result(0), run.result(1)

    repo = hub.repo("alice/ad-instruct", "dataset")
    assert set(repo.branches) == {"main", "v1"}
    assert repo.head("main").author == "system"  # main still has only the Hub's first commit
    second, first, initial = repo.history("v1")
    assert initial.oid == repo.branches["main"]
    assert {path: file.data for path, file in first.files.items()} == visible
    assert set(second.files) == {"README.md"}
    # Without manifest.json, the card's hash is the one the message carries, and says so.
    assert first.summary == f"adinstruct export (README.md sha256 {sha256(visible['README.md'])})"
    assert run_first["hashed_file"] == "README.md"
    assert run_first["revision"] == run_second["revision"] == "v1"
    assert run_second["commit_oid"] == second.oid == repo.branches["v1"]
    # The second push found the branch there already; the commits went to it, not to main.
    assert hub.statuses("POST", "/branch/v1$") == [200, 409]
    assert len(hub.recorded("POST", "/commit/v1$")) == 2
    assert not hub.recorded(pattern="/commit/main")


def test_a_refusal_is_one_line_with_the_servers_words_and_no_token(hub, home, tmp_path):
    folder, _ = make_export(tmp_path / "export")
    # alice's token, bob's namespace: the stand-in says no (403) and quotes the header back.
    push = {"folder": folder, "repo_id": "bob/ad-instruct", "token": PLAIN_TOKEN}
    run = run_pushes(hub, home, [push])
    error = run.error()
    assert "PushError" in error["types"] and "\n" not in error["message"]
    assert "no write access to bob/ad-instruct" in error["message"]
    assert "don't have the rights to create a repo under bob" in error["message"]
    assert "Bearer ***" in error["message"]  # the echo, scrubbed
    assert hub.statuses("POST", "^/api/repos/create$") == [403]
    assert hub.repos == []
    assert PLAIN_TOKEN not in run.everything_shown()


def test_a_private_push_refuses_an_existing_public_repo(hub, home, tmp_path):
    folder, _ = make_export(tmp_path / "export")
    push = {"folder": folder, "repo_id": "alice/ad-instruct", "token": TOKEN}
    run = run_pushes(hub, home, [push, {**push, "private": True}])
    run.result(0)
    error = run.error(1)
    assert "PushError" in error["types"]
    assert "exists and is public" in error["message"]
    repo = hub.repo("alice/ad-instruct", "dataset")
    assert repo.private is False and len(repo.pushed_commits()) == 1


# --------------------------------------------------------------------------------------
# Tokens, and input refused before anything is sent
# --------------------------------------------------------------------------------------


def test_wrong_token_is_one_line_no_commit_and_no_trace_of_it(hub, home, tmp_path):
    folder, _ = make_export(tmp_path / "export")
    # HF_DEBUG makes the client log every request as a curl command too.
    run = run_pushes(
        hub, home, [{"folder": folder, "repo_id": "alice/ad-instruct", "token": WRONG_TOKEN}],
        env={"HF_DEBUG": "1"},
    )  # fmt: skip
    error = run.error()
    assert {"PushError", "AdinstructError"} <= set(error["types"])
    assert "\n" not in error["message"]
    assert "401" in error["message"] and "hf auth login" in error["message"]
    assert hub.repos == [] and not hub.recorded(pattern="/commit/")
    statuses = [r.status for r in api_requests(hub)]
    assert statuses and set(statuses) == {401}
    assert {r.authorization for r in api_requests(hub)} == {f"Bearer {WRONG_TOKEN}"}
    shown = run.everything_shown()
    assert "Send: curl" in shown and "DEBUG huggingface_hub" in shown  # the logs were captured
    assert WRONG_TOKEN not in shown


@pytest.mark.parametrize("source", ["environment", "saved login"])
def test_without_an_argument_the_token_comes_from_the_environment_or_login(
    source, hub, home, tmp_path
):
    # (The argument winning over HF_TOKEN is the private push above.)
    folder, _ = make_export(tmp_path / "export")
    env = {}
    if source == "environment":
        env["HF_TOKEN"] = TOKEN
    else:
        (home / "token").write_text(TOKEN)  # where `hf auth login` saves it, under HF_HOME
    run = run_pushes(hub, home, [{"folder": folder, "repo_id": "alice/ad-instruct"}], env=env)
    run.result()
    assert len(hub.repo("alice/ad-instruct", "dataset").pushed_commits()) == 1
    assert {r.authorization for r in api_requests(hub)} == {f"Bearer {TOKEN}"}
    assert TOKEN not in run.everything_shown()


def test_bad_input_is_refused_in_one_line_before_any_request(hub, home, tmp_path):
    folder, _ = make_export(tmp_path / "export")
    no_card, _ = make_export(tmp_path / "no-card")
    (no_card / "README.md").unlink()
    pushes = [
        {"folder": folder, "repo_id": "alice/ad-instruct"},  # no token anywhere
        {"folder": no_card, "repo_id": "alice/ad-instruct", "token": TOKEN},
        {"folder": tmp_path / "missing", "repo_id": "alice/ad-instruct", "token": TOKEN},
        {"folder": folder / PARQUET, "repo_id": "alice/ad-instruct", "token": TOKEN},
        {"folder": folder, "repo_id": "ad-instruct", "token": TOKEN},
    ]
    run = run_pushes(hub, home, pushes)
    errors = [run.error(index) for index in range(len(pushes))]
    assert all("ConfigError" in error["types"] for error in errors)
    no_token, card, missing, not_a_folder, repo_id = [error["message"] for error in errors]
    assert all("\n" not in error["message"] for error in errors)
    assert "no Hugging Face token" in no_token and "hf auth login" in no_token
    assert "has no README.md" in card
    assert "is not a folder" in missing and "is not a folder" in not_a_folder
    assert "namespace/name" in repo_id
    assert hub.requests == []


# --------------------------------------------------------------------------------------
# The stand-in answers like the Hub where the tests above rely on it
# --------------------------------------------------------------------------------------


def _post(url: str, body: bytes, token: str, content_type: str) -> tuple[int, dict, Any]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_standin_refuses_a_commit_to_a_missing_repo_and_a_bad_token(hub):
    commit = b'{"key": "header", "value": {"summary": "x", "description": ""}}\n'
    url = f"{hub.endpoint}/api/datasets/alice/missing/commit/main"
    status, headers, _ = _post(url, commit, TOKEN, "application/x-ndjson")
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"
    status, headers, body = _post(url, commit, WRONG_TOKEN, "application/x-ndjson")
    assert status == 401
    # It quotes the credentials back: the push tests' scan for the token is not vacuous.
    assert WRONG_TOKEN in body["error"]
    assert [r.authorization for r in hub.requests] == [f"Bearer {TOKEN}", f"Bearer {WRONG_TOKEN}"]
