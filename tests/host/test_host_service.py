"""HostService: the options ``fabstir host run`` builds (each mistake a ConfigurationError that says what
to fix), the identity file that keeps a host's peer id, and a simulated-backend host on real libp2p
(loopback) that starts, describes itself and closes."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from fabstir import ConfigurationError
from fabstir.host import HostService, HostServiceOptions
from fabstir.host._service import load_identity
from fabstir.transport import parse_peer_addr

PEER = "12D3KooWEXAMPLEpeerIdOfABootstrapNode"
KEY = "0x" + "c1" * 32


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"backend": "openai", "model_map": {"m": "m"}}, "backend URL"),
        ({"backend": "openai", "backend_url": "http://127.0.0.1:8080"}, "at least one model"),
        ({"backend": "gpu"}, "builtin, openai or simulated"),
        ({"bootstrap": ("/ip4/127.0.0.1/tcp/4001",)}, "Invalid bootstrap node format"),
        ({"bootstrap": (f"/p2p/{PEER}",)}, "Invalid bootstrap node format"),
        ({"bootstrap": ("/ip4/127.0.0.1/tcp/4001/p2p/",)}, "Invalid bootstrap node format"),
        ({"default_price": 0}, "positive integer"),
        ({"default_price": -5}, "positive integer"),
        ({"default_price": 1.5}, "positive integer"),
        ({"prices": {"simulated-model": 0}}, "price of simulated-model"),
        ({"token_delay": -0.1}, "token_delay"),
        ({"token_delay": float("nan")}, "token_delay"),
        ({"ping_interval": 0}, "ping_interval"),
        ({"dial_timeout": float("inf")}, "dial_timeout"),
        ({"threads": 0}, "threads"),
        ({"provider_refresh": 0}, "provider_refresh"),
        ({"record_ttl": float("nan")}, "record_ttl"),
        ({"record_refresh": 300, "record_ttl": 300}, "must be shorter than record_ttl"),
        ({"private_key": "0x1234"}, "0x followed by 64 hex digits"),
        ({"private_key": "c1" * 32}, "0x followed by 64 hex digits"),
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any], fragment: str) -> None:
    """Each invalid option raises ConfigurationError at construction, with a message naming the problem."""
    values: dict[str, Any] = {"backend": "simulated", "escrow": False}
    values.update(options)
    with pytest.raises(ConfigurationError) as caught:
        HostServiceOptions(**values)
    assert fragment in caught.value.message


def test_a_wrong_wallet_key_is_never_quoted() -> None:
    """Neither an invalid key (in the error) nor a valid one (in the options' repr) is ever shown."""
    wrong = "0x" + "zz" * 32
    with pytest.raises(ConfigurationError) as caught:
        HostServiceOptions(backend="simulated", escrow=False, private_key=wrong)
    assert wrong not in str(caught.value)
    options = HostServiceOptions(backend="simulated", escrow=False, private_key=KEY, api_key="sk-secret")
    assert KEY not in repr(options)
    assert "sk-secret" not in repr(options)


def test_a_price_for_a_model_not_served_is_refused() -> None:
    """A per-model price for a model the host does not serve is a mistake (a typo in --price), refused
    when the host is built — by host_config() and so by HostService."""
    options = HostServiceOptions(
        backend="openai",
        backend_url="http://127.0.0.1:1",
        model_map={"llama": "llama3.2:1b"},
        escrow=False,
        prices={"lama": 5},
    )
    with pytest.raises(ConfigurationError, match="not served: lama"):
        options.host_config()
    with pytest.raises(ConfigurationError, match="not served"):
        HostService(options)


def test_escrow_is_refused_until_the_contracts_land() -> None:
    """escrow=True (the default) is refused by HostService with a message pointing at --no-escrow."""
    with pytest.raises(ConfigurationError, match="--no-escrow"):
        HostService(HostServiceOptions(backend="simulated"))


def test_prices_and_models_come_from_the_options() -> None:
    """The host config serves the mapped models at their own price or the default one, in the payment
    token given; options are frozen copies (the caller's dicts can change afterwards)."""
    mapping = {"llama": "llama3.2:1b", "qwen": "qwen2.5:0.5b"}
    prices = {"qwen": 7}
    options = HostServiceOptions(
        backend="openai",
        backend_url="http://127.0.0.1:11434/v1",
        model_map=mapping,
        prices=prices,
        default_price=3,
        payment_token="USDC",
        escrow=False,
    )
    mapping["other"] = "x"
    prices["qwen"] = 1
    config = options.host_config()
    assert config.models == ("llama", "qwen")
    assert {m: dict(p) for m, p in config.prices.items()} == {"llama": {"USDC": 3}, "qwen": {"USDC": 7}}


def test_announcement_clocks_reach_the_host_config() -> None:
    """record_refresh, record_ttl and provider_refresh of the options are the host config's."""
    options = HostServiceOptions(
        backend="simulated", escrow=False, record_refresh=30, record_ttl=120, provider_refresh=900
    )
    config = options.host_config()
    assert (config.record_refresh, config.record_ttl, config.provider_refresh) == (30, 120, 900)


def test_parse_peer_addr() -> None:
    """A bootstrap multiaddr splits into the peer id and its transport address."""
    info = parse_peer_addr(f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}")
    assert info.peer_id == PEER
    assert tuple(info.addrs) == ("/ip4/10.0.0.1/tcp/4001",)


def test_identity_file_is_created_private_and_reused(tmp_path: Path) -> None:
    """load_identity creates the key file (and its directory) with mode 0600 and returns the same peer id
    every time it is loaded again; without a path every identity is fresh."""
    path = tmp_path / "keys" / "host.key"
    first = load_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).peer_id == first.peer_id
    assert sorted(p.name for p in path.parent.iterdir()) == ["host.key"]  # no temp file left
    assert load_identity(None).peer_id != load_identity(None).peer_id


@pytest.mark.parametrize("content", ["not hex at all", "abcd", "00" * 31, "00" * 33, ""])
def test_corrupt_identity_file(tmp_path: Path, content: str) -> None:
    """An identity file that does not hold 32 bytes of hex is a ConfigurationError naming the file (it is
    never silently replaced: that would change the host's peer id)."""
    path = tmp_path / "host.key"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match="identity file"):
        load_identity(path)
    assert path.read_text() == content


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_simulated_host_starts_describes_itself_and_closes(tmp_path: Path) -> None:
    """A HostService with the simulated backend starts on loopback; describe() gives its peer id (the one
    kept in the identity file), full addresses ending in /p2p/<id>, models, prices, wallet and escrow off;
    health says running; closing stops the node and libp2p (addresses gone), and a second close is
    harmless."""
    options = HostServiceOptions(
        backend="simulated",
        escrow=False,
        default_price=5,
        identity_path=tmp_path / "host.key",
        private_key=KEY,
    )
    service = HostService(options)
    async with asyncio.timeout(30):
        async with service:
            info = service.describe()
            assert info["peer_id"] == service.peer_id == load_identity(tmp_path / "host.key").peer_id
            assert info["addrs"]
            assert all(a.startswith("/ip4/127.0.0.1/tcp/") for a in info["addrs"])
            assert all(a.endswith(f"/p2p/{service.peer_id}") for a in info["addrs"])
            assert info["models"] == ["simulated-model"]
            assert info["prices"] == {"simulated-model": {"ETH": 5}}
            assert info["payment_address"] == Account.from_key(KEY).address
            assert info["escrow"] is False
            assert info["backend"] == "simulated"
            node = service.node
            assert node is not None
            assert node.health()["status"] == "running"
        assert service.node is None
        assert node.health()["status"] == "stopped"
        assert service.addrs() == []
        await service.aclose()
