"""The ``fabstir`` command. The only layer that prints or configures logging.

Exit codes: 0 success · 1 unexpected error · 2 usage · 3 configuration · 4 no host / discovery /
negotiation failure · 5 transport or host failure · 6 payment · 7 timeout · 8 no such job · 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from .. import (
    ChainTransaction,
    ConfigurationError,
    DiscoveryError,
    Event,
    EventName,
    FabstirError,
    FabstirSDK,
    HostRejectedError,
    JobNotFoundError,
    MockConfig,
    PaymentError,
    RecoveryConfig,
    SDKConfig,
    TimeoutError,
    TransportError,
)
from .._version import __version__
from ..client._journal import JobJournal, JournalEntry

__all__ = ["cli", "main"]

_T = TypeVar("_T")
DEFAULT_MODEL = "llama-3.2-1b-instruct"

EXIT_ERROR, EXIT_CONFIG, EXIT_NO_HOST, EXIT_TRANSPORT, EXIT_PAYMENT, EXIT_TIMEOUT = 1, 3, 4, 5, 6, 7
EXIT_NOT_FOUND = 8


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, ConfigurationError):
        return EXIT_CONFIG
    if isinstance(error, DiscoveryError | HostRejectedError):
        return EXIT_NO_HOST
    if isinstance(error, TimeoutError):
        return EXIT_TIMEOUT
    if isinstance(error, JobNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, PaymentError):
        return EXIT_PAYMENT
    if isinstance(error, TransportError | FabstirError) and error.retryable:
        return EXIT_TRANSPORT
    return EXIT_ERROR


class _State:
    def __init__(self, json_output: bool, verbose: bool) -> None:
        self.json = json_output
        self.verbose = verbose
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self.bootstrap: tuple[str, ...] = ()  # --bootstrap: a network other than the devnet


def _run(coro_fn: Callable[..., Coroutine[Any, Any, _T]]) -> Callable[..., None]:
    """Runs an async command; turns errors into one clear line and a meaningful exit code."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        state: _State = click.get_current_context().find_object(_State) or _State(False, False)
        try:
            asyncio.run(coro_fn(state, *args, **kwargs))
        except KeyboardInterrupt:
            state.err.print("[yellow]interrupted[/]")
            sys.exit(130)
        except FabstirError as exc:
            if state.verbose:
                state.err.print_exception()
            if state.json:
                click.echo(json.dumps({"error": {"message": exc.message, "code": exc.code.value}}))
            else:
                state.err.print(f"[bold red]error:[/] {exc.message}", markup=True, soft_wrap=True)
            sys.exit(exit_code_for(exc))
        except Exception as exc:
            if state.verbose:
                state.err.print_exception()
            state.err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {exc}", soft_wrap=True)
            sys.exit(EXIT_ERROR)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "json_output", is_flag=True, help="Machine-readable JSON output.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(__version__, prog_name="fabstir")
@click.pass_context
def cli(ctx: click.Context, json_output: bool, verbose: bool) -> None:
    """fabstir: a peer-to-peer LLM inference marketplace."""
    ctx.obj = _State(json_output, verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _remember_bootstrap(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> None:
    state = ctx.find_object(_State)
    if state is not None:
        state.bootstrap = value


def _mock_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--mock`` (the in-process marketplace) and ``--bootstrap`` (another network than the devnet)."""
    fn = click.option(
        "--bootstrap",
        multiple=True,
        expose_value=False,
        callback=_remember_bootstrap,
        help="Bootstrap peer multiaddr of the network to use instead of the devnet (repeat; no escrow).",
    )(fn)
    return click.option(
        "--mock", is_flag=True, help="Use the in-process simulated marketplace (no network, no chain)."
    )(fn)


def _bootstrap() -> tuple[str, ...]:
    state = click.get_current_context().find_object(_State)
    return state.bootstrap if state is not None else ()


def _seed_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--seed", type=int, default=0, show_default=True, help="Mock-mode seed.")(fn)


#: Where ``fabstir run`` records its jobs for ``fabstir job status`` (``--journal`` / $FABSTIR_JOURNAL).
DEFAULT_JOURNAL = Path("~/.fabstir/jobs.sqlite")
#: How long the CLI's journal keeps a finished job whose payment sessions are closed: 30 days.
JOURNAL_TTL = 30 * 24 * 3600.0


def _journal_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--journal",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="FABSTIR_JOURNAL",
        default=DEFAULT_JOURNAL,
        show_default=True,
        help="The job journal (SQLite file) jobs are recorded in; also $FABSTIR_JOURNAL.",
    )(fn)


def _open_sdk(
    mock: bool,
    seed: int,
    *,
    pacing: bool = False,
    devnet_dir: Path | None = None,
    journal: Path | None = None,
) -> FabstirSDK:
    """Mock mode when asked; production mode on the network of ``--bootstrap`` if given (without
    escrow), else on the running devnet. Jobs are recorded in ``journal`` if given."""
    recovery = RecoveryConfig(
        journal_path=str(journal.expanduser()) if journal is not None else None, recovery_data_ttl=JOURNAL_TTL
    )
    if mock:
        return FabstirSDK(
            SDKConfig(mode="mock", mock=MockConfig(seed=seed, realistic_pacing=pacing), recovery=recovery)
        )
    bootstrap = _bootstrap()
    if bootstrap:
        return FabstirSDK(
            mode="production", p2p={"bootstrap_nodes": bootstrap}, chain={"escrow": False}, recovery=recovery
        )
    return FabstirSDK.from_devnet(devnet_dir, recovery=recovery)


def _default_model(mock: bool, model: str | None, devnet_dir: Path | None = None) -> str:
    """The model asked for; by default the mock catalogue's first model, or the devnet's first host's."""
    if model is not None:
        return model
    if mock:
        return DEFAULT_MODEL
    if _bootstrap():
        from ..backend import BUILTIN_MODEL_ID

        return str(BUILTIN_MODEL_ID)
    from ..devnet import read_devnet_file

    hosts = read_devnet_file(devnet_dir).hosts
    return hosts[0].models[0] if hosts and hosts[0].models else DEFAULT_MODEL


# ---------------------------------------------------------------------------------------------- models
@cli.command()
@_mock_option
@_seed_option
@_run
async def models(state: _State, mock: bool, seed: int) -> None:
    """List the models offered by live hosts (on the running devnet, or --mock)."""
    async with _open_sdk(mock, seed) as sdk:
        found = await sdk.get_models()
    if state.json:
        click.echo(json.dumps([{"id": m.id, "name": m.name} for m in found]))
        return
    table = Table("model")
    for model in found:
        table.add_row(model.id)
    state.out.print(table)


# ---------------------------------------------------------------------------------------------- nodes
@cli.command()
@_mock_option
@_seed_option
@click.option("--model", default=None, help="Only hosts serving this model.")
@_run
async def nodes(state: _State, mock: bool, seed: int, model: str | None) -> None:
    """List live hosts with their prices, latency and reliability (on the running devnet, or --mock)."""
    async with _open_sdk(mock, seed) as sdk:
        found = await sdk.discover_nodes(model=model)
    if state.json:
        click.echo(
            json.dumps(
                [
                    {
                        "peer_id": n.peer_id,
                        "addresses": list(n.addresses),
                        "models": list(n.capabilities.models),
                        "prices": {m: dict(p) for m, p in n.capabilities.prices.items()},
                        "latency_ms": n.latency_ms,
                        "reliability": round(n.reliability, 4),
                        "load": n.capabilities.current_load,
                        "max_concurrent_jobs": n.capabilities.max_concurrent_jobs,
                    }
                    for n in found
                ]
            )
        )
        return
    table = Table("peer id", "models", "price (gwei/token)", "latency", "reliability", "load")
    for n in found:
        prices = sorted({p.get("ETH", 0) for p in n.capabilities.prices.values()})
        table.add_row(
            n.peer_id[:16] + "…",
            ", ".join(n.capabilities.models),
            ", ".join(f"{p / 1e9:g}" for p in prices),
            f"{n.latency_ms:.0f} ms" if n.latency_ms is not None else "?",
            f"{n.reliability:.2f}",
            f"{n.capabilities.current_load}/{n.capabilities.max_concurrent_jobs}",
        )
    state.out.print(table)


# ---------------------------------------------------------------------------------------------- run
@cli.command()
@click.argument("prompt")
@_mock_option
@_seed_option
@click.option("--model", default=None, help="Default: the devnet's model (the mock catalogue's first).")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@_journal_option
@_run
async def run(
    state: _State,
    prompt: str,
    mock: bool,
    seed: int,
    model: str | None,
    max_tokens: int,
    temperature: float,
    journal: Path,
) -> None:
    """Run PROMPT on the marketplace (the running devnet, or --mock) and stream the answer.

    The job is recorded in the job journal: `fabstir job status ID` shows it later."""
    chosen = _default_model(mock, model)
    async with _open_sdk(mock, seed, journal=journal) as sdk:
        handle = await sdk.submit_job(
            prompt=prompt, model=chosen, max_tokens=max_tokens, temperature=temperature, stream=True
        )
        assert handle.stream is not None
        async with handle.stream as stream:
            async for token in stream:
                if not state.json:
                    click.echo(token.text, nl=False)
                    sys.stdout.flush()
            summary = stream.get_final_summary()
        details = await sdk.approve_job_payment(handle.job_id)
        cost = await sdk.calculate_actual_cost(handle.job_id)
        host = await sdk.get_job_host(handle.job_id)
    if state.json:
        click.echo(
            json.dumps(
                {
                    "job_id": handle.job_id,
                    "host": host,
                    "text": summary.text,
                    "tokens": summary.total_tokens,
                    "finish_reason": summary.finish_reason.value,
                    "cost": {
                        "total": cost.total,
                        "host": cost.host,
                        "treasury": cost.treasury,
                        "refunded": cost.refunded,
                    },
                    "payment_status": details.status.value,
                }
            )
        )
    else:
        click.echo()
        state.err.print(
            f"[dim]job {handle.job_id} · {summary.total_tokens} tokens · {summary.finish_reason.value} · "
            f"cost {cost.total / 1e9:g} gwei · host {str(host)[:16]}…[/]"
        )


# ---------------------------------------------------------------------------------------------- job
@cli.group()
def job() -> None:
    """Jobs run from this machine, as the job journal recorded them."""


@job.command("status")
@click.argument("job_id", type=click.IntRange(min=0))
@_journal_option
@_run
async def job_status(state: _State, job_id: int, journal: Path) -> None:
    """Show job JOB_ID (as `fabstir run` printed it): status, host, tokens, payment sessions, text."""
    entry = await asyncio.to_thread(_read_job, journal, job_id)
    if state.json:
        click.echo(json.dumps(_job_json(entry)))
        return
    table = Table.grid(padding=(0, 2))
    table.add_row("status", entry.status)
    table.add_row("model", str(entry.request.get("model", "?")))
    table.add_row("host", entry.host or "none yet")
    table.add_row("tokens", str(entry.tokens))
    table.add_row("started", _when(entry.created_at))
    table.add_row("updated", _when(entry.updated_at))
    if entry.error:
        table.add_row("error", f"{entry.error} ({entry.error_code})")
    for index, session in enumerate(entry.sessions):
        paid = session.signed_amount - session.base_amount
        table.add_row(
            "session" if index == 0 else "",
            f"{session.session_id[:18]}… host {session.host[:16]}… · {paid / 1e9:g} gwei signed for this job"
            f" · {'closed' if session.closed else 'open'}",
        )
    state.out.print(f"[bold]job {entry.job_id}[/]")
    state.out.print(table)
    if entry.text:
        state.out.print()
        state.out.print(entry.text, markup=False)


def _read_job(journal: Path, job_id: int) -> JournalEntry:
    """The journal's entry of the job; a missing journal is not created, only reported."""
    path = journal.expanduser()
    if not path.is_file():
        raise JobNotFoundError(f"Job {job_id} is not known: there is no job journal at {path}", job_id=job_id)
    with JobJournal(path, ttl=JOURNAL_TTL) as opened:
        entry = opened.get(job_id)
    if entry is None:
        raise JobNotFoundError(f"Job {job_id} is not in the job journal {path}", job_id=job_id)
    return entry


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _job_json(entry: JournalEntry) -> dict[str, Any]:
    return {
        "job_id": entry.job_id,
        "status": entry.status,
        "model": entry.request.get("model"),
        "host": entry.host,
        "tokens": entry.tokens,
        "text": entry.text,
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
        "error": entry.error,
        "error_code": entry.error_code,
        "sessions": [
            {
                "session_id": s.session_id,
                "host": s.host,
                "deposit": str(s.deposit),
                "price_per_token": str(s.price_per_token),
                "signed_for_job": str(s.signed_amount - s.base_amount),
                "settled": str(s.settled),
                "refunded": str(s.refunded),
                "closed": s.closed,
                "token": s.token,
            }
            for s in entry.sessions
        ],
    }


# ---------------------------------------------------------------------------------------------- demo
@cli.command()
@_mock_option
@_seed_option
@click.option("--prompt", default="Explain in two sentences why peer-to-peer inference matters.")
@click.option("--model", default=None, help="Default: the built-in model (the mock catalogue's first).")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--fast", is_flag=True, help="No simulated pacing (mock mode).")
@click.option("--hosts", type=int, default=2, show_default=True, help="Hosts of the throwaway devnet.")
@_run
async def demo(
    state: _State,
    mock: bool,
    seed: int,
    prompt: str,
    model: str | None,
    max_tokens: int,
    fast: bool,
    hosts: int,
) -> None:
    """Run one whole job through a throwaway devnet (real libp2p, real model; or --mock) and show its
    timeline, cost and metrics."""
    timeline: list[dict[str, Any]] = []
    started = time.monotonic()

    def note(line: str, **data: Any) -> None:
        entry = {"t": round(time.monotonic() - started, 4), "event": line, **data}
        timeline.append(entry)
        if not state.json:
            state.out.print(f"[dim]{entry['t']:7.3f}s[/]  {line}")

    first_token_seen = False

    def on_event(event: Event) -> None:
        nonlocal first_token_seen
        d = event.data
        match event.name:
            case EventName.NODES_DISCOVERED:
                note(f"discovered {d['count']} hosts", peers=list(d["peers"]))
            case EventName.NEGOTIATION_OFFER if d.get("accepted"):
                note(f"offer from {str(event.node_id)[:16]}…  {d['price_per_token'] / 1e9:g} gwei/token")
            case EventName.NEGOTIATION_OFFER:
                note(f"reject from {str(event.node_id)[:16]}…  ({d.get('reason')})")
            case EventName.JOB_NEGOTIATED:
                note(f"negotiated with {str(event.node_id)[:16]}…", node_id=event.node_id)
            case EventName.PAYMENT_ESCROWED:
                note(f"escrowed {d['deposit'] / 1e9:g} gwei in session {str(d['session_id'])[:12]}…")
            case EventName.STREAM_START:
                note("first token; streaming:")
            case EventName.PAYMENT_RELEASED:
                note(f"settled: host {d['host_amount'] / 1e9:g} gwei, treasury {d['fee'] / 1e9:g} gwei")
            case EventName.PAYMENT_REFUNDED:
                note(f"refunded {d['amount'] / 1e9:g} gwei to the client")
            case EventName.JOB_FAILED:
                note(f"job failed: {d['error']}")

    if not state.json:
        state.out.rule(f"fabstir demo · {'mock mode · seed ' + str(seed) if mock else 'devnet'}")
        state.out.print(f"[bold]prompt:[/] {prompt}")
    async with contextlib.AsyncExitStack() as stack:
        devnet_dir: Path | None = None
        if not mock:
            from ..devnet import Devnet, DevnetOptions

            devnet_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fabstir-devnet-")))
            note(
                f"starting a throwaway devnet: a chain with the contracts, a bootstrap peer and {hosts} "
                "hosts (built-in model)"
            )
            info = await stack.enter_async_context(Devnet(devnet_dir, DevnetOptions(hosts=hosts)))
            note(f"devnet up: {len(info.hosts)} hosts", hosts=[h.peer_id for h in info.hosts])
        chosen = _default_model(mock, model, devnet_dir)
        await _demo_job(
            state, mock, seed, fast, devnet_dir, prompt, chosen, max_tokens, note, on_event, timeline
        )


async def _settled_transactions(
    sdk: FabstirSDK, job_id: int, patience: float = 5.0
) -> list[ChainTransaction]:
    """The job's session transactions once the host's settlement is among them (the SDK follows the
    chain about once a second), or what is known after ``patience`` seconds."""
    client = (sdk.get_address() or "").lower()
    deadline = time.monotonic() + patience
    while True:
        transactions = await sdk.get_job_transactions(job_id)
        settled = any(tx.sender.lower() != client for tx in transactions)
        if not transactions or settled or time.monotonic() >= deadline:
            return transactions
        await asyncio.sleep(0.2)


async def _demo_job(
    state: _State,
    mock: bool,
    seed: int,
    fast: bool,
    devnet_dir: Path | None,
    prompt: str,
    model: str,
    max_tokens: int,
    note: Callable[..., None],
    on_event: Callable[[Event], None],
    timeline: list[dict[str, Any]],
) -> None:
    async with _open_sdk(mock, seed, pacing=not fast, devnet_dir=devnet_dir) as sdk:
        sdk.on("*", on_event)
        handle = await sdk.submit_job(prompt=prompt, model=model, max_tokens=max_tokens, stream=True)
        assert handle.stream is not None
        async with handle.stream as stream:
            async for token in stream:
                if not state.json:  # the answer, live, between the timeline's lines
                    state.out.print(token.text, end="", style="bold", soft_wrap=True)
            if not state.json:
                state.out.print()
            summary = stream.get_final_summary()
            note(f"stream ended: {summary.total_tokens} tokens ({summary.finish_reason.value})")
            metrics = stream.get_metrics()
        await sdk.approve_job_payment(handle.job_id)
        cost = await sdk.calculate_actual_cost(handle.job_id)
        payment = await sdk.get_payment_details(handle.job_id)
        escrowed = sdk.config.mode == "mock" or sdk.config.chain.escrow
        transactions = await _settled_transactions(sdk, handle.job_id)
        client = sdk.get_address()
        for tx in transactions:
            who = "client" if client is not None and tx.sender.lower() == client.lower() else "host"
            note(
                f"tx {tx.tx_hash[:14]}…  {who} {tx.description}: gas {tx.gas_used:,} "
                f"({tx.gas_cost / 1e9:g} gwei)",
                tx_hash=tx.tx_hash,
                sender=tx.sender,
                gas_used=tx.gas_used,
                gas_wei=tx.gas_cost,
            )
        if not escrowed:
            note(
                f"receipts signed for {payment.acknowledged_tokens} tokens "
                f"({cost.total / 1e9:g} gwei; no escrow: nothing settles)"
            )
    if state.json:
        click.echo(
            json.dumps(
                {
                    "job_id": handle.job_id,
                    "mode": "mock" if mock else "devnet",
                    "escrow": escrowed,
                    "timeline": timeline,
                    "text": summary.text,
                    "finish_reason": summary.finish_reason.value,
                    "cost": {
                        "tokens": cost.tokens,
                        "price_per_token": cost.price_per_token,
                        "total": cost.total,
                        "host": cost.host,
                        "treasury": cost.treasury,
                        "refunded": cost.refunded,
                        "token": cost.payment_token,
                    },
                    "payment_status": payment.status.value,
                    "transactions": [
                        {
                            "description": tx.description,
                            "tx_hash": tx.tx_hash,
                            "sender": tx.sender,
                            "gas_used": tx.gas_used,
                            "gas_cost": tx.gas_cost,
                        }
                        for tx in transactions
                    ],
                    "metrics": {
                        "tokens": metrics.tokens_received,
                        "tokens_per_second": metrics.tokens_per_second,
                        "time_to_first_token": metrics.time_to_first_token,
                        "mean_inter_token_latency": metrics.mean_inter_token_latency,
                    },
                }
            )
        )
        return
    title = "cost breakdown" if escrowed else "cost breakdown (no escrow: receipted, not paid)"
    costs = Table("cost", "gwei", title=title)
    costs.add_row("tokens × price", f"{cost.tokens} × {cost.price_per_token / 1e9:g}")
    costs.add_row("host", f"{cost.host / 1e9:g}")
    costs.add_row(f"treasury ({cost.fee_basis_points / 100:g} %)", f"{cost.treasury / 1e9:g}")
    costs.add_row("total paid" if escrowed else "total receipted", f"{cost.total / 1e9:g}")
    costs.add_row("refunded", f"{cost.refunded / 1e9:g}")
    stats = Table("metric", "value", title="stream metrics")
    stats.add_row("tokens", str(metrics.tokens_received))
    ttft = metrics.time_to_first_token
    stats.add_row("time to first token", f"{ttft * 1000:.1f} ms" if ttft is not None else "-")
    stats.add_row("tokens/s", f"{metrics.tokens_per_second:.1f}")
    itl = metrics.mean_inter_token_latency
    stats.add_row("mean inter-token latency", f"{itl * 1000:.1f} ms" if itl is not None else "-")
    stats.add_row("payment", payment.status.value)
    state.out.print(costs)
    state.out.print(stats)


def main() -> None:
    cli(prog_name="fabstir")
