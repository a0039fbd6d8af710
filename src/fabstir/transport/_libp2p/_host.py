"""The safe host factory: a py-libp2p host with every setting FINDINGS.md measured as necessary.

Each setting below fixes a problem seen with the defaults of ``libp2p==0.8.1``; the comments say which.
Runs in the trio thread (the host's methods are trio coroutines).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from ...protocol import PeerIdentity

__all__ = ["HostSettings", "build_host", "key_pair_from_identity", "quiet_libp2p_logging"]

#: "Never" for libp2p's periodic auto-connect (the connector is also switched off, see build_host).
_NEVER = 365 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Timeouts (seconds) of one host; validated by the transport facade."""

    dial_timeout: float
    stream_timeout: float
    ping_interval: float
    ping_timeout: float


def key_pair_from_identity(identity: PeerIdentity) -> KeyPair:
    """The libp2p Ed25519 key pair of ``identity``: same seed, so the same peer id and signatures."""
    key_pair = create_new_key_pair(identity.seed)
    derived = ID.from_pubkey(key_pair.public_key).to_base58()
    if derived != identity.peer_id:  # would mean the two Ed25519 encodings disagree: never sign with it
        raise RuntimeError(f"libp2p derived peer id {derived}, expected {identity.peer_id}")
    return key_pair


#: Modules that log expected network events (a refused dial or protocol, a peer gone mid-handshake)
#: at ERROR, e.g. a 7-line report for every refused protocol.
_NOISY_AT_ERROR = (
    "libp2p.host.basic_host",
    "libp2p.protocol_muxer.multiselect_client",
    "libp2p.transport.tcp.tcp",
)


def quiet_libp2p_logging() -> None:
    """libp2p logs normal events (a remote EOF: 150 times per run) at WARNING and ERROR: keep its real
    errors only, unless the user asked for its debug output (``LIBP2P_DEBUG``, which libp2p handles).

    ``import libp2p`` detaches its logger tree (no handler, no propagation), so whatever it logs at
    WARNING or above is printed to stderr by logging's last-resort handler. Its records propagate to the
    application's logging configuration instead, and print nothing if there is none.
    Must run after ``import libp2p``."""
    if os.environ.get("LIBP2P_DEBUG"):
        return
    root = logging.getLogger("libp2p")
    root.setLevel(logging.ERROR)
    root.propagate = True
    if not any(isinstance(handler, logging.NullHandler) for handler in root.handlers):
        root.addHandler(logging.NullHandler())
    for name in _NOISY_AT_ERROR:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def build_host(
    identity: PeerIdentity,
    listen_addrs: Sequence[str],
    settings: HostSettings,
    announce_addrs: Sequence[str] = (),
) -> IHost:
    """A host speaking noise + yamux only, one connection per peer, no auto-dialling, with health pings.
    ``announce_addrs``, if given, are what peers are told (DHT provider records, identify) instead of the
    listen addresses — a host listening on 0.0.0.0 must announce an address others can dial."""
    key_pair = key_pair_from_identity(identity)
    negotiate = max(1, round(settings.stream_timeout))  # libp2p takes whole seconds here
    config = ConnectionConfig(
        # the default (3) makes every dial wait 250 ms in a happy-eyeballs loop; with 1 it is 6-23 ms
        max_connections_per_peer=1,
        # otherwise the host keeps redialling peers that left (clients, finished jobs)
        min_connections=0,
        auto_connect_interval=_NEVER,
        dial_timeout=settings.dial_timeout,
        inbound_upgrade_timeout=settings.dial_timeout,
        outbound_upgrade_timeout=settings.dial_timeout,
        outbound_stream_protocol_negotiation_timeout=negotiate,
        inbound_stream_protocol_negotiation_timeout=negotiate,
        # without pings a frozen (SIGSTOPped, partitioned) peer is never noticed: reads block forever.
        # A failed ping closes the connection, which fails the streams on it.
        enable_health_monitoring=True,
        health_initial_delay=settings.ping_interval,
        health_warmup_window=0.0,
        health_check_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        abort_connection_on_ping_failure=True,
        # "replace unhealthy connections" redials the peer; we only want the abort above
        min_health_threshold=0.0,
        min_ping_success_rate=0.0,
        max_ping_latency=settings.ping_timeout * 1000.0,
        max_failed_streams=1 << 30,
    )
    host = new_host(
        key_pair=key_pair,
        # the default set also accepts plaintext (and secio, TLS) peers
        sec_opt={
            TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(
                key_pair, noise_privkey=create_new_x25519_key_pair().private_key
            )
        },
        # yamux only: mplex bulk is 5x slower and js-libp2p drops py->js mplex connections
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        muxer_preference="YAMUX",
        listen_addrs=[multiaddr.Multiaddr(addr) for addr in listen_addrs],
        connection_config=config,
        negotiate_timeout=negotiate,
        announce_addrs=[multiaddr.Multiaddr(addr) for addr in announce_addrs] or None,
    )
    _disable_auto_connector(host)
    network = host.get_network()
    if hasattr(network, "retry_config"):
        # one attempt per dial: retrying is the caller's policy (libp2p's 3 retries with backoff add
        # 0.7 s to every refused dial, e.g. of a host that is gone)
        network.retry_config = RetryConfig(max_retries=0)
    return host


def _disable_auto_connector(host: IHost) -> None:
    """A disconnect makes the auto-connector dial up to (low + high watermark) / 2 peers from the
    peerstore at once, whatever the interval: departed clients and every peer the DHT ever mentioned.
    It only runs once started, so it is never started."""
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:

        async def never_start() -> None:
            return None

        setattr(connector, "start", never_start)  # noqa: B010 (instance override of a method)
