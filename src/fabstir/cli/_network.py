"""The long-running commands: ``fabstir host run``, ``fabstir bootstrap``, ``fabstir devnet ...``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from .._exceptions import ConfigurationError
from .._models import RejectReason
from ..devnet import BootstrapPeer, Devnet, DevnetOptions, default_devnet_dir, devnet_status, stop_devnet
from ..devnet._file import write_json_atomically
from ..host import HostFaults, HostService, HostServiceOptions
from ._main import _run, _State, cli

__all__ = ["bootstrap", "devnet", "host"]


async def _until_stopped() -> None:
    """Returns on SIGTERM or SIGINT (the service then shuts down cleanly)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _announce(state: _State, ready_file: Path | None, info: dict[str, Any], title: str) -> None:
    if ready_file is not None:
        write_json_atomically(ready_file, info)
    if state.json:
        click.echo(json.dumps(info), nl=True)
        return
    state.out.print(f"[bold green]{title}[/] {info['peer_id']}")
    for addr in info["addrs"]:
        state.out.print(f"  listening on {addr}")


def _parse_models(models: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in models:
        marketplace_id, _, server_name = item.partition("=")
        if not marketplace_id:
            raise ConfigurationError(f"--model must be ID or ID=SERVER_NAME, got {item!r}")
        mapping[marketplace_id] = server_name or marketplace_id
    return mapping


def _parse_contracts(items: tuple[str, ...]) -> dict[str, str]:
    contracts: dict[str, str] = {}
    for item in items:
        name, sep, address = item.partition("=")
        if not (sep and name and address):
            raise ConfigurationError(f"--contract must be NAME=ADDRESS, got {item!r}")
        contracts[name] = address
    return contracts


def _parse_prices(prices: tuple[str, ...]) -> tuple[int | None, dict[str, int]]:
    default: int | None = None
    per_model: dict[str, int] = {}
    for item in prices:
        model, sep, amount = item.rpartition("=")
        try:
            value = int(amount)
        except ValueError:
            raise ConfigurationError(f"--price must be AMOUNT or MODEL=AMOUNT, got {item!r}") from None
        if sep:
            per_model[model] = value
        else:
            default = value
    return default, per_model


# ---------------------------------------------------------------------------------------------- host
@cli.group()
def host() -> None:
    """Run a host: serve a model to the marketplace."""


def _fault_options(fn: Any) -> Any:
    """The hidden ``--fault-*`` options of ``host run``: scripted misbehaviour for the real-process fault
    tests (:class:`~fabstir.host.HostFaults`). Not for production hosts, hence hidden."""
    count = click.IntRange(min=0)
    options = [
        click.option("--fault-kill-at-token", type=count, default=None, hidden=True),
        click.option("--fault-stop-at-token", type=count, default=None, hidden=True),
        click.option("--fault-drop-at-token", type=count, default=None, hidden=True),
        click.option("--fault-error-at-token", type=count, default=None, hidden=True),
        click.option("--fault-first-token-delay", type=click.FloatRange(min=0), default=None, hidden=True),
        click.option("--fault-overclaim-tokens", type=count, default=None, hidden=True),
        click.option("--fault-serve-model", default=None, hidden=True),
        click.option(
            "--fault-reject", type=click.Choice([r.value for r in RejectReason]), default=None, hidden=True
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _host_faults(**given: Any) -> HostFaults | None:
    """The faults named by the ``--fault-*`` options that were given (``None``: a well-behaved host)."""
    values = {name: value for name, value in given.items() if value is not None}
    return HostFaults(**values) if values else None


def _signal_self(signal_name: str) -> None:
    """The host's process fault hook: the kill/stop faults crash or freeze this very process."""
    os.kill(os.getpid(), signal.Signals[signal_name])


def _announce_option(fn: Any) -> Any:
    return click.option(
        "--announce",
        multiple=True,
        help="Address peers should dial (repeat), e.g. /ip4/203.0.113.7/tcp/4001 when listening on 0.0.0.0.",
    )(fn)


@host.command("run")
@click.option("--listen", multiple=True, default=["/ip4/127.0.0.1/tcp/0"], show_default=True)
@_announce_option
@click.option("--bootstrap", "bootstrap_nodes", multiple=True, help="Bootstrap peer multiaddr (repeat).")
@click.option(
    "--backend",
    type=click.Choice(["builtin", "openai", "simulated"]),
    default="builtin",
    show_default=True,
    help="builtin: SmolLM2 in an embedded llama.cpp server; openai: any OpenAI-compatible server.",
)
@click.option("--backend-url", default=None, help="OpenAI-compatible server (llama.cpp, vLLM, Ollama).")
@click.option("--api-key", envvar="FABSTIR_BACKEND_API_KEY", default=None, help="Bearer token of the server.")
@click.option("--model", "models", multiple=True, help="ID or ID=SERVER_NAME served (openai backend).")
@click.option("--price", "prices", multiple=True, help="Price per token (wei): AMOUNT or MODEL=AMOUNT.")
@click.option("--payment-token", default="ETH", show_default=True)
@click.option("--max-concurrent-jobs", type=int, default=2, show_default=True)
@click.option("--max-queue", type=int, default=4, show_default=True)
@click.option("--max-tokens", type=int, default=2048, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="llama.cpp threads (builtin).")
@click.option("--token-delay", type=float, default=0.0, help="Seconds per token (simulated backend).")
@click.option("--identity", type=click.Path(path_type=Path), default=None, help="Peer key file (kept).")
@click.option("--private-key", envvar="FABSTIR_HOST_PRIVATE_KEY", default=None, help="Payment wallet key.")
@click.option(
    "--no-escrow",
    is_flag=True,
    help="Serve jobs without payment (receipts are still checked); otherwise --rpc-url and --contract.",
)
@click.option("--rpc-url", envvar="FABSTIR_RPC_URL", default=None, help="EVM JSON-RPC URL of the contracts.")
@click.option(
    "--contract",
    "contracts",
    multiple=True,
    help="NAME=ADDRESS: PaymentSessions, HostRegistry, and payment tokens (e.g. USDC=0x...).",
)
@click.option("--chain-id", type=int, default=None, help="Refuse a node serving another chain.")
@click.option(
    "--register-stake", type=int, default=None, help="Register in the HostRegistry with this stake (wei)."
)
@click.option(
    "--settlement",
    type=click.Choice(["per_job", "batched"]),
    default="per_job",
    show_default=True,
    help="When a session carrying several jobs is settled: after each job, or once when it closes.",
)
@click.option(
    "--session-idle-timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Close a session kept open for more jobs after this many idle seconds (the rest is refunded).",
)
@click.option("--ping-interval", type=float, default=10.0, show_default=True, help="Seconds between pings.")
@click.option(
    "--ping-timeout", type=float, default=5.0, show_default=True, help="A peer silent this long is dropped."
)
@click.option(
    "--idle-connection-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Close a connection that carried no stream this long (the DHT redials when it needs it).",
)
@click.option(
    "--record-refresh",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between puts of the capability record in the DHT (each a DHT walk).",
)
@click.option(
    "--record-ttl",
    type=float,
    default=300.0,
    show_default=True,
    help="Lifetime of the capability record (longer than --record-refresh).",
)
@click.option(
    "--provider-refresh",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds between re-announcements of the provider records (service and model keys).",
)
@click.option(
    "--status-interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between status lines (load, jobs, tokens); 0 turns them off.",
)
@click.option("--ready-file", type=click.Path(path_type=Path), default=None, hidden=True)
@_fault_options
@_run
async def host_run(
    state: _State,
    listen: tuple[str, ...],
    announce: tuple[str, ...],
    bootstrap_nodes: tuple[str, ...],
    backend: str,
    backend_url: str | None,
    api_key: str | None,
    models: tuple[str, ...],
    prices: tuple[str, ...],
    payment_token: str,
    max_concurrent_jobs: int,
    max_queue: int,
    max_tokens: int,
    threads: int,
    token_delay: float,
    identity: Path | None,
    private_key: str | None,
    no_escrow: bool,
    rpc_url: str | None,
    contracts: tuple[str, ...],
    chain_id: int | None,
    register_stake: int | None,
    settlement: str,
    session_idle_timeout: float,
    ping_interval: float,
    ping_timeout: float,
    idle_connection_timeout: float,
    record_refresh: float,
    record_ttl: float,
    provider_refresh: float,
    status_interval: float,
    ready_file: Path | None,
    fault_kill_at_token: int | None,
    fault_stop_at_token: int | None,
    fault_drop_at_token: int | None,
    fault_error_at_token: int | None,
    fault_first_token_delay: float | None,
    fault_overclaim_tokens: int | None,
    fault_serve_model: str | None,
    fault_reject: str | None,
) -> None:
    """Serve jobs until SIGTERM / Ctrl-C; jobs in flight end cleanly first."""
    if not status_interval >= 0:
        raise ConfigurationError("--status-interval must be a non-negative number of seconds")
    default_price, per_model = _parse_prices(prices)
    extra: dict[str, Any] = {"default_price": default_price} if default_price is not None else {}
    options = HostServiceOptions(
        listen_addrs=listen,
        announce_addrs=announce,
        bootstrap=bootstrap_nodes,
        backend=backend,  # type: ignore[arg-type]  # click.Choice checked it
        backend_url=backend_url,
        api_key=api_key,
        model_map=_parse_models(models),
        threads=threads,
        token_delay=token_delay,
        prices=per_model,
        payment_token=payment_token,
        max_concurrent_jobs=max_concurrent_jobs,
        max_queue=max_queue,
        max_tokens=max_tokens,
        escrow=not no_escrow,
        rpc_url=rpc_url,
        contracts=_parse_contracts(contracts),
        chain_id=chain_id,
        register_stake=register_stake,
        identity_path=identity,
        private_key=private_key,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        idle_connection_timeout=idle_connection_timeout,
        record_refresh=record_refresh,
        record_ttl=record_ttl,
        provider_refresh=provider_refresh,
        settlement=settlement,
        session_idle_timeout=session_idle_timeout,
        faults=_host_faults(
            kill_at_token=fault_kill_at_token,
            stop_at_token=fault_stop_at_token,
            drop_at_token=fault_drop_at_token,
            error_at_token=fault_error_at_token,
            first_token_delay=fault_first_token_delay,
            overclaim_tokens=fault_overclaim_tokens,
            serve_model=fault_serve_model,
            reject=fault_reject,
        ),
        **extra,
    )
    async with HostService(options, process_fault=_signal_self) as service:
        _announce(state, ready_file, service.describe(), "host serving")
        if not state.json:
            for model, price in service.config.prices.items():
                state.out.print(f"  {model}: {dict(price)} per token")
        reporter = (
            asyncio.create_task(_report_status(state, service, status_interval)) if status_interval else None
        )
        try:
            await _until_stopped()
        finally:
            if reporter is not None:
                reporter.cancel()
        if not state.json:
            state.out.print("stopping: finishing jobs in flight…")


@host.command("register")
@click.option("--rpc-url", envvar="FABSTIR_RPC_URL", required=True, help="EVM JSON-RPC URL of the contracts.")
@click.option(
    "--contract", "contracts", multiple=True, help="NAME=ADDRESS: PaymentSessions and HostRegistry."
)
@click.option("--private-key", envvar="FABSTIR_HOST_PRIVATE_KEY", default=None, help="The host's wallet key.")
@click.option("--identity", type=click.Path(path_type=Path), required=True, help="The host's peer key file.")
@click.option("--model", "models", multiple=True, required=True, help="A model id served (repeat).")
@click.option("--price", "prices", multiple=True, help="Price per token (wei): AMOUNT or MODEL=AMOUNT.")
@click.option(
    "--stake", type=int, default=0, show_default=True, help="Stake in wei (the registry's minimum)."
)
@_run
async def host_register(
    state: _State,
    rpc_url: str,
    contracts: tuple[str, ...],
    private_key: str | None,
    identity: Path,
    models: tuple[str, ...],
    prices: tuple[str, ...],
    stake: int,
) -> None:
    """Register the host (its wallet, peer id, models and prices) in the HostRegistry with a stake, or
    update the registration if there is one."""
    from .._config import ChainConfig
    from ..chain._web3 import Web3Ledger
    from ..host._service import load_identity

    if private_key is None:
        raise ConfigurationError(
            "the host's wallet key is needed (--private-key or FABSTIR_HOST_PRIVATE_KEY)"
        )
    default_price, per_model = _parse_prices(prices)
    unknown = sorted(set(per_model) - set(models))
    if unknown:
        raise ConfigurationError(f"a price is given for model(s) not registered: {', '.join(unknown)}")
    price_list = tuple(per_model.get(m, default_price or 0) for m in models)
    chain_config = ChainConfig(
        rpc_url=rpc_url, contracts=_parse_contracts(contracts), private_key=private_key
    )
    from eth_account import Account

    account = Account.from_key(private_key)
    peer_id = load_identity(identity).peer_id
    async with await Web3Ledger.from_config(chain_config) as ledger:
        current = await ledger.get_host(account.address)
        if current is not None and current.active:
            registration = await ledger.update_host(
                account, peer_id=peer_id, models=models, prices=price_list
            )
            action = "updated"
        else:
            registration = await ledger.register_host(
                account, peer_id=peer_id, models=models, stake=stake, prices=price_list
            )
            action = "registered"
    result = {
        "action": action,
        "address": registration.address,
        "peer_id": registration.peer_id,
        "models": list(registration.models),
        "stake": registration.stake,
    }
    if state.json:
        click.echo(json.dumps(result))
    else:
        state.out.print(
            f"[bold green]{action}[/] {registration.address} as {registration.peer_id} "
            f"({', '.join(registration.models)}; stake {registration.stake} wei)"
        )


async def _report_status(state: _State, service: HostService, interval: float) -> None:
    """A status line every ``interval`` seconds: the node's health and counters (JSON with --json)."""
    while True:
        await asyncio.sleep(interval)
        node = service.node
        if node is None:
            return
        m = node.metrics()
        if state.json:
            click.echo(json.dumps({"status": dict(node.health()), "metrics": dataclasses.asdict(m)}))
        else:
            state.out.print(
                f"[dim]{time.strftime('%H:%M:%S')}[/] load {m.active}/{service.config.max_concurrent_jobs} "
                f"queued {m.queued} · jobs {m.jobs_completed} done, {m.jobs_failed} failed, "
                f"{m.jobs_cancelled} cancelled · {m.tokens_served} tokens · {m.bad_clients} bad clients"
            )


# ---------------------------------------------------------------------------------------------- bootstrap
@cli.command()
@click.option("--listen", multiple=True, default=["/ip4/127.0.0.1/tcp/0"], show_default=True)
@_announce_option
@click.option("--bootstrap", "bootstrap_nodes", multiple=True, help="Other bootstrap peers (repeat).")
@click.option("--identity", type=click.Path(path_type=Path), default=None, help="Peer key file (kept).")
@click.option("--ready-file", type=click.Path(path_type=Path), default=None, hidden=True)
@_run
async def bootstrap(
    state: _State,
    listen: tuple[str, ...],
    announce: tuple[str, ...],
    bootstrap_nodes: tuple[str, ...],
    identity: Path | None,
    ready_file: Path | None,
) -> None:
    """Run a bootstrap peer (a DHT server that hosts and clients start from) until SIGTERM / Ctrl-C."""
    peer_node = BootstrapPeer(
        listen_addrs=listen, announce_addrs=announce, identity_path=identity, bootstrap=bootstrap_nodes
    )
    async with peer_node as peer:
        _announce(state, ready_file, peer.describe(), "bootstrap peer")
        await _until_stopped()


# ---------------------------------------------------------------------------------------------- chain
@cli.group()
def chain() -> None:
    """A local chain for devnets and tests."""


@chain.command("serve")
@click.option("--port", type=int, default=0, show_default=True, help="Port on 127.0.0.1 (0: any free one).")
@click.option("--ready-file", type=click.Path(path_type=Path), default=None, hidden=True)
@_run
async def chain_serve(state: _State, port: int, ready_file: Path | None) -> None:
    """Serve the embedded EVM on 127.0.0.1 with the contracts deployed and test accounts funded (well-known
    test keys: never send real money to them), until SIGTERM / Ctrl-C."""
    from ..devnet._chain import start_devnet_chain

    node, info = await start_devnet_chain(port=port)
    try:
        if ready_file is not None:
            write_json_atomically(ready_file, info)
        if state.json:
            click.echo(json.dumps({k: v for k, v in info.items() if k != "keys"}))
        else:
            state.out.print(f"[bold green]chain {info['chain_id']}[/] serving on {info['rpc_url']}")
            for name, address in info["contracts"].items():
                state.out.print(f"  {name}: {address}")
        await _until_stopped()
    finally:
        node.stop()


# ---------------------------------------------------------------------------------------------- devnet
@cli.group()
def devnet() -> None:
    """A marketplace on this machine: a chain with the contracts, a bootstrap peer, and hosts running the
    built-in model."""


def _dir_option(fn: Any) -> Any:
    return click.option(
        "--dir",
        "directory",
        type=click.Path(path_type=Path),
        default=None,
        help="Devnet directory (default: $FABSTIR_DEVNET_DIR or ~/.fabstir/devnet).",
    )(fn)


@devnet.command("up")
@_dir_option
@click.option("--hosts", type=int, default=3, show_default=True)
@click.option("--backend", type=click.Choice(["builtin", "simulated"]), default="builtin", show_default=True)
@click.option("--base-price", type=int, default=1_000_000_000, show_default=True, help="wei per token")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--no-escrow", is_flag=True, help="No chain: jobs run without payment.")
@_run
async def devnet_up(
    state: _State,
    directory: Path | None,
    hosts: int,
    backend: str,
    base_price: int,
    threads: int,
    no_escrow: bool,
) -> None:
    """Start a devnet and leave it running (stop it with 'fabstir devnet down')."""
    started = time.monotonic()
    options = DevnetOptions(
        hosts=hosts, backend=backend, base_price=base_price, threads=threads, escrow=not no_escrow
    )
    runner = Devnet(directory, options)
    if not state.json:
        with state.err.status(f"starting a bootstrap peer and {hosts} hosts ({backend} backend)…"):
            info = await runner.up()
    else:
        info = await runner.up()
    if state.json:
        click.echo(json.dumps(info.as_json()))
        return
    state.out.print(f"[bold green]devnet up[/] in {time.monotonic() - started:.1f} s: {info.directory}")
    _print_devnet(state, info, {p.name: True for p in info.processes})


def _print_devnet(state: _State, info: Any, alive: dict[str, bool]) -> None:
    table = Table("name", "pid", "state", "peer id", "models", "price (gwei/token)")
    for p in info.processes:
        prices = ", ".join(f"{price / 1e9:g}" for _, price in p.prices) or "-"
        table.add_row(
            p.name,
            str(p.pid),
            "[green]running[/]" if alive.get(p.name) else "[red]stopped[/]",
            p.peer_id[:16] + "…",
            ", ".join(p.models) or "-",
            prices,
        )
    state.out.print(table)
    state.out.print(f"bootstrap: {' '.join(info.bootstrap_nodes)}")
    if info.escrow:
        state.out.print(f"chain {info.chain_id}: {info.rpc_url}")
        for name, address in info.contracts:
            state.out.print(f"  {name}: {address}")
    else:
        state.out.print("escrow: off (jobs run without payment)")


@devnet.command("down")
@_dir_option
@_run
async def devnet_down(state: _State, directory: Path | None) -> None:
    """Stop the devnet (hosts finish their jobs first) and remove its file."""
    info, killed = await stop_devnet(directory)
    if state.json:
        click.echo(json.dumps({"stopped": [p.name for p in info.processes], "killed": killed}))
        return
    state.out.print(f"[bold]devnet down[/]: {len(info.processes)} processes stopped in {info.directory}")
    if killed:
        state.out.print(f"[yellow]had to kill:[/] {', '.join(killed)}")


@devnet.command("status")
@_dir_option
@_run
async def devnet_status_command(state: _State, directory: Path | None) -> None:
    """Show the devnet's processes and whether they run (exit 3 if there is no devnet)."""
    info, alive = devnet_status(directory)
    if state.json:
        click.echo(json.dumps({**info.as_json(), "running": alive}))
        return
    state.out.print(f"devnet in {info.directory or default_devnet_dir()}")
    _print_devnet(state, info, alive)
