"""Host selection: each strategy's order, preferred peers, missing prices and reproducible randomness."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabstir._models import NATIVE_TOKEN, NodeCapabilities, NodeInfo
from fabstir.core._selection import SelectionStrategy, rank_nodes

MODEL = "m1"


def node(
    peer_id: str,
    *,
    price: int | None = 10,
    latency_ms: float | None = 50.0,
    reliability: float = 0.9,
    token: str = NATIVE_TOKEN,
) -> NodeInfo:
    prices = {MODEL: {token: price}} if price is not None else {"other-model": {token: 1}}
    capabilities = NodeCapabilities(
        models=(MODEL,) if price is not None else ("other-model",),
        prices=prices,
        max_tokens=2048,
        max_concurrent_jobs=4,
        current_load=0,
        payment_address="0x" + "00" * 20,
        chain_id=31337,
        protocol_versions=("1.0.0",),
    )
    return NodeInfo(
        peer_id=peer_id,
        addresses=(f"/ip4/127.0.0.1/tcp/4001/p2p/{peer_id}",),
        capabilities=capabilities,
        latency_ms=latency_ms,
        reliability=reliability,
    )


def ids(nodes: list[NodeInfo]) -> list[str]:
    return [n.peer_id for n in nodes]


def test_price_orders_cheapest_first_then_latency() -> None:
    """``price`` sorts by price per token, ties broken by latency (then peer id)."""
    nodes = [
        node("a", price=30, latency_ms=10),
        node("b", price=10, latency_ms=90),
        node("c", price=10, latency_ms=20),
        node("d", price=20, latency_ms=5),
    ]
    assert ids(rank_nodes(nodes, strategy="price", model=MODEL)) == ["c", "b", "d", "a"]


def test_price_uses_the_requested_payment_token() -> None:
    """Prices are looked up for the given payment token; a node without that token's price goes last."""
    nodes = [
        node("eth", price=1),
        node("usdc-cheap", price=2, token="USDC"),
        node("usdc", price=5, token="USDC"),
    ]
    ranked = rank_nodes(nodes, strategy=SelectionStrategy.PRICE, model=MODEL, payment_token="USDC")
    assert ids(ranked) == ["usdc-cheap", "usdc", "eth"]


def test_price_puts_nodes_without_a_price_for_the_model_last() -> None:
    """A node that quotes no price for the model ranks after every node that does, however cheap its
    other prices or short its latency."""
    nodes = [node("unpriced", price=None, latency_ms=1), node("pricey", price=10**20), node("cheap", price=1)]
    assert ids(rank_nodes(nodes, strategy="price", model=MODEL)) == ["cheap", "pricey", "unpriced"]


def test_latency_orders_nearest_first_and_unknown_latency_last() -> None:
    """``latency`` sorts by measured latency; unmeasured nodes come last; equal latency → cheaper first."""
    nodes = [
        node("far", latency_ms=200),
        node("unknown", latency_ms=None),
        node("near-pricey", latency_ms=10, price=50),
        node("near-cheap", latency_ms=10, price=5),
    ]
    assert ids(rank_nodes(nodes, strategy="latency", model=MODEL)) == [
        "near-cheap",
        "near-pricey",
        "far",
        "unknown",
    ]


def test_preferred_peers_come_first_in_the_given_order() -> None:
    """Preferred peers lead in the order the caller gave, whatever the strategy says; the rest follow
    ranked; preferred ids that were not discovered are ignored."""
    nodes = [node("a", price=1), node("b", price=2), node("c", price=3), node("d", price=4)]
    ranked = rank_nodes(nodes, strategy="price", model=MODEL, preferred=("d", "missing", "b"))
    assert ids(ranked) == ["d", "b", "a", "c"]


@pytest.mark.parametrize("strategy", list(SelectionStrategy))
def test_every_strategy_returns_a_permutation(strategy: SelectionStrategy) -> None:
    """Whatever the strategy, ranking neither drops nor duplicates nodes and leaves the input unchanged."""
    nodes = [node(f"n{i}", price=10 + i % 3, latency_ms=float(100 - i)) for i in range(8)]
    original = list(nodes)
    ranked = rank_nodes(nodes, strategy=strategy, model=MODEL, rng=random.Random(1))
    assert sorted(ids(ranked)) == sorted(ids(nodes))
    assert nodes == original


def test_empty_input_gives_an_empty_ranking() -> None:
    """No nodes, no ranking (and no division by zero in the reliability score)."""
    for strategy in SelectionStrategy:
        assert rank_nodes([], strategy=strategy, model=MODEL) == []


@given(seed=st.integers(min_value=0, max_value=2**32), count=st.integers(min_value=0, max_value=12))
def test_random_is_a_reproducible_permutation(seed: int, count: int) -> None:
    """``random`` shuffles with the given generator: the same seed gives the same order, and the result is
    always a permutation of the input."""
    nodes = [node(f"n{i}") for i in range(count)]
    first = rank_nodes(nodes, strategy="random", model=MODEL, rng=random.Random(seed))
    second = rank_nodes(nodes, strategy="random", model=MODEL, rng=random.Random(seed))
    assert ids(first) == ids(second)
    assert sorted(ids(first)) == sorted(ids(nodes))


def test_random_keeps_preferred_peers_first() -> None:
    """Randomness only orders the non-preferred nodes."""
    nodes = [node(f"n{i}") for i in range(6)]
    for seed in range(20):
        ranked = rank_nodes(nodes, strategy="random", model=MODEL, preferred=("n4",), rng=random.Random(seed))
        assert ranked[0].peer_id == "n4"


def test_random_actually_shuffles() -> None:
    """Different seeds produce different orders (the strategy is not a disguised identity)."""
    nodes = [node(f"n{i}") for i in range(10)]
    orders = {
        tuple(ids(rank_nodes(nodes, strategy="random", model=MODEL, rng=random.Random(s)))) for s in range(5)
    }
    assert len(orders) > 1


def test_reliability_prefers_a_clearly_more_reliable_host() -> None:
    """Under ``reliability`` a much more reliable host wins even if it is the dearest and farthest."""
    nodes = [
        node("flaky-cheap-near", reliability=0.4, price=1, latency_ms=5),
        node("solid-dear-far", reliability=0.99, price=10, latency_ms=100),
    ]
    assert ids(rank_nodes(nodes, strategy="reliability", model=MODEL))[0] == "solid-dear-far"


def test_reliability_ties_go_to_the_cheaper_host() -> None:
    """Among equally reliable hosts at the same latency, the cheaper one ranks first."""
    nodes = [node("dear", price=20), node("cheap", price=5), node("mid", price=10)]
    assert ids(rank_nodes(nodes, strategy="reliability", model=MODEL)) == ["cheap", "mid", "dear"]


def test_reliability_ties_go_to_the_nearer_host() -> None:
    """Among equally reliable hosts at the same price, the nearer one ranks first; unmeasured is last."""
    nodes = [node("unknown", latency_ms=None), node("far", latency_ms=300), node("near", latency_ms=20)]
    assert ids(rank_nodes(nodes, strategy="reliability", model=MODEL)) == ["near", "far", "unknown"]


def test_reliability_price_still_counts_when_a_node_has_no_price() -> None:
    """One node without a price for the model does not erase the price difference between the others
    (and itself ranks below equally reliable priced nodes)."""
    # Names sort against the expected order, so a tie broken by peer id would fail.
    nodes = [node("a-unpriced", price=None), node("b-dear", price=20), node("c-cheap", price=5)]
    assert ids(rank_nodes(nodes, strategy="reliability", model=MODEL)) == ["c-cheap", "b-dear", "a-unpriced"]


def test_reliability_is_the_default_meaning_of_the_enum_value() -> None:
    """The strategy names are plain strings: "reliability" and SelectionStrategy.RELIABILITY rank alike."""
    nodes = [node("a", reliability=0.5), node("b", reliability=0.95), node("c", reliability=0.7)]
    by_str = rank_nodes(nodes, strategy="reliability", model=MODEL)
    by_enum = rank_nodes(nodes, strategy=SelectionStrategy.RELIABILITY, model=MODEL)
    assert ids(by_str) == ids(by_enum) == ["b", "c", "a"]


def test_unknown_strategy_is_a_value_error() -> None:
    """A strategy name that does not exist raises ValueError instead of silently picking one."""
    with pytest.raises(ValueError, match="fastest"):
        rank_nodes([node("a")], strategy="fastest", model=MODEL)
