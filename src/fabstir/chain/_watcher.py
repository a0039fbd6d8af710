"""Following payment sessions on the chain: :class:`SessionWatcher` polls the PaymentSessions contract's
logs and turns them into :class:`SessionEvent` values, with confirmations and reorg handling.

Why polling: ``eth_getLogs`` works on every node (eth-tester, anvil, geth, hosted RPC), where
``eth_subscribe`` needs a WebSocket and is not served everywhere (FINDINGS.md). The chain is the
authority: whatever a consumer believed about a session, an event delivered here wins, and a
:class:`ChainReorg` takes back events that are no longer on the canonical chain.

What a consumer may rely on:

* **Scope.** Only logs of the one contract, of the four session events (``SessionOpened``, ``Settled``,
  ``SessionClosed``, ``Reclaimed``) and of watched sessions are delivered. Each round asks
  ``eth_getLogs`` with the contract's address and ``topic1`` ∈ the watched session ids, in block ranges
  of at most ``max_block_range``. The node's answer is untrusted input: a log from another address, of
  another session, with another event or with data that does not decode is skipped with a log line
  (``fabstir.chain``); an answer that breaks JSON-RPC's shape (not a list, a block without a hash, a log
  without its ``sessionId`` topic, a field that is not hex) raises :class:`~fabstir.PaymentError`.
* **Order and once.** :meth:`SessionWatcher.poll` returns events in chain order (block, then log
  index) and each event once. Events found by a round that then fails are kept and returned by the next
  round, so a failure loses nothing.
* **Confirmations.** An event is delivered once its block has ``confirmations`` blocks on top of it
  counting itself (``block_number <= head - confirmations + 1``); 1 means as soon as it is mined.
* **Where it starts.** ``start_block`` (inclusive), or by default the blocks *after* the confirmed head
  at the first poll. :meth:`SessionWatcher.watch` with ``from_block`` older than what was already
  scanned catches up on that session once, in the next poll, before newer events. ``watch`` and
  ``unwatch`` may be called while a poll runs: a session watched meanwhile gets the blocks that poll
  scanned without it in the next poll; one unwatched meanwhile gets nothing more.
* **Reorgs.** The hashes of the last ``reorg_window`` scanned blocks are remembered. Each round first
  compares the newest one with the node's; on a mismatch it walks back to the newest block that still
  matches, delivers a :class:`ChainReorg` (``fork_block`` is the first replaced block) listing the
  events delivered from blocks ``>= fork_block`` (``retracted``), forgets them and rescans from the fork.
  Events that re-appear on the new branch are delivered again as new events. A round also checks that
  the blocks it scans chain together (``parentHash``) and that each log's block hash is the one it saw;
  if the chain moved under it, it stops and the next round sorts it out. A fork below every remembered
  block raises a non-retryable :class:`~fabstir.PaymentError` (the consumer must re-read the sessions'
  state from the contract); the watcher then starts again after the head at the next poll, keeping
  its watched sessions.
* **Failures.** An unreachable node or a JSON-RPC error raises a retryable
  :class:`~fabstir.PaymentError` (the cause chained); :meth:`SessionWatcher.run` logs those and keeps
  polling with exponential backoff capped at ``8 * poll_interval``; it raises non-retryable errors.

Malformed answers are retryable too: asking again (perhaps through another node behind the same URL)
can help, and nothing was delivered from them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from eth_abi import abi
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from .._exceptions import ConfigurationError, PaymentError, ValidationError
from ._artifacts import load_artifact

if TYPE_CHECKING:
    from web3 import AsyncWeb3
    from web3.types import RPCEndpoint

__all__ = ["EVENT_NAMES", "ChainReorg", "SessionEvent", "SessionWatcher"]

_log = logging.getLogger("fabstir.chain")

#: The PaymentSessions events a watcher follows (all carry ``sessionId`` as their first indexed topic).
EVENT_NAMES = ("SessionOpened", "Settled", "SessionClosed", "Reclaimed")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_HEX = re.compile(r"0x[0-9a-fA-F]*")
#: The backoff of run() after failures stops growing at this multiple of poll_interval.
_BACKOFF_CAP = 8


# ---------------------------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One PaymentSessions event of a watched session, as found on the chain.

    ``args`` holds the decoded arguments except ``sessionId``: integers as ``int``, addresses
    checksummed (``SessionOpened``: client, host, token, deposit, pricePerToken, expiry; ``Settled``:
    amount, hostAmount, fee, settled; ``SessionClosed``: settled, refunded; ``Reclaimed``: refunded)."""

    name: str
    session_id: str
    args: Mapping[str, int | str]
    block_number: int
    block_hash: str
    transaction_hash: str
    log_index: int


@dataclass(frozen=True, slots=True)
class ChainReorg:
    """The chain replaced blocks the watcher had scanned: ``fork_block`` is the first replaced block,
    ``depth`` how many scanned blocks were replaced, ``retracted`` the events delivered from them (no
    longer on the canonical chain; those still there are delivered again after this)."""

    fork_block: int
    depth: int
    retracted: tuple[SessionEvent, ...]


# ---------------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True, slots=True)
class _EventAbi:
    name: str
    indexed: tuple[tuple[str, str], ...]  # (name, type) after sessionId
    data: tuple[tuple[str, str], ...]


@cache
def _event_table() -> Mapping[str, _EventAbi]:
    """topic0 (lowercase hex) → the event's layout, from the shipped PaymentSessions ABI."""
    table: dict[str, _EventAbi] = {}
    for entry in load_artifact("PaymentSessions").abi:
        if entry.get("type") != "event" or entry.get("name") not in EVENT_NAMES:
            continue
        inputs = entry["inputs"]
        signature = f"{entry['name']}({','.join(str(i['type']) for i in inputs)})"
        indexed = tuple((str(i["name"]), str(i["type"])) for i in inputs if i["indexed"])
        data = tuple((str(i["name"]), str(i["type"])) for i in inputs if not i["indexed"])
        if indexed[:1] != (("sessionId", "bytes32"),):  # pragma: no cover - the contract guarantees it
            raise PaymentError(f"the PaymentSessions event {entry['name']} is not keyed by sessionId")
        table["0x" + keccak(text=signature).hex()] = _EventAbi(str(entry["name"]), indexed[1:], data)
    return MappingProxyType(table)


def _value(kind: str, value: Any) -> int | str:
    if kind == "address":
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    return str(value)


class _Malformed(Exception):
    """Raised internally for an answer that breaks JSON-RPC's shape; becomes a PaymentError."""


def _quantity(value: Any, what: str) -> int:
    if isinstance(value, str) and _HEX.fullmatch(value) and len(value) > 2:
        return int(value, 16)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value  # some nodes answer numbers where the spec says hex quantities
    raise _Malformed(f"{what} is not a hex quantity: {value!r}")


def _hash(value: Any, what: str) -> str:
    if isinstance(value, str) and _HASH.fullmatch(value):
        return value.lower()
    raise _Malformed(f"{what} is not a 32-byte hash: {value!r}")


def _data(value: Any, what: str) -> bytes:
    if isinstance(value, str) and _HEX.fullmatch(value) and len(value) % 2 == 0:
        return bytes.fromhex(value[2:])
    raise _Malformed(f"{what} is not hex data: {value!r}")


@dataclass(frozen=True, slots=True)
class _RawLog:
    """A log whose JSON-RPC shape was checked (its content is still untrusted)."""

    address: str
    topics: tuple[str, ...]
    data: bytes
    block_number: int
    block_hash: str
    transaction_hash: str
    log_index: int
    removed: bool


def _raw_log(entry: Any) -> _RawLog:
    if not isinstance(entry, Mapping):
        raise _Malformed(f"a log is not an object: {entry!r}")
    topics = entry.get("topics")
    if not isinstance(topics, list):
        raise _Malformed(f"a log has no topics list: {entry!r}")
    address = entry.get("address")
    if not isinstance(address, str):
        raise _Malformed(f"a log has no address: {entry!r}")
    return _RawLog(
        address=address.lower(),
        topics=tuple(_hash(t, "a log topic") for t in topics),
        data=_data(entry.get("data"), "a log's data"),
        block_number=_quantity(entry.get("blockNumber"), "a log's blockNumber"),
        block_hash=_hash(entry.get("blockHash"), "a log's blockHash"),
        transaction_hash=_hash(entry.get("transactionHash"), "a log's transactionHash"),
        log_index=_quantity(entry.get("logIndex"), "a log's logIndex"),
        removed=entry.get("removed") is True,
    )


def _decode(log: _RawLog) -> SessionEvent | None:
    """The event of a well-shaped log, or None (with a log line) if it is not one of ours."""
    layout = _event_table().get(log.topics[0])
    if layout is None:
        _log.warning(
            "skipping a log with an unknown event topic %s (block %d)", log.topics[0], log.block_number
        )
        return None
    if len(log.topics) != 2 + len(layout.indexed):
        _log.warning(
            "skipping a %s log with %d topics (block %d)", layout.name, len(log.topics), log.block_number
        )
        return None
    try:
        args: dict[str, int | str] = {}
        for (name, kind), topic in zip(layout.indexed, log.topics[2:], strict=True):
            args[name] = _value(kind, abi.decode([kind], bytes.fromhex(topic[2:]))[0])
        values = abi.decode([kind for _, kind in layout.data], log.data, strict=True)
        for (name, kind), value in zip(layout.data, values, strict=True):
            args[name] = _value(kind, value)
    except Exception as exc:  # eth-abi's DecodingError family, or a bad address: untrusted data
        _log.warning(
            "skipping a %s log that does not decode (block %d): %s", layout.name, log.block_number, exc
        )
        return None
    return SessionEvent(
        name=layout.name,
        session_id=log.topics[1],
        args=MappingProxyType(args),
        block_number=log.block_number,
        block_hash=log.block_hash,
        transaction_hash=log.transaction_hash,
        log_index=log.log_index,
    )


def _session_topic(session_id: str) -> str:
    if not isinstance(session_id, str) or not _HASH.fullmatch(session_id):
        raise ValidationError(f"a session id is 0x and 64 hex digits, got {session_id!r}")
    return session_id.lower()


class _Moved(Exception):
    """The chain changed during a round: stop it; the next round's reorg check sorts it out."""


# ---------------------------------------------------------------------------------------------- watcher
class SessionWatcher:
    """Follows watched payment sessions by polling logs (see the module docstring for the contract).

    Not safe for concurrent :meth:`poll` calls: one consumer drives it (usually through :meth:`run`).
    """

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        payment_sessions: str,
        *,
        confirmations: int = 1,
        poll_interval: float = 1.0,
        max_block_range: int = 2_000,
        reorg_window: int = 64,
        start_block: int | None = None,
    ) -> None:
        if confirmations < 1:
            raise ConfigurationError(
                f"confirmations counts the event's own block: at least 1, got {confirmations}"
            )
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be positive, got {poll_interval}")
        if max_block_range < 1 or reorg_window < 1:
            raise ConfigurationError("max_block_range and reorg_window must be at least 1")
        if start_block is not None and start_block < 0:
            raise ConfigurationError(f"start_block must not be negative, got {start_block}")
        try:
            self._address = to_checksum_address(payment_sessions)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"payment_sessions is not an address: {payment_sessions!r}") from exc
        self._w3 = w3
        self._confirmations = confirmations
        self._poll_interval = poll_interval
        self._max_range = max_block_range
        self._window = reorg_window
        self._start_block = start_block
        self._watched: set[str] = set()
        self._catch_up: dict[str, int] = {}  # session → first block still to scan for it
        self._cursor: int | None = None  # the last block scanned (None before the first poll)
        self._hashes: dict[int, str] = {}  # block number → hash, ascending, the last reorg_window scanned
        self._delivered: list[SessionEvent] = []  # events from remembered blocks (what a reorg retracts)
        self._outbox: list[SessionEvent | ChainReorg] = []

    # ------------------------------------------------------------------------------------ properties
    @property
    def address(self) -> str:
        """The PaymentSessions contract watched."""
        return self._address

    @property
    def cursor(self) -> int | None:
        """The last block scanned (``None`` before the first poll)."""
        return self._cursor

    @property
    def watched(self) -> frozenset[str]:
        return frozenset(self._watched)

    # ------------------------------------------------------------------------------------ sessions
    def watch(self, session_id: str, *, from_block: int | None = None) -> None:
        """Starts following ``session_id``: events from the blocks after the cursor on, and with
        ``from_block`` also those already scanned from that block (a one-off catch-up in the next poll).
        Watching a watched session again only adds the catch-up. Safe to call while a poll runs."""
        topic = _session_topic(session_id)
        if from_block is not None and from_block < 0:
            raise ValidationError(f"from_block must not be negative, got {from_block}")
        if from_block is None and topic not in self._watched and self._cursor is not None:
            # A poll under way scans with the sessions it started with: catch up on what it scans
            # beyond the cursor (nothing, if no poll is running).
            from_block = self._cursor + 1
        self._watched.add(topic)
        if from_block is not None:
            self._catch_up[topic] = min(from_block, self._catch_up.get(topic, from_block))

    def unwatch(self, session_id: str) -> None:
        """Stops following ``session_id`` (a no-op if it was not watched)."""
        topic = _session_topic(session_id)
        self._watched.discard(topic)
        self._catch_up.pop(topic, None)

    # ------------------------------------------------------------------------------------ polling
    async def poll(self) -> list[SessionEvent | ChainReorg]:
        """One round: checks for a reorg, catches up, scans new confirmed blocks; returns what it found
        in chain order (a :class:`ChainReorg` before the events of the new branch)."""
        try:
            await self._round()
        except _Moved as moved:
            _log.debug("the chain moved during a poll (%s); continuing next round", moved)
        except _Malformed as exc:
            raise PaymentError(
                f"watching sessions: the chain node sent a malformed answer: {exc}",
                retryable=True,
                context={"contract": self._address},
            ) from exc
        out, self._outbox = self._outbox, []
        return out

    async def run(self, deliver: Callable[[SessionEvent | ChainReorg], object]) -> None:
        """Polls forever, handing each item to ``deliver`` (awaited if it returns an awaitable).

        Retryable failures are logged and polled again after a backoff that doubles up to
        ``8 * poll_interval``; a non-retryable one (a reorg deeper than ``reorg_window``) and whatever
        ``deliver`` raises propagate. Cancel the task to stop it."""
        failures = 0
        while True:
            try:
                items = await self.poll()
            except PaymentError as exc:
                if not exc.retryable:
                    raise
                failures += 1
                delay = self._poll_interval * min(2**failures, _BACKOFF_CAP)
                _log.warning("watching sessions failed (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            for item in items:
                result = deliver(item)
                if inspect.isawaitable(result):
                    await result
            await asyncio.sleep(self._poll_interval)

    # ------------------------------------------------------------------------------------ one round
    async def _round(self) -> None:
        head = _quantity(await self._rpc("eth_blockNumber", []), "the block number")
        safe = head - self._confirmations + 1
        if self._cursor is None:
            await self._anchor(head, safe)
        elif self._hashes:
            await self._check_reorg()
        sessions = sorted(self._watched)
        await self._catch_ups()
        await self._scan(safe, sessions)

    async def _anchor(self, head: int, safe: int) -> None:
        """Sets the cursor before the first scan, remembering its block so that a reorg of the first
        scanned blocks finds a fork point."""
        cursor = max(safe, -1) if self._start_block is None else self._start_block - 1
        if 0 <= cursor <= head:
            block = await self._block(cursor)
            if block is None:
                raise _Moved(f"block {cursor} vanished")
            self._hashes[cursor] = block[0]
        self._cursor = cursor

    async def _check_reorg(self) -> None:
        newest = max(self._hashes)
        block = await self._block(newest)
        if block is not None and block[0] == self._hashes[newest]:
            return
        fork: int | None = None
        for number in sorted(self._hashes, reverse=True)[1:]:
            block = await self._block(number)
            if block is not None and block[0] == self._hashes[number]:
                fork = number + 1
                break
        assert self._cursor is not None
        if fork is None:
            oldest = min(self._hashes)
            self._reset()
            raise PaymentError(
                f"the chain reorganised below block {oldest}, deeper than the {self._window} blocks the "
                "session watcher remembers: re-read the sessions' state from the contract",
                retryable=False,
                context={"contract": self._address, "oldest_remembered": oldest},
            )
        retracted = tuple(
            sorted(
                (e for e in self._delivered if e.block_number >= fork),
                key=lambda e: (e.block_number, e.log_index),
            )
        )
        reorg = ChainReorg(fork_block=fork, depth=self._cursor - fork + 1, retracted=retracted)
        _log.warning(
            "chain reorg from block %d (%d blocks, %d events retracted)", fork, reorg.depth, len(retracted)
        )
        self._delivered = [e for e in self._delivered if e.block_number < fork]
        self._hashes = {n: h for n, h in self._hashes.items() if n < fork}
        self._cursor = fork - 1
        self._outbox.append(reorg)

    def _reset(self) -> None:
        """After a fork deeper than remembered: start again after the head, keeping the sessions."""
        self._cursor = None
        self._start_block = None
        self._hashes.clear()
        self._delivered.clear()
        self._outbox.clear()

    async def _catch_ups(self) -> None:
        """Scans already scanned blocks for newly watched sessions; all of them or nothing."""
        cursor = self._cursor
        if not self._catch_up or cursor is None:
            return
        pending = {s: start for s, start in self._catch_up.items() if s in self._watched}
        if not pending:
            return
        found: list[SessionEvent] = []
        first = min(pending.values())
        while first <= cursor:
            last = min(first + self._max_range - 1, cursor)
            sessions = sorted(s for s, start in pending.items() if start <= last)
            for event in await self._logs(first, last, sessions):
                known = self._hashes.get(event.block_number)
                if known is not None and known != event.block_hash:
                    raise _Moved(f"block {event.block_number} changed since it was scanned")
                if event.block_number >= pending[event.session_id]:
                    found.append(event)
            first = last + 1
        for session, start in pending.items():
            if self._catch_up.get(session) == start:  # not watched again meanwhile
                del self._catch_up[session]
        found.sort(key=lambda e: (e.block_number, e.log_index))
        self._commit(found)

    async def _scan(self, safe: int, sessions: Sequence[str]) -> None:
        """Scans the confirmed blocks after the cursor, one range at a time (each committed)."""
        assert self._cursor is not None
        while self._cursor < safe:
            first = self._cursor + 1
            last = min(first + self._max_range - 1, safe)
            hashes = await self._hashes_of(max(first, safe - self._window + 1), last)
            events = await self._logs(first, last, sessions) if sessions else []
            for event in events:
                seen = hashes.get(event.block_number)
                if seen is not None and seen != event.block_hash:
                    raise _Moved(f"block {event.block_number} changed while it was scanned")
            self._hashes.update(hashes)
            self._cursor = last
            self._commit(events)

    def _commit(self, events: Sequence[SessionEvent]) -> None:
        events = [e for e in events if e.session_id in self._watched]  # unwatched during the round
        self._outbox.extend(events)
        self._delivered.extend(events)
        for number in sorted(self._hashes)[: max(0, len(self._hashes) - self._window)]:
            del self._hashes[number]
        if self._hashes:
            oldest = min(self._hashes)
            self._delivered = [e for e in self._delivered if e.block_number >= oldest]
        else:
            self._delivered.clear()

    async def _hashes_of(self, first: int, last: int) -> dict[int, str]:
        """The hashes of blocks ``first..last``, checked to chain onto each other and onto what is
        remembered (else the chain moved during the round)."""
        hashes: dict[int, str] = {}
        parent = self._hashes.get(first - 1)
        for number in range(first, last + 1):
            block = await self._block(number)
            if block is None:
                raise _Moved(f"block {number} vanished")
            if parent is not None and block[1] != parent:
                raise _Moved(f"block {number} does not build on the block before it")
            hashes[number] = parent = block[0]
        return hashes

    # ------------------------------------------------------------------------------------ RPC
    async def _rpc(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC request; every failure becomes a retryable PaymentError."""
        try:
            response: Any = await self._w3.provider.make_request(cast("RPCEndpoint", method), params)
        except Exception as exc:
            raise PaymentError(
                f"watching sessions: {method} failed, the chain node is unreachable ({exc!r})",
                retryable=True,
                context={"contract": self._address, "method": method},
            ) from exc
        if not isinstance(response, Mapping):
            raise _Malformed(f"{method} answered {response!r}")
        if response.get("error") is not None:
            raise PaymentError(
                f"watching sessions: the chain node answered {method} with an error: {response['error']}",
                retryable=True,
                context={"contract": self._address, "method": method},
            )
        if "result" not in response:
            raise _Malformed(f"{method} answered without a result: {response!r}")
        return response["result"]

    async def _block(self, number: int) -> tuple[str, str] | None:
        """(hash, parentHash) of block ``number``, or None if the node has no such block."""
        block = await self._rpc("eth_getBlockByNumber", [hex(number), False])
        if block is None:
            return None
        if not isinstance(block, Mapping):
            raise _Malformed(f"block {number} is not an object: {block!r}")
        if _quantity(block.get("number"), f"block {number}'s number") != number:
            raise _Malformed(f"asked for block {number}, got block {block.get('number')!r}")
        return _hash(block.get("hash"), f"block {number}'s hash"), _hash(
            block.get("parentHash"), f"block {number}'s parentHash"
        )

    async def _logs(self, first: int, last: int, sessions: Sequence[str]) -> list[SessionEvent]:
        """The decoded events of ``sessions`` in blocks ``first..last``, in chain order, once each."""
        answer = await self._rpc(
            "eth_getLogs",
            [
                {
                    "address": self._address,
                    "fromBlock": hex(first),
                    "toBlock": hex(last),
                    "topics": [sorted(_event_table()), list(sessions)],
                }
            ],
        )
        if not isinstance(answer, list):
            raise _Malformed(f"eth_getLogs answered {answer!r}")
        wanted = set(sessions)
        events: dict[tuple[str, int], SessionEvent] = {}
        for entry in answer:
            log = _raw_log(entry)
            if len(log.topics) < 2:
                raise _Malformed(f"a log lacks the sessionId topic the filter asked for: {entry!r}")
            if log.removed:
                continue
            if log.address != self._address.lower():
                _log.warning(
                    "skipping a log of another contract %s (block %d)", log.address, log.block_number
                )
                continue
            if log.topics[1] not in wanted:
                _log.warning("skipping a log of an unwatched session %s", log.topics[1])
                continue
            if not first <= log.block_number <= last:
                _log.warning("skipping a log of block %d outside %d..%d", log.block_number, first, last)
                continue
            event = _decode(log)
            if event is not None:
                events.setdefault((event.block_hash, event.log_index), event)
        return sorted(events.values(), key=lambda e: (e.block_number, e.log_index))
