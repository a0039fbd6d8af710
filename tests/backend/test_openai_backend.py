"""The OpenAI-compatible backend against a small real HTTP/1.1 server on 127.0.0.1 that speaks just enough
of the chat-completions streaming API (and breaks it on purpose)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import pytest

from fabstir import BackendError, ConfigurationError
from fabstir.backend import Backend, Generation, GenerationRequest, OpenAIBackend, Usage


@dataclass
class Exchange:
    """One request the server received, and the connection it came on."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        return json.loads(self.body)

    async def wait_for_disconnect(self) -> None:
        """Returns when the client closed the connection (reads until EOF)."""
        while await self.reader.read(65536):
            pass
        self.disconnected.set()


Handler = Callable[[Exchange], Awaitable[None]]


class FakeServer:
    """An HTTP/1.1 server on a free port; ``handler`` writes each response (the connection is closed after
    it returns). Every request is recorded in ``exchanges``; ``received`` is set by the first one."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.exchanges: list[Exchange] = []
        self.received = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> FakeServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            request_line = (await reader.readline()).decode()
            method, path, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode().strip()) != "":
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            exchange = Exchange(method, path, headers, body, reader, writer)
            self.exchanges.append(exchange)
            self.received.set()
            await self._handler(exchange)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\n"
)


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk(content: str | None = None, finish: str | None = None, *, role: bool = False) -> bytes:
    delta: dict[str, Any] = {"content": content}
    if role:
        delta["role"] = "assistant"
    return event(
        {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def usage_chunk(prompt: int, completion: int) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return event({"object": "chat.completion.chunk", "choices": [], "usage": usage})


DONE = b"data: [DONE]\n\n"


def stream_of(*parts: bytes) -> Handler:
    """A handler answering 200 with these event-stream bytes, then closing the connection."""

    async def handler(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD + b"".join(parts))
        await exchange.writer.drain()

    return handler


def status_of(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    async def handler(exchange: Exchange) -> None:
        head = (
            f"HTTP/1.1 {status} Whatever\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        )
        exchange.writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        await exchange.writer.drain()

    return handler


def request(prompt: str = "Tell me about rivers", max_tokens: int = 32, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(model="m", prompt=prompt, max_tokens=max_tokens, **kwargs)


async def collect(generation: Generation) -> list[str]:
    async with asyncio.timeout(10):
        return [piece async for piece in generation]


def outcome(generation: Generation) -> tuple[str | None, Usage | None]:
    return generation.finish_reason, generation.usage


async def collect_failure(generation: Generation) -> tuple[list[str], BackendError]:
    """The pieces yielded before the generation failed, and its error."""
    pieces: list[str] = []
    try:
        async with asyncio.timeout(10):
            async for piece in generation:
                pieces.append(piece)
    except BackendError as exc:
        return pieces, exc
    raise AssertionError(f"the generation did not fail; it yielded {pieces}")


HAPPY = stream_of(
    chunk(None, role=True),
    chunk("Hello"),
    chunk(","),
    chunk(" world"),
    chunk(None, "stop"),
    usage_chunk(prompt=9, completion=4),
    DONE,
)


async def test_happy_path_with_usage_chunk() -> None:
    """Content pieces stream in order; finish_reason and the server's usage are set once the stream ends."""
    async with FakeServer(HAPPY) as server, OpenAIBackend(server.url, api_key="sk-test") as backend:
        generation = backend.generate(request(system="Be brief.", seed=5, temperature=0.7))
        assert isinstance(generation, Generation)
        assert outcome(generation) == (None, None)
        assert await collect(generation) == ["Hello", ",", " world"]
        assert outcome(generation) == ("stop", Usage(prompt_tokens=9, completion_tokens=4))
    [exchange] = server.exchanges
    assert (exchange.method, exchange.path) == ("POST", "/v1/chat/completions")
    assert exchange.headers["authorization"] == "Bearer sk-test"
    assert exchange.headers["accept"] == "text/event-stream"
    assert exchange.json() == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me about rivers"},
        ],
        "max_tokens": 32,
        "temperature": 0.7,
        "seed": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_usage_and_finish_reason_only_at_the_end() -> None:
    """While pieces are still coming, usage and finish_reason stay unset."""
    async with FakeServer(HAPPY) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request())
        async with asyncio.timeout(10):
            async for _ in generation:
                assert outcome(generation) == (None, None)
        assert outcome(generation) == ("stop", Usage(prompt_tokens=9, completion_tokens=4))


async def test_without_usage_chunk_pieces_are_counted() -> None:
    """A server that sends no usage gets one completion token per piece and a prompt estimate."""
    handler = stream_of(chunk("a"), chunk("b"), chunk("c", "stop"), DONE)
    async with FakeServer(handler) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request(prompt="x" * 41, system="y" * 10))
        assert await collect(generation) == ["a", "b", "c"]
        assert generation.usage == Usage(prompt_tokens=math.ceil(51 / 4), completion_tokens=3)
        assert generation.finish_reason == "stop"


async def test_empty_choices_and_null_or_empty_content_are_skipped() -> None:
    """Chunks with no choices, no delta, a null or an empty content yield nothing, and end nothing."""
    handler = stream_of(
        event({"choices": []}),
        chunk(None, role=True),
        chunk(""),
        chunk("one"),
        event({"choices": [{"index": 0, "finish_reason": None}]}),
        event({"choices": [{"index": 0, "delta": {}, "finish_reason": None}]}),
        chunk("two"),
        chunk("", "stop"),
        DONE,
    )
    async with FakeServer(handler) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request())
        assert await collect(generation) == ["one", "two"]
        assert generation.finish_reason == "stop"


@pytest.mark.parametrize(
    ("server_reason", "reason"),
    [("length", "length"), ("stop", "stop"), ("content_filter", "stop"), ("tool_calls", "stop")],
)
async def test_finish_reason_mapping(server_reason: str, reason: str) -> None:
    """ "length" stays "length"; every other way a completion ends is "stop"."""
    handler = stream_of(chunk("a"), chunk("b", server_reason), usage_chunk(3, 2), DONE)
    async with FakeServer(handler) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request(max_tokens=2))
        assert await collect(generation) == ["a", "b"]
        assert generation.finish_reason == reason


async def test_http_500_with_json_error() -> None:
    """A server error becomes a retryable BackendError carrying the server's own message."""
    body = json.dumps({"error": {"code": 500, "message": "model exploded", "type": "server_error"}}).encode()
    async with FakeServer(status_of(500, body)) as server, OpenAIBackend(server.url) as backend:
        with pytest.raises(BackendError, match="HTTP 500: model exploded") as caught:
            await collect(backend.generate(request()))
    assert caught.value.retryable
    assert caught.value.context["status"] == 500


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (json.dumps({"error": {"message": "context too long"}}).encode(), "context too long"),
        (json.dumps({"object": "error", "message": "bad model"}).encode(), "bad model"),
        (json.dumps({"detail": "Not Found"}).encode(), "Not Found"),
        (b"plain text failure", "plain text failure"),
    ],
)
async def test_http_400_is_not_retryable(body: bytes, message: str) -> None:
    """A 4xx means the request itself is wrong: not retryable; each server's error shape is understood."""
    async with FakeServer(status_of(400, body)) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request())
        with pytest.raises(BackendError, match=f"HTTP 400: {message}") as caught:
            await collect(generation)
    assert not caught.value.retryable
    assert generation.finish_reason is None
    assert generation.usage is not None
    assert generation.usage.completion_tokens == 0


async def test_connection_refused() -> None:
    """Nothing listening at the URL: a retryable BackendError naming the URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with OpenAIBackend(f"http://127.0.0.1:{port}") as backend:
        with pytest.raises(
            BackendError, match=f"cannot connect to the backend at http://127.0.0.1:{port}"
        ) as caught:
            await collect(backend.generate(request()))
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_malformed_json_chunk() -> None:
    """A data line that is not JSON fails the generation after the pieces before it."""
    handler = stream_of(chunk("ok"), b"data: {not json\n\n", chunk("never"), DONE)
    async with FakeServer(handler) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request())
        pieces, error = await collect_failure(generation)
        assert "not JSON" in str(error)
        assert pieces == ["ok"]
        assert generation.usage is not None
        assert generation.usage.completion_tokens == 1


@pytest.mark.parametrize(
    "bad",
    [
        b'data: ["a list"]\n\n',
        b'data: {"choices": {"index": 0}}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {"content": 5}}]}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": -1, "completion_tokens": 2}}\n\n',
    ],
)
async def test_malformed_chunk_structure(bad: bytes) -> None:
    """JSON of the wrong shape (not an object, choices not a list, content not text, bad usage) fails."""
    async with FakeServer(stream_of(bad, DONE)) as server, OpenAIBackend(server.url) as backend:
        with pytest.raises(BackendError, match="the backend sent"):
            await collect(backend.generate(request()))


async def test_error_event_mid_stream() -> None:
    """llama.cpp reports a failure after the headers as an ``error`` object in the stream."""
    handler = stream_of(chunk("a"), event({"error": {"code": 500, "message": "slot crashed"}}), DONE)
    async with FakeServer(handler) as server, OpenAIBackend(server.url) as backend:
        with pytest.raises(BackendError, match="failed mid-stream: slot crashed"):
            await collect(backend.generate(request()))


async def test_error_event_type() -> None:
    """An SSE event named ``error`` fails the generation with its data as the message, JSON or not."""
    handler = stream_of(chunk("a"), b"event: error\ndata: out of memory\n\n", DONE)
    async with FakeServer(handler) as server, OpenAIBackend(server.url) as backend:
        with pytest.raises(BackendError, match="failed mid-stream: out of memory"):
            await collect(backend.generate(request()))


async def test_stream_cut_before_done() -> None:
    """The connection closing before any finish_reason or [DONE] is a cut completion: a retryable error."""
    async with FakeServer(stream_of(chunk("a"), chunk("b"))) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request())
        pieces, error = await collect_failure(generation)
    assert "ended before [DONE] without a finish_reason" in str(error)
    assert pieces == ["a", "b"]
    assert error.retryable
    assert generation.finish_reason is None
    assert generation.usage == Usage(prompt_tokens=5, completion_tokens=2)


async def test_done_without_finish_reason_is_an_error() -> None:
    """[DONE] without any finish_reason does not say how the completion ended: an error."""
    async with FakeServer(stream_of(chunk("a"), DONE)) as server, OpenAIBackend(server.url) as backend:
        with pytest.raises(BackendError, match="after \\[DONE\\] without a finish_reason"):
            await collect(backend.generate(request()))


async def test_stream_cut_after_finish_reason_keeps_the_text() -> None:
    """A stream that loses only its tail (usage chunk, [DONE]) after the finish_reason is complete text."""
    async with (
        FakeServer(stream_of(chunk("a"), chunk("b", "length"))) as server,
        OpenAIBackend(server.url) as backend,
    ):
        generation = backend.generate(request(max_tokens=2))
        assert await collect(generation) == ["a", "b"]
        assert generation.finish_reason == "length"
        assert generation.usage == Usage(prompt_tokens=5, completion_tokens=2)


async def test_chunked_body_cut_mid_chunk() -> None:
    """A chunked response whose connection drops inside the body maps httpx's error to BackendError."""

    async def handler(exchange: Exchange) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = chunk("a")
        exchange.writer.write(head + f"{len(body) + 100:x}\r\n".encode() + body)
        await exchange.writer.drain()

    async with FakeServer(handler) as server, OpenAIBackend(server.url) as backend:
        with pytest.raises(BackendError, match=r"the connection to the backend .* failed") as caught:
            await collect(backend.generate(request()))
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)


async def test_overlong_sse_line() -> None:
    """A line over 1 MiB is refused with a clear error instead of being buffered."""
    huge = b"data: " + b"x" * (1 << 20) + b"\n\n"
    async with FakeServer(stream_of(chunk("a"), huge)) as server, OpenAIBackend(server.url) as backend:
        with pytest.raises(BackendError, match="broke a limit: an event-stream line is longer than 1048576"):
            await collect(backend.generate(request()))


async def test_json_answer_instead_of_a_stream() -> None:
    """A server that ignores ``stream: true`` and answers JSON gets a clear error."""
    body = json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()
    async with FakeServer(status_of(200, body)) as server, OpenAIBackend(server.url) as backend:
        with pytest.raises(BackendError, match="JSON instead of an event stream"):
            await collect(backend.generate(request()))


async def test_read_timeout() -> None:
    """A server that sends headers and then nothing trips the read timeout: a retryable BackendError."""

    async def handler(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD + chunk("a"))
        await exchange.writer.drain()
        await exchange.wait_for_disconnect()

    async with FakeServer(handler) as server, OpenAIBackend(server.url, timeout=0.2) as backend:
        generation = backend.generate(request())
        with pytest.raises(BackendError, match="did not answer in time") as caught:
            await collect(generation)
    assert caught.value.retryable


def endless_stream(pieces_before_waiting: int) -> Handler:
    """Sends a few pieces, then keeps the response open until the client disconnects."""

    async def handler(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD + b"".join(chunk(f"t{i}") for i in range(pieces_before_waiting)))
        await exchange.writer.drain()
        await exchange.wait_for_disconnect()

    return handler


async def test_aclose_closes_the_connection() -> None:
    """aclose mid-stream closes the HTTP connection (the server sees the disconnect, which is what makes
    llama.cpp stop generating); usage counts the pieces taken; aclose is idempotent."""
    async with FakeServer(endless_stream(3)) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request())
        async with asyncio.timeout(10):
            assert await anext(generation) == "t0"
            assert await anext(generation) == "t1"
            await generation.aclose()
            await generation.aclose()
            await server.exchanges[0].disconnected.wait()
        assert generation.finish_reason is None
        assert generation.usage == Usage(prompt_tokens=5, completion_tokens=2)
        with pytest.raises(StopAsyncIteration):
            await anext(generation)


async def test_aclose_from_another_task_ends_a_waiting_iteration() -> None:
    """A consumer blocked waiting for the next piece ends its iteration when another task closes it."""
    async with FakeServer(endless_stream(1)) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request())
        pieces: list[str] = []
        first = asyncio.Event()

        async def consume() -> None:
            async for piece in generation:
                pieces.append(piece)
                first.set()

        async with asyncio.timeout(10):
            consumer = asyncio.create_task(consume())
            await first.wait()
            await generation.aclose()
            await consumer  # ends normally: StopAsyncIteration, not an error
            await server.exchanges[0].disconnected.wait()
        assert pieces == ["t0"]


async def test_backend_aclose_stops_running_generations() -> None:
    """Closing the backend closes generations still streaming, and later generate() calls fail."""
    async with FakeServer(endless_stream(2)) as server:
        backend = OpenAIBackend(server.url)
        generation = backend.generate(request())
        async with asyncio.timeout(10):
            assert await anext(generation) == "t0"
            await backend.aclose()
            await server.exchanges[0].disconnected.wait()
        with pytest.raises(StopAsyncIteration):
            await anext(generation)
        with pytest.raises(BackendError, match="closed"):
            backend.generate(request())
        await backend.aclose()


async def test_closing_before_iterating_sends_nothing() -> None:
    """A generation closed before its first iteration never sends a request."""
    async with FakeServer(HAPPY) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request())
        await generation.aclose()
        assert await collect(generation) == []
        assert generation.usage == Usage(prompt_tokens=5, completion_tokens=0)
    assert server.exchanges == []


async def test_continuation_is_an_assistant_prefix() -> None:
    """A continuation is sent as a final assistant message, with the flags that make vLLM continue it."""
    async with FakeServer(HAPPY) as server, OpenAIBackend(server.url) as backend:
        await collect(backend.generate(request(continuation="Rivers are")))
    body = server.exchanges[0].json()
    assert body["messages"] == [
        {"role": "user", "content": "Tell me about rivers"},
        {"role": "assistant", "content": "Rivers are"},
    ]
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert "seed" not in body


async def test_no_continuation_no_flags() -> None:
    """Without a continuation the last message is the user's and no continuation flag is sent."""
    async with FakeServer(HAPPY) as server, OpenAIBackend(server.url) as backend:
        await collect(backend.generate(request()))
    body = server.exchanges[0].json()
    assert body["messages"][-1]["role"] == "user"
    assert "continue_final_message" not in body
    assert "add_generation_prompt" not in body


async def test_model_map() -> None:
    """model_map turns marketplace ids into the server's names; list_models returns the marketplace ids
    without asking the server; an unmapped id is refused before any request."""
    async with FakeServer(HAPPY) as server:
        model_map = {"llama-3.2-1b-instruct": "Llama-3.2-1B-Instruct-Q8_0.gguf", "m2": "other"}
        async with OpenAIBackend(server.url + "/v1/", model_map=model_map) as backend:
            assert await backend.list_models() == ("llama-3.2-1b-instruct", "m2")
            generation = backend.generate(
                GenerationRequest(model="llama-3.2-1b-instruct", prompt="hi", max_tokens=4)
            )
            await collect(generation)
            with pytest.raises(BackendError, match="not served"):
                backend.generate(request())
    [exchange] = server.exchanges
    assert exchange.path == "/v1/chat/completions"
    assert exchange.json()["model"] == "Llama-3.2-1B-Instruct-Q8_0.gguf"


async def test_list_models_asks_the_server_without_a_map() -> None:
    """Without model_map, list_models returns the ids of the server's /v1/models."""
    models = {"object": "list", "data": [{"id": "a", "object": "model"}, {"id": "b", "object": "model"}]}
    handler = status_of(200, json.dumps(models).encode())
    async with FakeServer(handler) as server, OpenAIBackend(server.url, api_key="k") as backend:
        assert await backend.list_models() == ("a", "b")
    [exchange] = server.exchanges
    assert (exchange.method, exchange.path) == ("GET", "/v1/models")
    assert exchange.headers["authorization"] == "Bearer k"


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, b'{"error": {"message": "Invalid API Key"}}', "HTTP 401: Invalid API Key"),
        (200, b'{"data": "nope"}', "malformed"),
        (200, b"not json", "malformed"),
    ],
)
async def test_list_models_errors(status: int, body: bytes, message: str) -> None:
    """A failing or malformed model list becomes a BackendError."""
    async with FakeServer(status_of(status, body)) as server, OpenAIBackend(server.url) as backend:
        with pytest.raises(BackendError, match=message):
            await backend.list_models()


async def test_check_asks_the_server_even_with_a_map(caplog: pytest.LogCaptureFixture) -> None:
    """check() lists the server's models although model_map is given: a reachable server passes, and a
    mapped name the server does not list is logged (not refused: servers list aliases differently)."""
    models = {"object": "list", "data": [{"id": "served", "object": "model"}]}
    handler = status_of(200, json.dumps(models).encode())
    async with FakeServer(handler) as server:
        backend = OpenAIBackend(server.url, model_map={"a": "served", "b": "missing"})
        async with backend:
            await backend.check()
    assert [(e.method, e.path) for e in server.exchanges] == [("GET", "/v1/models")]
    assert "'missing'" in caplog.text
    assert "'served'" not in caplog.text.split("lists:")[0]


async def test_check_fails_for_an_unreachable_server_or_a_refused_key() -> None:
    """check() raises BackendError when nothing listens, and when the server refuses the API key."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with OpenAIBackend(f"http://127.0.0.1:{port}", model_map={"a": "a"}) as backend:
        with pytest.raises(BackendError, match="cannot connect"):
            await backend.check()
    refuse = status_of(401, b'{"error": {"message": "Invalid API Key"}}')
    async with FakeServer(refuse) as server, OpenAIBackend(server.url, model_map={"a": "a"}) as backend:
        with pytest.raises(BackendError, match="HTTP 401"):
            await backend.check()


async def test_max_tokens_zero_sends_nothing() -> None:
    """max_tokens=0 ends at once with "length" (servers disagree on what 0 means)."""
    async with FakeServer(HAPPY) as server, OpenAIBackend(server.url) as backend:
        generation = backend.generate(request(max_tokens=0))
        assert await collect(generation) == []
        assert generation.finish_reason == "length"
        assert generation.usage == Usage(prompt_tokens=5, completion_tokens=0)
        with pytest.raises(BackendError, match="negative"):
            backend.generate(request(max_tokens=-1))
    assert server.exchanges == []


async def test_given_client_is_used_and_not_closed() -> None:
    """A client passed in carries the requests and stays open after the backend closes."""
    async with FakeServer(HAPPY) as server, httpx.AsyncClient() as client:
        backend = OpenAIBackend(server.url, client=client)
        assert await collect(backend.generate(request())) == ["Hello", ",", " world"]
        await backend.aclose()
        assert not client.is_closed


async def test_implements_the_backend_protocol() -> None:
    """OpenAIBackend satisfies the Backend protocol."""
    async with OpenAIBackend("http://127.0.0.1:1") as backend:
        assert isinstance(backend, Backend)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "127.0.0.1:8080"},
        {"base_url": "http://h", "model_map": {}},
        {"base_url": "http://h", "model_map": {"a": ""}},
    ],
)
def test_bad_configuration(kwargs: dict[str, Any]) -> None:
    """A URL without a scheme or an empty model map is a ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        OpenAIBackend(**kwargs)
