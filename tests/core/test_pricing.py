"""Cost estimation: the TypeScript SDK's token estimate, the estimated cost and the deposit for a budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabstir._models import NATIVE_TOKEN, CostEstimate
from fabstir.core._pricing import estimate_cost, estimate_tokens, max_cost


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "expected"),
    [
        ("", 0, 0),
        ("", 1, 0),  # floor(0.8) = 0
        ("a", 0, 1),  # ceil(1/4) = 1
        ("abcd", 0, 1),
        ("abcde", 0, 2),
        ("Hello, world!", 100, 4 + 80),  # 13 chars → 4 tokens
        ("x" * 400, 128, 100 + 102),  # floor(102.4) = 102
        ("x" * 7, 5, 2 + 4),
        ("x" * 8, 9, 2 + 7),  # floor(7.2) = 7
    ],
)
def test_estimate_tokens_examples(prompt: str, max_tokens: int, expected: int) -> None:
    """The estimate is ceil(len(prompt)/4) + floor(0.8 × max_tokens), as in the TypeScript SDK."""
    assert estimate_tokens(prompt, max_tokens) == expected


@given(prompt=st.text(max_size=2_000), max_tokens=st.integers(min_value=0, max_value=10**9))
def test_estimate_tokens_matches_integer_formula(prompt: str, max_tokens: int) -> None:
    """For any prompt and budget the estimate equals the exact integer form of the TypeScript formula."""
    expected = -(-len(prompt) // 4) + (4 * max_tokens) // 5
    assert estimate_tokens(prompt, max_tokens) == expected


def test_estimate_tokens_counts_characters_not_bytes() -> None:
    """The prompt is measured in characters (like JavaScript's length for these), not encoded bytes."""
    assert estimate_tokens("ééééé", 0) == 2


def test_estimate_cost_multiplies_tokens_by_price() -> None:
    """estimate_cost returns the estimated tokens, the price, their product, a buffer flag and the token."""
    estimate = estimate_cost("x" * 10, 50, 7, "USDC")
    assert estimate == CostEstimate(
        estimated_tokens=3 + 40,
        price_per_token=7,
        estimated_cost=43 * 7,
        includes_buffer=True,
        payment_token="USDC",
    )


@given(
    prompt=st.text(max_size=500),
    max_tokens=st.integers(min_value=0, max_value=100_000),
    price=st.integers(min_value=0, max_value=10**18),
)
def test_estimate_cost_property(prompt: str, max_tokens: int, price: int) -> None:
    """The estimated cost is always estimate_tokens × price, and the estimate always includes a buffer."""
    estimate = estimate_cost(prompt, max_tokens, price, NATIVE_TOKEN)
    assert estimate.estimated_tokens == estimate_tokens(prompt, max_tokens)
    assert estimate.estimated_cost == estimate.estimated_tokens * price
    assert estimate.includes_buffer is True
    assert estimate.payment_token == NATIVE_TOKEN


def test_estimate_cost_is_exact_for_wei_sized_prices() -> None:
    """Amounts are integers: a price in wei does not lose precision through floating point."""
    price = 10**18 + 1
    assert estimate_cost("abcd", 10, price, NATIVE_TOKEN).estimated_cost == 9 * price


def test_max_cost_pays_for_the_whole_budget() -> None:
    """max_cost is max_tokens × price: the deposit that covers every token the host may generate."""
    assert max_cost(128, 5) == 640
    assert max_cost(0, 5) == 0
    assert max_cost(3, 10**18) == 3 * 10**18
