"""The simulated backend: deterministic, continuable completions with optional pacing."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir import BackendError
from fabstir.backend import Backend, Generation, GenerationRequest, SimulatedBackend, Usage

MODEL = "sim-model"


async def collect(generation: Generation) -> list[str]:
    return [token async for token in generation]


def request(
    prompt: str = "Tell me about rivers", max_tokens: int = 1000, **kwargs: object
) -> GenerationRequest:
    return GenerationRequest(model=MODEL, prompt=prompt, max_tokens=max_tokens, **kwargs)  # type: ignore[arg-type]


async def test_implements_the_backend_protocol() -> None:
    """SimulatedBackend and its generations satisfy the Backend / Generation protocols."""
    backend = SimulatedBackend([MODEL])
    assert isinstance(backend, Backend)
    assert isinstance(backend.generate(request()), Generation)


async def test_same_request_same_text() -> None:
    """Two backends with the same seed write the same completion for the same request."""
    first = await collect(SimulatedBackend([MODEL]).generate(request()))
    second = await collect(SimulatedBackend([MODEL]).generate(request()))
    assert first == second
    assert len(first) > 1


async def test_text_depends_on_prompt_seed_and_model() -> None:
    """Changing the prompt, the request seed, the backend seed or the model changes the text."""
    backend = SimulatedBackend([MODEL, "other"])
    base = await collect(backend.generate(request()))
    variants = [
        await collect(backend.generate(request(prompt="Something else"))),
        await collect(backend.generate(request(seed=7))),
        await collect(SimulatedBackend([MODEL], seed=1).generate(request())),
        await collect(
            backend.generate(GenerationRequest(model="other", prompt="Tell me about rivers", max_tokens=1000))
        ),
    ]
    assert all(v != base for v in variants)


async def test_tokens_look_like_words() -> None:
    """Tokens are words with a leading space or punctuation; the first has no leading space."""
    tokens = await collect(SimulatedBackend([MODEL]).generate(request()))
    assert not tokens[0].startswith(" ")
    assert tokens[0][0].isupper()
    for token in tokens[1:]:
        assert token in {",", ".", "!", "?"} or (token.startswith(" ") and token[1:].isalpha())
    assert tokens[-1] in {".", "!", "?"}


async def test_natural_stop_sets_usage_and_reason() -> None:
    """Without a binding max_tokens the completion stops by itself: finish_reason "stop" and usage set."""
    generation = SimulatedBackend([MODEL]).generate(request(prompt="x" * 40))
    assert generation.usage is None
    tokens = await collect(generation)
    assert generation.finish_reason == "stop"
    assert generation.usage == Usage(prompt_tokens=40 // 4 + 1, completion_tokens=len(tokens))


async def test_max_tokens_is_respected() -> None:
    """max_tokens cuts the completion short with finish_reason "length"; the tokens are a prefix."""
    backend = SimulatedBackend([MODEL])
    full = await collect(backend.generate(request()))
    generation = backend.generate(request(max_tokens=5))
    assert await collect(generation) == full[:5]
    assert generation.finish_reason == "length"
    assert generation.usage is not None
    assert generation.usage.completion_tokens == 5


async def test_zero_max_tokens_yields_nothing() -> None:
    """max_tokens=0 produces no token and finishes with "length"."""
    generation = SimulatedBackend([MODEL]).generate(request(max_tokens=0))
    assert await collect(generation) == []
    assert generation.finish_reason == "length"


@settings(max_examples=25, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=400),
    prompt=st.text(min_size=1, max_size=30),
    budget=st.integers(0, 500),
)
def test_continuation_yields_the_tail(cut: int, prompt: str, budget: int) -> None:
    """After a continuation of the first k tokens, a generation yields exactly the uninterrupted completion's
    tokens from k on, with the remaining budget and the same finish reason (what failover relies on)."""
    backend = SimulatedBackend([MODEL])
    full, reason = backend.completion(request(prompt=prompt, max_tokens=budget))
    k = min(cut, len(full))
    continued, continued_reason = backend.completion(
        request(prompt=prompt, max_tokens=budget - k, continuation="".join(full[:k]))
    )
    assert continued == full[k:]
    assert continued_reason == reason


async def test_continuation_generation_streams_the_tail() -> None:
    """The streaming path continues the same way as completion() computes it."""
    backend = SimulatedBackend([MODEL])
    full = await collect(backend.generate(request()))
    tail = await collect(backend.generate(request(continuation="".join(full[:7]))))
    assert tail == full[7:]


async def test_foreign_continuation_is_continued_deterministically() -> None:
    """Text this model would not have written is continued with fresh, deterministic words after it."""
    backend = SimulatedBackend([MODEL])
    first = await collect(backend.generate(request(continuation="Once upon a time")))
    second = await collect(backend.generate(request(continuation="Once upon a time")))
    assert first == second
    assert first
    assert first[0].startswith(" ")


async def test_unknown_model_is_a_backend_error() -> None:
    """Asking for a model the backend does not serve raises BackendError."""
    with pytest.raises(BackendError):
        SimulatedBackend([MODEL]).generate(GenerationRequest(model="nope", prompt="hi", max_tokens=3))


async def test_list_models() -> None:
    """list_models returns the models given to the constructor, in order."""
    assert await SimulatedBackend(["a", "b"]).list_models() == ("a", "b")


def test_constructor_validates() -> None:
    """No models, or negative delays, are refused."""
    with pytest.raises(ValueError, match="models"):
        SimulatedBackend([])
    with pytest.raises(ValueError, match="delays"):
        SimulatedBackend([MODEL], token_delay=-1)


async def test_aclose_generation_stops_early() -> None:
    """aclose ends the iteration; usage counts the tokens yielded and finish_reason stays None."""
    generation = SimulatedBackend([MODEL]).generate(request())
    iterator = aiter(generation)
    await anext(iterator)
    await anext(iterator)
    await generation.aclose()
    await generation.aclose()  # idempotent
    assert await collect(generation) == []
    assert generation.usage is not None
    assert generation.usage.completion_tokens == 2
    assert generation.finish_reason is None


async def test_aclose_interrupts_a_paced_generation() -> None:
    """With a long token delay, aclose from another task ends a pending __anext__ at once."""
    generation = SimulatedBackend([MODEL], first_token_delay=3600).generate(request())
    pending = asyncio.ensure_future(anext(aiter(generation)))
    await asyncio.sleep(0)  # let the generation start waiting
    await generation.aclose()
    async with asyncio.timeout(5):
        with pytest.raises(StopAsyncIteration):
            await pending


async def test_backend_aclose_stops_generations_and_refuses_new_ones() -> None:
    """Closing the backend closes its running generations and makes generate() fail."""
    backend = SimulatedBackend([MODEL])
    generation = backend.generate(request())
    await backend.aclose()
    assert await collect(generation) == []
    with pytest.raises(BackendError):
        backend.generate(request())


def test_no_delay_means_no_suspension() -> None:
    """With both delays at 0 a whole generation runs without ever suspending (no sleeps at all)."""
    coroutine = collect(SimulatedBackend([MODEL]).generate(request()))
    with pytest.raises(StopIteration) as finished:
        coroutine.send(None)
    assert len(finished.value.value) > 1


async def test_token_delay_paces_each_token() -> None:
    """With a token delay, fetching the second token waits on the event loop (until aclose ends it)."""
    generation = SimulatedBackend([MODEL], token_delay=3600).generate(request())
    iterator = aiter(generation)
    assert await anext(iterator)  # the first token is not delayed (first_token_delay=0)
    second = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0)
    assert not second.done()
    await generation.aclose()
    with pytest.raises(StopAsyncIteration):
        await second
