"""A backend that streams completions from any OpenAI-compatible ``/v1/chat/completions`` endpoint.

llama.cpp's server, vLLM, SGLang and Ollama speak this API. What this client relies on, and why:

* ``stream: true`` with ``stream_options: {"include_usage": true}``: tokens arrive as Server-Sent Events,
  one ``data:`` line of JSON per chunk, ending with ``data: [DONE]``. ``choices`` may be empty (the final
  usage chunk), ``delta.content`` may be null or empty (the role chunk), and ``finish_reason`` comes with
  the last choice chunk. Each non-empty content piece is one token (llama.cpp and vLLM send one per
  sampled token; llama.cpp merges a token into the next one only while it holds back an incomplete UTF-8
  sequence or a possible stop word, so pieces never outnumber tokens).
* The server's ``usage`` chunk is the authoritative token count. A server that sends none (the server of
  ``llama-cpp-python``) gets an estimate: one completion token per content piece, and the prompt's
  characters / 4 for the prompt.
* A *continuation* (text another host already produced for this completion) is sent as a final
  ``assistant`` message, which the server must continue rather than answer: llama.cpp does so for any final
  assistant message (its ``prefill_assistant`` default), vLLM and SGLang when asked with
  ``continue_final_message: true`` and ``add_generation_prompt: false`` — so both flags are sent, and
  llama.cpp accepts them (verified against the embedded server: the continued text is the rest of the
  uninterrupted completion). Ollama is documented to leave a final assistant message open too (not
  verified here: Ollama cannot be installed on this machine).
* Closing the response stops generation: llama.cpp (verified) and vLLM abort a request whose client
  disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeGuard

import httpx

from .._exceptions import BackendError, ConfigurationError
from ._base import GenerationRequest, Usage
from ._sse import MAX_LINE_LENGTH, ServerSentEvent, SSEDecoder, SSEError

__all__ = ["DEFAULT_TIMEOUT", "OpenAIBackend", "OpenAIGeneration"]

_log = logging.getLogger("fabstir.backend")

#: Connecting to a local or LAN server takes milliseconds: 5 s means it is not there. A read waits for
#: the next chunk, and the first one comes after the whole prompt is processed: 60 s covers a long prompt
#: on a busy GPU while still noticing a hung server.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
#: An error body is a sentence of JSON; read at most this much of it.
_MAX_ERROR_BODY = 64 * 1024
#: Chunks buffered between the HTTP reader and the consumer. When the consumer (the host, writing to a
#: slow client) stops taking tokens, the reader stops reading and TCP pushes back on the server.
_QUEUE_SIZE = 64
_DONE = "[DONE]"


def _estimate_prompt_tokens(request: GenerationRequest) -> int:
    """About four characters per token: the rule of thumb for English with BPE tokenizers."""
    characters = len(request.prompt) + len(request.system or "") + len(request.continuation)
    return max(1, math.ceil(characters / 4))


def _messages(request: GenerationRequest) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": request.prompt})
    if request.continuation:
        messages.append({"role": "assistant", "content": request.continuation})
    return messages


def _request_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": _messages(request),
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if request.continuation:
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return body


def _error_detail(body: bytes) -> str:
    """The human part of an error body: OpenAI / llama.cpp ``{"error": {"message"}}``, vLLM's older
    ``{"message"}``, FastAPI's ``{"detail"}``, or the text itself."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for value in (error, parsed.get("message"), parsed.get("detail")):
            if isinstance(value, str):
                return value
    return text[:500]


def _is_retryable_status(status: int) -> bool:
    # A server error, an overload or a timeout may pass, here or on another host; a 4xx will not.
    return status >= 500 or status in {408, 409, 429}


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class _End:
    """The reader finished: how the completion ended (or why it failed)."""

    finish_reason: str | None = None
    usage: Usage | None = None
    error: BackendError | None = None


class _ChunkStream:
    """Sans-IO: the data of completion chunks in, content pieces out; tracks finish reason, usage, [DONE]."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.raw_finish_reason: str | None = None
        self.usage: Usage | None = None
        self.done = False

    def receive(self, event: ServerSentEvent) -> list[str]:
        if self.done:
            return []
        data = event.data.strip()
        if data == _DONE:
            self.done = True
            return []
        if event.event == "error":
            raise BackendError(f"the backend failed mid-stream: {_error_detail(data.encode())}")
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise BackendError(f"the backend sent a chunk that is not JSON: {data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise BackendError(f"the backend sent a chunk that is not a JSON object: {data[:200]!r}")
        if chunk.get("error") is not None:
            raise BackendError(f"the backend failed mid-stream: {_error_detail(data.encode())}")
        self._usage(chunk.get("usage"))
        choices = chunk.get("choices")
        if choices is None:
            return []
        if not isinstance(choices, list):
            raise BackendError("the backend sent a chunk whose choices are not a list")
        pieces: list[str] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise BackendError("the backend sent a choice that is not a JSON object")
            if choice.get("index", 0) != 0:
                continue  # n=1 was asked for; a server adding choices is not listened to
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                pieces.append(content)
            elif content is not None and not isinstance(content, str):
                raise BackendError("the backend sent a delta whose content is not a string")
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.raw_finish_reason = reason
                # The contract knows two reasons: ran out of max_tokens, or ended by itself (a stop token,
                # a stop word, a tool call or a content filter all end the text).
                self.finish_reason = "length" if reason == "length" else "stop"
        return pieces

    def _usage(self, usage: object) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            raise BackendError("the backend sent a usage that is not a JSON object")
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not (_is_count(prompt) and _is_count(completion)):
            raise BackendError(f"the backend sent a malformed usage: {usage!r}")
        self.usage = Usage(prompt_tokens=prompt, completion_tokens=completion)


class OpenAIGeneration:
    """One completion streaming from an OpenAI-compatible server (implements
    :class:`~fabstir.backend.Generation`).

    The HTTP request starts on the first ``__anext__``. Iterating yields content pieces, one token each.
    Once the last piece was yielded, ``finish_reason`` is ``"stop"`` or ``"length"`` and ``usage`` holds the
    server's counts (or an estimate, if it sent none). A failure raises :class:`fabstir.BackendError`;
    after it, or after an early ``aclose``, ``finish_reason`` stays ``None`` and ``usage`` counts the
    pieces yielded so far (with an estimated prompt). ``aclose`` closes the HTTP response, which makes the
    server stop generating; it is idempotent, and a pending ``__anext__`` then ends the iteration.
    """

    def __init__(
        self,
        owner: OpenAIBackend,
        url: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str],
        timeout: httpx.Timeout | None,
        prompt_estimate: int,
    ) -> None:
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self._owner = owner
        self._url = url
        self._body = body
        self._headers = {"Accept": "text/event-stream", **headers}
        self._timeout = timeout
        self._prompt_estimate = prompt_estimate
        self._queue: asyncio.Queue[str | _End] = asyncio.Queue(_QUEUE_SIZE)
        self._reader: asyncio.Task[None] | None = None
        self._yielded = 0
        self._over = False  # the consumer saw the end (or closed): nothing more is yielded
        self._closed = False
        if body.get("max_tokens") == 0:
            # Servers disagree on max_tokens=0 (llama.cpp even generates one token): answer it here.
            self._queue.put_nowait(_End(finish_reason="length", usage=Usage(prompt_estimate, 0)))

    def __aiter__(self) -> OpenAIGeneration:
        return self

    async def __anext__(self) -> str:
        if self._over:
            raise StopAsyncIteration
        if self._reader is None and self._queue.empty():
            self._start()
        item = await self._queue.get()
        if self._over:  # closed while waiting
            raise StopAsyncIteration
        if isinstance(item, str):
            self._yielded += 1
            return item
        self._over = True
        if item.error is not None:
            self.usage = Usage(self._prompt_estimate, self._yielded)
            raise item.error
        self.finish_reason = item.finish_reason
        self.usage = item.usage or Usage(self._prompt_estimate, self._yielded)
        raise StopAsyncIteration

    def _start(self) -> None:
        owner = self._owner
        owner._check_open()
        self._reader = reader = asyncio.create_task(self._read(), name="fabstir-openai-stream")
        # The backend holds running generations: one dropped without aclose still stops at backend.aclose().
        owner._running.add(self)
        reader.add_done_callback(lambda _: owner._running.discard(self))

    async def aclose(self) -> None:
        """Stops the generation and closes the HTTP response; idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._over:
            self._over = True
            self.usage = Usage(self._prompt_estimate, self._yielded)
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            # Leaving the reader's ``async with`` closes the response, hence the connection.
            await asyncio.wait({reader})
        if self._queue.empty():
            self._queue.put_nowait(_End())  # wakes a consumer blocked in __anext__

    async def _read(self) -> None:
        try:
            end = await self._stream()
        except BackendError as exc:
            end = _End(error=exc)
        except httpx.HTTPError as exc:
            end = _End(error=_http_error(exc, self._url))
        except Exception as exc:  # never leave the consumer waiting on a reader that died silently
            _log.debug("the stream from %s failed unexpectedly", self._url, exc_info=True)
            error = BackendError(f"reading the backend's stream failed: {exc!r}", context={"url": self._url})
            error.__cause__ = exc
            end = _End(error=error)
        await self._queue.put(end)

    async def _stream(self) -> _End:
        timeout: Any = self._timeout if self._timeout is not None else httpx.USE_CLIENT_DEFAULT
        async with self._owner._client.stream(
            "POST", self._url, json=self._body, headers=self._headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                body = await _read_bounded(response, _MAX_ERROR_BODY)
                raise BackendError(
                    f"the backend answered HTTP {response.status_code}: {_error_detail(body)}",
                    retryable=_is_retryable_status(response.status_code),
                    context={"url": self._url, "status": response.status_code},
                )
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                body = await _read_bounded(response, _MAX_ERROR_BODY)
                raise BackendError(
                    f"the backend answered with JSON instead of an event stream: {_error_detail(body)}",
                    context={"url": self._url},
                )
            decoder = SSEDecoder(max_line_length=MAX_LINE_LENGTH)
            chunks = _ChunkStream()
            async for data in response.aiter_bytes():
                try:
                    events = decoder.feed(data)
                except SSEError as exc:
                    raise BackendError(f"the backend's event stream broke a limit: {exc}") from exc
                for event in events:
                    for piece in chunks.receive(event):
                        await self._queue.put(piece)
                    if chunks.done:
                        break
                if chunks.done:
                    break
        if chunks.finish_reason is None:
            where = "after [DONE]" if chunks.done else "before [DONE]"
            raise BackendError(
                f"the backend's stream ended {where} without a finish_reason: the completion is cut",
                context={"url": self._url},
            )
        if chunks.raw_finish_reason not in {"stop", "length"}:
            _log.debug("backend finish_reason %r counted as 'stop'", chunks.raw_finish_reason)
        # A stream cut after the finish_reason lost at most the usage chunk: the text is whole.
        return _End(finish_reason=chunks.finish_reason, usage=chunks.usage)


def _http_error(exc: httpx.HTTPError, url: str) -> BackendError:
    if isinstance(exc, httpx.ConnectError):
        message = f"cannot connect to the backend at {url}: {exc}"
    elif isinstance(exc, httpx.TimeoutException):
        message = f"the backend at {url} did not answer in time ({type(exc).__name__})"
    else:
        message = f"the connection to the backend at {url} failed: {exc!r}"
    error = BackendError(message, context={"url": url})
    error.__cause__ = exc
    return error


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for data in response.aiter_bytes():
        body += data
        if len(body) >= limit:
            break
    return bytes(body[:limit])


class OpenAIBackend:
    """A :class:`~fabstir.backend.Backend` over an OpenAI-compatible server at ``base_url``.

    ``base_url`` is the server's root (``http://127.0.0.1:8080``) or its ``/v1`` URL; requests go to
    ``<root>/v1/chat/completions`` and ``<root>/v1/models``. ``api_key`` is sent as a bearer token.
    ``model_map`` maps marketplace model ids to the server's model names; with a map, only its keys are
    served and ``list_models`` returns them, without one, model ids pass through unchanged and
    ``list_models`` asks the server. ``timeout`` bounds connecting and each read (the wait for the next
    chunk, not the whole completion); ``None`` means :data:`DEFAULT_TIMEOUT`, or the timeouts of ``client``
    when one is given. A given ``client`` is used as is and never closed; otherwise the backend owns one.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model_map: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        if not root.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be an http(s) URL, got {base_url!r}")
        root = root.removesuffix("/v1")
        self._root = root
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if model_map is not None:
            pairs = model_map.items()
            if not pairs or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in pairs):
                raise ConfigurationError("model_map must map non-empty model ids to non-empty model names")
            self._model_map: dict[str, str] | None = dict(model_map)
        else:
            self._model_map = None
        if isinstance(timeout, int | float):
            timeout = httpx.Timeout(float(timeout))
        self._owns_client = client is None
        self._timeout = timeout if timeout is not None or client is not None else DEFAULT_TIMEOUT
        self._client = client if client is not None else httpx.AsyncClient(timeout=self._timeout)
        self._running: set[OpenAIGeneration] = set()
        self._closed = False

    @property
    def base_url(self) -> str:
        """The server's root URL (without ``/v1``)."""
        return self._root

    async def __aenter__(self) -> OpenAIBackend:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def list_models(self) -> tuple[str, ...]:
        """The marketplace model ids served: the keys of ``model_map``, or the ids the server lists."""
        if self._model_map is not None:
            return tuple(self._model_map)
        return await self.server_models()

    async def check(self) -> None:
        """Asks the server for its models: raises :class:`BackendError` if it cannot be reached or refuses
        the API key, so a host finds out before it announces itself. A mapped model name the server does
        not list is only logged (servers differ in what they list: aliases, paths, tags)."""
        listed = await self.server_models()
        for model, name in (self._model_map or {}).items():
            if name not in listed:
                _log.warning(
                    "the backend does not list %r (for %s); it lists: %s", name, model, ", ".join(listed)
                )

    async def server_models(self) -> tuple[str, ...]:
        """The model names the server lists at ``/v1/models``."""
        self._check_open()
        url = f"{self._root}/v1/models"
        timeout: Any = self._timeout if self._timeout is not None else httpx.USE_CLIENT_DEFAULT
        try:
            response = await self._client.get(url, headers=self._headers, timeout=timeout)
        except httpx.ConnectError as exc:
            raise BackendError(
                f"cannot connect to the backend at {url}: {exc}", context={"url": url}
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"listing the backend's models failed: {exc!r}", context={"url": url}) from exc
        if response.status_code != 200:
            raise BackendError(
                f"the backend answered HTTP {response.status_code}: {_error_detail(response.content)}",
                retryable=_is_retryable_status(response.status_code),
                context={"url": url, "status": response.status_code},
            )
        try:
            data = response.json()["data"]
            ids = tuple(entry["id"] for entry in data)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"the backend's model list is malformed: {response.text[:200]!r}") from exc
        if not all(isinstance(i, str) and i for i in ids):
            raise BackendError("the backend's model list holds ids that are not strings")
        return ids

    def generate(self, request: GenerationRequest) -> OpenAIGeneration:
        """Prepares a generation (the request is sent on first iteration). Raises :class:`BackendError`
        for a model not in ``model_map``, a negative ``max_tokens`` or a closed backend."""
        self._check_open()
        if self._model_map is not None:
            model = self._model_map.get(request.model)
            if model is None:
                raise BackendError(f"model {request.model!r} is not served by this backend")
        else:
            model = request.model
        if request.max_tokens < 0:
            raise BackendError("max_tokens must not be negative")
        return OpenAIGeneration(
            self,
            f"{self._root}/v1/chat/completions",
            _request_body(request, model),
            headers=self._headers,
            timeout=self._timeout,
            prompt_estimate=_estimate_prompt_tokens(request),
        )

    async def aclose(self) -> None:
        """Stops every running generation and closes the HTTP client if this backend owns it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for generation in list(self._running):
            with contextlib.suppress(Exception):
                await generation.aclose()
        if self._owns_client:
            await self._client.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("the backend is closed", retryable=False)
