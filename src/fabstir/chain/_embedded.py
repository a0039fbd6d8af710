"""An embedded EVM (eth-tester on py-evm) served over JSON-RPC on 127.0.0.1, for tests and demos.

Why over HTTP and not web3's in-process provider: eth-tester is synchronous, so an in-process async
provider stalls the event loop for every transaction; behind a local HTTP server in a thread it is just
another node, reached by the same :class:`~fabstir.chain.Web3Ledger` code as anvil or a real chain.

eth-tester is not thread-safe, so one lock serialises every request. Nagle is disabled on the
connections: small JSON-RPC replies otherwise wait for delayed ACKs (12x slower, FINDINGS.md).

Only what web3.py and the ledger use is served: ``eth_chainId``, ``eth_blockNumber``, ``eth_getBlockBy*``,
``eth_getBalance``, ``eth_getTransactionCount``, ``eth_getCode``, ``eth_call``, ``eth_estimateGas``,
``eth_gasPrice``, ``eth_maxPriorityFeePerGas``, ``eth_sendRawTransaction``, ``eth_getTransactionReceipt``,
``eth_getTransactionByHash``, ``eth_getLogs``, ``eth_accounts``, ``net_version``, ``web3_clientVersion``
and, for tests, ``evm_mine``, ``evm_increaseTime``, ``evm_snapshot``, ``evm_revert``. Reverts are answered
as geth and anvil answer them (code 3, ``data`` = the revert data), so clients decode them one way.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from eth_abi import abi
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import (
    BlockNotFound,
    TransactionFailed,
    TransactionNotFound,
)
from eth_utils.crypto import keccak

from .._exceptions import ConfigurationError

__all__ = ["EmbeddedChain"]

_log = logging.getLogger("fabstir.chain")

_ERROR_STRING = keccak(b"Error(string)")[:4]
#: Quantities in transaction objects sent by clients, as JSON-RPC names them → eth-tester's names.
_TX_QUANTITIES = {
    "value": "value",
    "gas": "gas",
    "gasPrice": "gas_price",
    "maxFeePerGas": "max_fee_per_gas",
    "maxPriorityFeePerGas": "max_priority_fee_per_gas",
    "nonce": "nonce",
}
_SNAKE = re.compile(r"_([a-z0-9])")
#: A request body larger than this is refused: nothing the ledger sends comes near it.
_MAX_BODY = 8 * 1024 * 1024


class _RpcError(Exception):
    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _camel(key: str) -> str:
    return _SNAKE.sub(lambda m: m.group(1).upper(), key)


def _outbound(value: Any, key: str = "") -> Any:
    """eth-tester's Python values → JSON-RPC: camelCase keys, hex quantities and bytes."""
    if isinstance(value, dict):
        out = {_camel(k): _outbound(v, k) for k, v in value.items()}
        if "data" in value and "r" in value:  # a transaction: JSON-RPC calls its data "input"
            out["input"] = out.pop("data")
        return out
    if isinstance(value, list | tuple):
        return [_outbound(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if key == "logs_bloom":
            return "0x" + value.to_bytes(256, "big").hex()
        return hex(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


def _quantity(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(str(value), 16)


def _block(tag: Any) -> int | str:
    """A JSON-RPC block parameter → eth-tester's (a number or latest/earliest/pending)."""
    if tag is None:
        return "latest"
    if isinstance(tag, dict):  # EIP-1898 {"blockNumber": ...}
        tag = tag.get("blockNumber", "latest")
    if tag in ("latest", "earliest", "pending"):
        return str(tag)
    if tag in ("safe", "finalized"):
        return "latest"
    return _quantity(tag)


def _transaction(raw: dict[str, Any], default_from: str) -> dict[str, Any]:
    """A JSON-RPC call object → eth-tester's transaction dict."""
    tx: dict[str, Any] = {"from": raw.get("from") or default_from}
    if raw.get("to"):
        tx["to"] = raw["to"]
    data = raw.get("input") or raw.get("data")
    if data:
        tx["data"] = data
    for name, ours in _TX_QUANTITIES.items():
        if raw.get(name) is not None:
            tx[ours] = _quantity(raw[name])
    return tx


def _revert_data(exc: TransactionFailed) -> bytes:
    """The revert data behind eth-tester's TransactionFailed.

    eth-tester's ``call`` keeps only a string: the decoded reason of an ``Error(string)``, or the repr of
    the raw revert bytes (custom errors); ``estimate_gas`` wraps the EVM's exception, bytes inside."""
    arg: Any = exc.args[0] if exc.args else b""
    while isinstance(arg, BaseException):
        arg = arg.args[0] if arg.args else b""
    if isinstance(arg, bytes):
        return arg
    text = str(arg)
    if text.startswith(("b'", 'b"')):
        try:
            literal = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            literal = None
        if isinstance(literal, bytes):
            return literal
    return _ERROR_STRING + abi.encode(["string"], [text])


class EmbeddedChain:
    """An in-process EVM chain behind ``http://127.0.0.1:<port>`` (a context manager).

    Ten accounts are funded with 1,000,000 ETH each (:attr:`accounts`; private keys ``0x…01`` to
    ``0x…0a``, well known: test use only). Blocks are mined one per transaction, at once. Time moves
    with the wall clock; :meth:`advance_time` (or the RPC ``evm_increaseTime`` + ``evm_mine``) jumps
    ahead so that expiries can be tested.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._backend = PyEVMBackend()
        self._tester = EthereumTester(self._backend)
        self._accounts = tuple(Account.from_key(key.to_bytes()) for key in self._backend.account_keys)
        self._chain_id = int(self._backend.chain.chain_id)
        self._snapshots: dict[int, Any] = {}
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._methods: dict[str, Callable[[list[Any]], Any]] = self._method_table()

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> EmbeddedChain:
        if self._server is not None:
            return self
        chain = self

        class Handler(_Handler):
            dispatch = staticmethod(chain.handle)

        server = ThreadingHTTPServer(self._address, Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fabstir-embedded-chain",
            daemon=True,
        )
        self._thread.start()
        _log.debug("embedded chain %d serving on %s", self._chain_id, self.url)
        return self

    def stop(self) -> None:
        """Stops serving (idempotent); the chain's state is kept until the object is dropped."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> EmbeddedChain:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        if self._server is None:
            raise ConfigurationError("the embedded chain is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def chain_id(self) -> int:
        return self._chain_id

    @property
    def accounts(self) -> tuple[LocalAccount, ...]:
        """The funded test accounts (1,000,000 ETH each)."""
        return self._accounts

    def timestamp(self) -> int:
        """The latest block's timestamp."""
        with self._lock:
            return int(self._tester.get_block_by_number("latest")["timestamp"])

    def advance_time(self, seconds: float) -> int:
        """Moves chain time forward by ``seconds`` (rounded up to whole seconds) and mines a block at
        that time; returns the new latest block timestamp."""
        if seconds < 0:
            raise ConfigurationError("time only moves forward")
        with self._lock:
            self._increase_time(math.ceil(seconds))
            return int(self._tester.get_block_by_number("latest")["timestamp"])

    def _increase_time(self, seconds: int) -> None:
        # eth-tester's time_travel(t) mines a block at t - 1 and leaves the pending block at t.
        latest = int(self._tester.get_block_by_number("latest")["timestamp"])
        pending = int(self._tester.get_block_by_number("pending")["timestamp"])
        target = latest + seconds + 1
        if target > pending:
            self._tester.time_travel(target)
        else:
            self._tester.mine_blocks(1)

    # ------------------------------------------------------------------------------------ JSON-RPC
    def handle(self, request: Any) -> Any:
        """Answers one JSON-RPC request object or a batch (a list of them)."""
        if isinstance(request, list):
            return [self._answer(item) for item in request]
        return self._answer(request)

    def _answer(self, request: Any) -> dict[str, Any]:
        request_id = request.get("id") if isinstance(request, dict) else None
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        try:
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                raise _RpcError(-32600, "invalid request")
            method = self._methods.get(request["method"])
            if method is None:
                raise _RpcError(-32601, f"method {request['method']} is not served by the embedded chain")
            params = request.get("params") or []
            with self._lock:
                reply["result"] = method(list(params))
        except _RpcError as exc:
            reply["error"] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                reply["error"]["data"] = exc.data
        except TransactionFailed as exc:
            data = _revert_data(exc)
            reply["error"] = {"code": 3, "message": "execution reverted", "data": "0x" + data.hex()}
        except Exception as exc:  # eth-tester's validation errors: bad nonce, funds, arguments
            reply["error"] = {"code": -32000, "message": str(exc) or type(exc).__name__}
        return reply

    def _method_table(self) -> dict[str, Callable[[list[Any]], Any]]:
        t = self._tester

        def block_by_number(p: list[Any]) -> Any:
            try:
                return _outbound(t.get_block_by_number(_block(p[0]), bool(p[1]) if len(p) > 1 else False))
            except BlockNotFound:
                return None

        def block_by_hash(p: list[Any]) -> Any:
            try:
                return _outbound(t.get_block_by_hash(p[0], bool(p[1]) if len(p) > 1 else False))
            except BlockNotFound:
                return None

        def receipt(p: list[Any]) -> Any:
            try:
                return _outbound(t.get_transaction_receipt(p[0]))
            except TransactionNotFound:
                return None

        def transaction(p: list[Any]) -> Any:
            try:
                return _outbound(t.get_transaction_by_hash(p[0]))
            except TransactionNotFound:
                return None

        def logs(p: list[Any]) -> Any:
            query = p[0] if p else {}
            return _outbound(
                t.get_logs(
                    from_block=_block(query.get("fromBlock")),
                    to_block=_block(query.get("toBlock")),
                    address=query.get("address"),
                    topics=query.get("topics"),
                )
            )

        def call_object(p: list[Any]) -> dict[str, Any]:
            # py-evm runs a call like a transaction: its sender must afford gas × price, at a price not
            # below the base fee. Calls without a sender run as the first funded account.
            tx = _transaction(p[0], self._accounts[0].address)
            if not {"gas_price", "max_fee_per_gas"} & tx.keys():
                tx["gas_price"] = int(gas_price([]), 16)
            return tx

        def gas_price(_: list[Any]) -> str:
            # Twice the latest base fee: the next block's base fee grows by at most 12.5 %.
            base_fee = int(t.get_block_by_number("latest").get("base_fee_per_gas") or 0)
            return hex(max(2 * base_fee, 1))

        def increase_time(p: list[Any]) -> str:
            seconds = math.ceil(float(_quantity(p[0]) if isinstance(p[0], str) else p[0]))
            self._increase_time(seconds)
            return hex(seconds)

        def mine(p: list[Any]) -> str:
            t.mine_blocks(_quantity(p[0]) if p else 1)
            return "0x0"

        def snapshot(_: list[Any]) -> str:
            key = len(self._snapshots) + 1
            self._snapshots[key] = t.take_snapshot()
            return hex(key)

        def revert(p: list[Any]) -> bool:
            snap = self._snapshots.pop(_quantity(p[0]), None)
            if snap is None:
                return False
            t.revert_to_snapshot(snap)
            return True

        def latest_number(_: list[Any]) -> str:
            return hex(int(t.get_block_by_number("latest")["number"]))

        return {
            "web3_clientVersion": lambda p: "fabstir-embedded/eth-tester",
            "net_version": lambda p: str(self._chain_id),
            "eth_chainId": lambda p: hex(self._chain_id),
            "eth_syncing": lambda p: False,
            "eth_accounts": lambda p: list(t.get_accounts()),
            "eth_blockNumber": latest_number,
            "eth_getBlockByNumber": block_by_number,
            "eth_getBlockByHash": block_by_hash,
            "eth_getBalance": lambda p: hex(t.get_balance(p[0], _block(p[1] if len(p) > 1 else None))),
            "eth_getTransactionCount": lambda p: hex(t.get_nonce(p[0], _block(p[1] if len(p) > 1 else None))),
            "eth_getCode": lambda p: _outbound(t.get_code(p[0], _block(p[1] if len(p) > 1 else None))),
            "eth_call": lambda p: _outbound(t.call(call_object(p), _block(p[1] if len(p) > 1 else None))),
            "eth_estimateGas": lambda p: hex(
                t.estimate_gas(call_object(p), _block(p[1] if len(p) > 1 else None))
            ),
            "eth_gasPrice": gas_price,
            "eth_maxPriorityFeePerGas": lambda p: "0x1",
            "eth_sendRawTransaction": lambda p: t.send_raw_transaction(p[0]),
            "eth_getTransactionReceipt": receipt,
            "eth_getTransactionByHash": transaction,
            "eth_getLogs": logs,
            "evm_mine": mine,
            "evm_increaseTime": increase_time,
            "evm_snapshot": snapshot,
            "evm_revert": revert,
        }


class _Handler(BaseHTTPRequestHandler):
    """POST / with a JSON-RPC body; HTTP/1.1 keep-alive; no Nagle (see the module docstring)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    dispatch: Callable[[Any], Any]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.send_error(413)
            return
        try:
            request = json.loads(self.rfile.read(length))
        except ValueError:
            answer: Any = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
        else:
            answer = self.dispatch(request)
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # library code never prints
        _log.debug("embedded chain: " + format, *args)
