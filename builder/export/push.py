"""Push an exported Hugging Face folder to a dataset repo on the Hub, in one commit.

The folder is what the Hugging Face export writes (README.md card, data/<config>/*.parquet,
perhaps a copy of manifest.json); it is pushed as opaque files. Hidden files and folders
(.cache, .DS_Store, ...) stay behind. The commit message carries the sha256 of manifest.json
when the folder has one, else of README.md, so a commit on the Hub names the build it holds.

Everything goes through `huggingface_hub.HfApi`, which finds the Hub through its own
`HF_ENDPOINT` handling. The token comes from the `token` argument, else HF_TOKEN, else the
user's saved login, and goes nowhere but the client's Authorization header: it is never
printed or logged, and errors are rebuilt from the Hub's answer with any trace of it removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled
from pydantic import BaseModel, ConfigDict

from adinstruct.builder.errors import AdinstructError, ConfigError
from adinstruct.builder.redact import REDACTED, redact_text

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
#: Remote files a push never deletes although the export has none: the Hub writes it itself.
KEPT_REMOTE_FILES = frozenset({".gitattributes"})
DEFAULT_BRANCH = "main"
LOGIN_HINT = "log in with `hf auth login`, or set HF_TOKEN to a token with write access"
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# What a server may echo of a request's credentials, whatever the token looks like.
AUTH_ECHO = re.compile(r"\b(Bearer|Basic)\s+\S+", re.IGNORECASE)


class PushError(AdinstructError):
    """The Hub refused the push, or could not be reached; the message is one line."""


class PushResult(BaseModel):
    """What a push made on the Hub, for the command line to print."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    #: Files in the pushed folder and their total size. The commit leaves out those the Hub
    #: holds unchanged already, and if that is all of them the client makes no commit at all:
    #: commit_oid is then the branch's head, as it was.
    files: int
    bytes: int
    #: Which file's sha256 the commit message carries, and that hash.
    hashed_file: Literal["manifest.json", "README.md"]
    sha256: str


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> PushResult:
    """Create the dataset repo (and branch) if needed, then commit the folder to it at once."""
    folder = Path(folder)
    files = _folder_files(folder)
    if not REPO_ID.match(repo_id):
        raise ConfigError(f"repo id {repo_id!r} is not namespace/name (e.g. my-org/my-dataset)")
    hashed_file = "manifest.json" if (folder / "manifest.json").is_file() else "README.md"
    digest = hashlib.sha256((folder / hashed_file).read_bytes()).hexdigest()
    branch = revision or DEFAULT_BRANCH
    token = token or get_token()  # get_token() reads HF_TOKEN, then the saved login
    if not token:
        raise ConfigError(f"no Hugging Face token to push {repo_id} with: {LOGIN_HINT}")

    api = HfApi(token=token)
    total = sum(path.stat().st_size for _, path in files)
    message = f"adinstruct export ({hashed_file.removesuffix('.json')} sha256 {digest})"
    description = f"{len(files)} files, {total} bytes, from {folder.resolve().name}/"
    failure = None
    try:
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        # create_repo ignores `private` for a repo that exists already: never let a push that
        # was asked to stay private land in a public repo.
        if private and not api.dataset_info(repo_id).private:
            raise PushError(f"{repo_id} exists and is public: refusing to push it as private")
        if branch != DEFAULT_BRANCH:
            api.create_branch(repo_id, branch=branch, repo_type=REPO_TYPE, exist_ok=True)
        log.info("pushing %d files (%d bytes) to %s@%s", len(files), total, repo_id, branch)
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=disk) for name, disk in files
        ]
        # What an earlier export left and this one no longer has goes in the same commit: a
        # stale `train-00001-of-00002.parquet` would still match the card's data_files glob.
        local = {name for name, _ in files}
        operations += [
            CommitOperationDelete(path_in_repo=path)
            for path in api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=branch)
            if path not in local and path not in KEPT_REMOTE_FILES
        ]
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            commit_description=description,
            repo_type=REPO_TYPE,
            revision=branch,
        )
    except HfHubHTTPError as error:
        failure = _describe_refusal(error, repo_id, api.endpoint, token)
    except OfflineModeIsEnabled:
        failure = f"cannot push {repo_id}: HF_HUB_OFFLINE is set"
    except HTTPError as error:  # no answer at all: connection refused, timeout, TLS
        failure = f"cannot reach the Hub at {api.endpoint}: {_scrub(str(error), token)}"
    except ValueError as error:  # the client's own checks, e.g. an invalid card header
        failure = f"cannot push {repo_id}: {_scrub(str(error), token)}"
    except RuntimeError as error:  # how the client reports a failed LFS upload
        cause = f": {error.__cause__}" if isinstance(error.__cause__, HTTPError) else ""
        failure = f"pushing {repo_id} failed: {_scrub(f'{error}{cause}', token)}"
    if failure is not None:
        # Raised here, outside the except blocks, so that the client's exception (whose request
        # holds the Authorization header) is not even kept as this one's __context__.
        raise PushError(_one_line(failure))
    log.info("pushed %s@%s: commit %s", repo_id, branch, commit.oid)
    return PushResult(
        repo_id=repo_id,
        revision=branch,
        commit_oid=commit.oid,
        commit_url=commit.commit_url,
        files=len(files),
        bytes=total,
        hashed_file=hashed_file,
        sha256=digest,
    )


def _folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(path in the repo, path on disk) of every file to push, sorted; refuses a non-export."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: push takes an exported Hugging Face folder")
    if not (folder / "README.md").is_file():
        raise ConfigError(
            f"{folder} has no README.md: push takes an exported Hugging Face folder (card and data)"
        )
    return sorted(_visible_files(folder))


def _visible_files(folder: Path) -> Iterator[tuple[str, Path]]:
    for directory, subdirectories, names in os.walk(folder):
        # Pruned in place so that os.walk never descends into .cache, .git and the like.
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = Path(directory, name)
                yield path.relative_to(folder).as_posix(), path


def _describe_refusal(error: HfHubHTTPError, repo_id: str, endpoint: str, token: str) -> str:
    status = error.response.status_code if error.response is not None else None
    if status == 401:
        # The server's words are left out on purpose: a 401 is where a token gets quoted back.
        return f"the Hub at {endpoint} refused the token (401 Unauthorized): {LOGIN_HINT}"
    # The server's message comes once from a header and again from the body, most of the time.
    said = " ".join(dict.fromkeys((error.server_message or str(error)).splitlines()))
    if status == 403:
        return f"no write access to {repo_id} with this token (403): {_scrub(said, token)}"
    return f"pushing {repo_id} failed (HTTP {status}): {_scrub(said, token)}"


def _scrub(text: str, token: str) -> str:
    text = text.replace(token, REDACTED) if token else text
    return redact_text(AUTH_ECHO.sub(rf"\1 {REDACTED}", text))


def _one_line(text: str) -> str:
    return " ".join(text.split())
