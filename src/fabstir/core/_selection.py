"""Host selection strategies (pure functions over discovered nodes)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from enum import StrEnum

from .._models import NATIVE_TOKEN, NodeInfo

__all__ = ["SelectionStrategy", "rank_nodes"]


class SelectionStrategy(StrEnum):
    RELIABILITY = "reliability"  # reliability first, then price and latency as tie-breakers
    PRICE = "price"
    LATENCY = "latency"
    RANDOM = "random"


def _price(node: NodeInfo, model: str, token: str) -> int:
    price = node.capabilities.price_for(model, token)
    return price if price is not None else 2**256


def _latency(node: NodeInfo) -> float:
    return node.latency_ms if node.latency_ms is not None else float("inf")


def rank_nodes(
    nodes: Sequence[NodeInfo],
    *,
    strategy: SelectionStrategy | str,
    model: str,
    payment_token: str = NATIVE_TOKEN,
    preferred: Sequence[str] = (),
    rng: random.Random | None = None,
) -> list[NodeInfo]:
    """Best first. Preferred peers come first (in the order given), the rest by the strategy.

    ``reliability`` scores each node ``reliability − 0.25·price/max_price − 0.25·latency/max_latency``:
    a clearly more reliable host wins, but among equally reliable hosts the cheaper and nearer one does.
    """
    strategy = SelectionStrategy(strategy)
    preferred_rank = {peer: i for i, peer in enumerate(preferred)}
    first = sorted((n for n in nodes if n.peer_id in preferred_rank), key=lambda n: preferred_rank[n.peer_id])
    rest = [n for n in nodes if n.peer_id not in preferred_rank]
    if strategy is SelectionStrategy.PRICE:
        rest.sort(key=lambda n: (_price(n, model, payment_token), _latency(n), n.peer_id))
    elif strategy is SelectionStrategy.LATENCY:
        rest.sort(key=lambda n: (_latency(n), _price(n, model, payment_token), n.peer_id))
    elif strategy is SelectionStrategy.RANDOM:
        (rng or random.Random()).shuffle(rest)
    else:
        # Normalise over the nodes that quote a price (and a latency): one node without a price must not
        # blow up the scale and make every other price difference vanish. Unknowns score as twice the worst.
        priced = [p for n in rest if (p := n.capabilities.price_for(model, payment_token)) is not None]
        max_price = max(priced, default=1) or 1
        finite = [_latency(n) for n in rest if _latency(n) != float("inf")]
        max_latency = max(finite, default=1.0) or 1.0

        def score(node: NodeInfo) -> float:
            price = min(_price(node, model, payment_token), max_price * 2)
            latency = min(_latency(node), max_latency * 2)
            return node.reliability - 0.25 * price / max_price - 0.25 * latency / max_latency

        rest.sort(key=lambda n: (-score(n), n.peer_id))
    return first + rest
