"""A small OpenAI-compatible HTTP server on 127.0.0.1 that plays the LLM in tests and benchmarks.

Use it as a context manager, or as the `standin` pytest fixture (import it into a test module:
`from llm_standin import standin`)::

    with StandinServer(latency_s=0.0) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test-...")
        ...
        server.chat_bodies()          # every chat request body received, in arrival order
        server.requests               # everything received: method, path, body, status, time
        server.authorization_headers  # every Authorization header received
        server.answered_usage()       # the `usage` of every 200 chat answer it sent

Endpoints: POST /v1/chat/completions, POST /v1/files, GET /v1/files/{id}/content,
POST /v1/batches, GET /v1/batches, GET /v1/batches/{id}. A batch moves validating ->
in_progress -> completed over `batch_polls` retrievals, and is answered line by line like
the chat endpoint (faults included, latency not).

Answers are deterministic: with a json_schema response format, an object that fills the
schema (strings say "synthetic <field>", booleans are true); otherwise a line of text. Pass
`responder(body) -> str` to answer differently. Usage is derived from the request's size.

Faults, per request: put `fault(kind, ...)` in the last user message's text, and the first
`times` requests carrying that same text (default 1; "always" for all) get the fault; or
queue faults for the next requests whatever they say, with `server.enqueue(kind, ...)`.
Kinds: "429" (retry_after=seconds, retry_after_ms=ms), "status" (code=500, or any code),
"slow" (delay=seconds before answering), "cutoff" (JSON cut in the middle, finish "stop"),
"refusal", "length", "content_filter".

Run it alone for benchmarks: `python tests/llm_standin.py --latency 0.2` prints its base URL.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import itertools
import json
import math
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], str]

MARKER = re.compile(r"<<fault (?P<kind>[\w]+)(?P<params>(?: [\w]+=[\w.-]+)*)>>")
REFUSAL_TEXT = "I'm sorry, I can't help with that request."


def fault(kind: str, times: int | str = 1, **params: float | int | str) -> str:
    """The marker text that makes the stand-in fault on a request carrying it."""
    pairs = "".join(f" {name}={value}" for name, value in {"times": times, **params}.items())
    return f"<<fault {kind}{pairs}>>"


@dataclass
class Fault:
    kind: str
    params: dict[str, str] = field(default_factory=dict)

    def number(self, name: str, default: float) -> float:
        return float(self.params.get(name, default))


@dataclass
class Recorded:
    """One request the server received, and what it answered."""

    method: str
    path: str
    authorization: str | None
    body: Any
    status: int = 0
    usage: dict[str, Any] | None = None
    received_at: float = field(default_factory=time.monotonic)


# --------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------


def fill_schema(schema: dict[str, Any], defs: dict[str, Any] | None = None, name: str = "") -> Any:
    """A deterministic value that conforms to a (strict, OpenAI-style) JSON Schema."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return fill_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, name)
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            options = [option for option in schema[combinator] if option.get("type") != "null"]
            return fill_schema((options or schema[combinator])[0], defs, name)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {key: fill_schema(value, defs, key) for key, value in properties.items()}
    if kind == "array":
        return [fill_schema(schema.get("items", {}), defs, name)]
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "null":
        return None
    return f"synthetic {name or 'text'}"


def default_responder(body: dict[str, Any]) -> str:
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return json.dumps(fill_schema(response_format["json_schema"]["schema"]))
    return f"Synthetic answer to: {last_user_text(body)[:60]}"


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return " ".join(part.get("text", "") for part in content if part.get("type") == "text")
    return ""


def prompt_tokens_of(body: dict[str, Any]) -> tuple[int, int]:
    """(prompt tokens, cached tokens): text by characters / 4, each image 85 (low) or 765."""
    text_chars, image_tokens = 0, 0
    for message in body.get("messages", []):
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            if part.get("type") == "image_url":
                image_tokens += 85 if part["image_url"].get("detail") == "low" else 765
            else:
                text_chars += len(part.get("text", ""))
    prompt = math.ceil(text_chars / 4) + 4 * len(body.get("messages", [])) + image_tokens
    # A system prompt shared by many requests is what the server's prompt cache would hold.
    cached = prompt // 3 if any(m.get("role") == "system" for m in body.get("messages", [])) else 0
    return prompt, cached


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class StandinServer:
    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        responder: Responder | None = None,
        batch_polls: int = 3,
        require_api_key: str | None = None,
        record_bodies: bool = True,
        port: int = 0,
    ) -> None:
        self.latency_s = latency_s
        self.responder = responder or default_responder
        self.batch_polls = batch_polls
        self.require_api_key = require_api_key
        self.record_bodies = record_bodies
        self.requests: list[Recorded] = []
        self.batch_creations = 0
        #: Requests whose body never fully arrived (the client was killed while sending).
        self.abandoned = 0
        #: The most chat requests it was answering at the same moment.
        self.most_concurrent = 0
        self._concurrent = 0
        self._queue: deque[Fault] = deque()
        self._marker_counts: Counter[str] = Counter()
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._polls: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd = _Listener(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> StandinServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests read -------------------------------------------------------------

    def enqueue(self, kind: str, **params: float | int | str) -> None:
        """The next chat request (whatever it says) gets this fault; queue several in order."""
        with self._lock:
            self._queue.append(Fault(kind, {key: str(value) for key, value in params.items()}))

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self._recorded("/v1/chat/completions")]

    def answered_usage(self) -> list[dict[str, Any]]:
        """The usage of every 200 chat answer sent (batch lines included)."""
        with self._lock:
            return [r.usage for r in self.requests if r.usage is not None]

    @property
    def authorization_headers(self) -> list[str | None]:
        with self._lock:
            return [r.authorization for r in self.requests]

    def _recorded(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _record(self, entry: Recorded) -> None:
        with self._lock:
            self.requests.append(entry)

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-{next(self._ids)}"

    # -- answering -------------------------------------------------------------------

    def _fault_for(self, body: dict[str, Any]) -> Fault | None:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            text = last_user_text(body)
            match = MARKER.search(text)
            if not match:
                return None
            params = dict(pair.split("=", 1) for pair in match.group("params").split())
            times = params.pop("times", "1")
            self._marker_counts[text] += 1
            if times != "always" and self._marker_counts[text] > int(times):
                return None
            return Fault(match.group("kind"), params)

    def answer_chat(
        self, body: dict[str, Any], *, received_at: float | None = None
    ) -> tuple[int, dict, dict]:
        """(status, headers, JSON body) for a chat request; batch lines (no arrival) never wait."""
        fault = self._fault_for(body)
        kind = fault.kind if fault else "ok"
        if kind == "429":
            headers = {}
            if "retry_after" in fault.params:
                headers["retry-after"] = fault.params["retry_after"]
            if "retry_after_ms" in fault.params:
                headers["retry-after-ms"] = fault.params["retry_after_ms"]
            return 429, headers, _error("Rate limit reached for requests", "rate_limit_exceeded")
        if kind == "status":
            code = int(fault.number("code", 500))
            return code, {}, _error(f"Stand-in fault {code}", "server_error")
        if received_at is not None:
            delay = fault.number("delay", 1.0) if kind == "slow" else 0.0
            # The latency counts from arrival: parsing the request is part of it, not extra.
            time.sleep(max(0.0, received_at + self.latency_s + delay - time.monotonic()))
        content: str | None = self.responder(body)
        refusal, finish_reason = None, "stop"
        if kind == "cutoff":
            content = content[: max(1, len(content) // 2)]
        elif kind == "length":
            content, finish_reason = content[: max(1, len(content) // 3)], "length"
        elif kind == "content_filter":
            content, finish_reason = None, "content_filter"
        elif kind == "refusal":
            content, refusal = None, REFUSAL_TEXT
        prompt, cached = prompt_tokens_of(body)
        completion = math.ceil(len(content or refusal or "") / 4) + 1
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        answer = {
            "id": self._next_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stand-in"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }
        return 200, {}, answer

    # -- files and batches -----------------------------------------------------------

    def create_file(self, filename: str, content: bytes, purpose: str) -> dict[str, Any]:
        file_id = self._next_id("file")
        with self._lock:
            self._files[file_id] = content
        return _file_object(file_id, filename, len(content), purpose)

    def file_content(self, file_id: str) -> bytes | None:
        with self._lock:
            return self._files.get(file_id)

    def create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.file_content(body.get("input_file_id", "")) is None:
            return 400, _error(f"No such file: {body.get('input_file_id')}", "invalid_file")
        batch = {
            "id": self._next_id("batch"),
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "created_at": int(time.time()),
            "status": "validating",
            "metadata": body.get("metadata"),
        }
        with self._lock:
            self._batches[batch["id"]] = batch
            self.batch_creations += 1
        return 200, batch

    def list_batches(self) -> dict[str, Any]:
        with self._lock:
            data = sorted(self._batches.values(), key=lambda b: b["id"], reverse=True)
        return {"object": "list", "data": data, "has_more": False}

    def retrieve_batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            self._polls[batch_id] += 1
            polls = self._polls[batch_id]
        if batch["status"] == "validating" and polls >= 1:
            batch["status"] = "in_progress"
        if batch["status"] == "in_progress" and polls >= self.batch_polls:
            self._run_batch(batch)
        return dict(batch)

    def _run_batch(self, batch: dict[str, Any]) -> None:
        outputs, errors = [], []
        for line in self.file_content(batch["input_file_id"]).decode("utf-8").splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            status, _headers, answer = self.answer_chat(item["body"])
            if status == 200:
                self._record(
                    Recorded("BATCH", item["url"], None, item["body"], 200, answer["usage"])
                )
            entry = {
                "id": self._next_id("batch_req"),
                "custom_id": item["custom_id"],
                "response": {"status_code": status, "request_id": "req", "body": answer},
                "error": None,
            }
            (outputs if status == 200 else errors).append(entry)
        for name, entries in (("output_file_id", outputs), ("error_file_id", errors)):
            if entries:
                text = "".join(json.dumps(entry) + "\n" for entry in entries).encode("utf-8")
                batch[name] = self.create_file(f"{name}.jsonl", text, "batch_output")["id"]
        total = len(outputs) + len(errors)
        batch["request_counts"] = {"total": total, "completed": len(outputs), "failed": len(errors)}
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _file_object(file_id: str, filename: str, size: int, purpose: str) -> dict[str, Any]:
    return {
        "id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()),
        "filename": filename, "purpose": purpose, "status": "processed",
    }  # fmt: skip


def _parse_multipart(content_type: str, payload: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename, bytes)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + payload)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


class _Listener(ThreadingHTTPServer):
    # The default backlog of 5 resets connections when 64 clients connect at once.
    request_queue_size = 1024


def _handler_for(server: StandinServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real API server does
        # Headers and body go out in two writes; with Nagle on, the client's delayed ACK
        # would add 40 ms to every answer.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read `server.requests` instead."""

        def do_POST(self) -> None:
            arrived = time.monotonic()
            payload = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?", 1)[0]
            auth = self.headers.get("Authorization")
            if path == "/v1/files":
                fields = _parse_multipart(self.headers["Content-Type"], payload)
                filename, content = fields["file"]
                purpose = fields["purpose"][1].decode("utf-8")
                server._record(Recorded("POST", path, auth, {"purpose": purpose}, 200))
                self._reply(200, server.create_file(filename or "upload", content, purpose))
                return
            if len(payload) < int(self.headers.get("Content-Length") or 0):
                # The client went away mid-request (a test killed it): nothing to answer, and
                # nothing to record as a request. Answering the empty body here once made a
                # kill test see a phantom request.
                with server._lock:
                    server.abandoned += 1
                self.close_connection = True
                return
            body = json.loads(payload or b"{}")
            entry = Recorded("POST", path, auth, body if server.record_bodies else None)
            server._record(entry)
            if server.require_api_key and auth != f"Bearer {server.require_api_key}":
                # Real servers echo the key they were given; the engine must redact it.
                given = (auth or "").removeprefix("Bearer ")
                entry.status = 401
                self._reply(401, _error(f"Incorrect API key provided: {given}", "invalid_api_key"))
            elif path == "/v1/chat/completions":
                with server._lock:
                    server._concurrent += 1
                    server.most_concurrent = max(server.most_concurrent, server._concurrent)
                try:
                    status, headers, answer = server.answer_chat(body, received_at=arrived)
                finally:
                    with server._lock:
                        server._concurrent -= 1
                entry.status = status
                entry.usage = answer.get("usage") if status == 200 else None
                self._reply(status, answer, headers)
            elif path == "/v1/batches":
                entry.status, answer = server.create_batch(body)
                self._reply(entry.status, answer)
            else:
                self._reply(404, _error(f"Unknown path {path}", "not_found"))

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            server._record(Recorded("GET", path, self.headers.get("Authorization"), None, 200))
            if match := re.fullmatch(r"/v1/files/([\w-]+)/content", path):
                content = server.file_content(match.group(1))
                if content is not None:
                    self._reply_bytes(200, content, "application/octet-stream")
                    return
            elif path == "/v1/batches":
                self._reply(200, server.list_batches())
                return
            elif match := re.fullmatch(r"/v1/batches/([\w-]+)", path):
                batch = server.retrieve_batch(match.group(1))
                if batch is not None:
                    self._reply(200, batch)
                    return
            self._reply(404, _error(f"Unknown path {path}", "not_found"))

        def _reply(self, status: int, answer: dict, headers: dict[str, str] | None = None) -> None:
            self._reply_bytes(
                status, json.dumps(answer).encode("utf-8"), "application/json", headers
            )

        def _reply_bytes(
            self, status: int, data: bytes, content_type: str, headers: dict | None = None
        ) -> None:
            # The client may have given up already (a timeout fault): nothing left to tell it.
            with suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

    return Handler


def _fixture() -> Iterator[StandinServer]:
    with StandinServer() as server:
        yield server


try:
    import pytest

    standin = pytest.fixture(_fixture, name="standin")
except ImportError:  # the benchmark runs the server without pytest installed
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the OpenAI stand-in until stdin closes.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per chat answer")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = StandinServer(latency_s=args.latency, port=args.port, record_bodies=False).start()
    print(server.base_url, flush=True)
    sys.stdin.read()  # the parent closes our stdin (or exits) to stop us
    server.stop()


if __name__ == "__main__":
    main()
