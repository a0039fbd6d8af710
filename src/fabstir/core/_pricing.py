"""Cost estimation (pure)."""

from __future__ import annotations

import math

from .._models import CostEstimate

__all__ = ["estimate_cost", "estimate_tokens", "max_cost"]

#: The TypeScript SDK's rule of thumb: a prompt token is about four characters.
_CHARS_PER_TOKEN = 4
#: Answers rarely use the whole budget; the TypeScript SDK estimates 80 % of max_tokens.
_EXPECTED_FILL = 0.8


def estimate_tokens(prompt: str, max_tokens: int) -> int:
    """ceil(len(prompt)/4) + floor(0.8 × max_tokens), as the TypeScript SDK estimates."""
    return math.ceil(len(prompt) / _CHARS_PER_TOKEN) + math.floor(_EXPECTED_FILL * max_tokens)


def estimate_cost(prompt: str, max_tokens: int, price_per_token: int, payment_token: str) -> CostEstimate:
    tokens = estimate_tokens(prompt, max_tokens)
    return CostEstimate(
        estimated_tokens=tokens,
        price_per_token=price_per_token,
        estimated_cost=tokens * price_per_token,
        includes_buffer=True,
        payment_token=payment_token,
    )


def max_cost(max_tokens: int, price_per_token: int) -> int:
    """The deposit that pays for the whole token budget: hosts are paid per generated token only."""
    return max_tokens * price_per_token
