"""Error recovery, with hosts scripted to fail: failover mid-stream, who is paid what, the recovery
report, and the job journal a restarted client reads.

The mock market here has four hosts. Three misbehave (``MockHostSpec`` faults) and are the cheapest, so
with the "price" selection strategy the job meets them first:

* ``erring``  sends an error frame after 4 tokens   (error_at_token)
* ``flaky``   resets its stream after 6 tokens       (drop_at_token)
* ``frozen``  stops sending after 5 tokens but keeps the connection (hang_at_token): the SDK gives up on
  it after the inter-token timeout
* ``steady``  works, and finishes the job.

The stream the application reads goes on through all of it, without a token lost or repeated; each
host is paid from its own escrow session for exactly the tokens it delivered. The journal (a SQLite
file in a temporary directory) then lets a second SDK — a "restarted" client — find the job again.

Run it with::

    python examples/recovery.py
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from fabstir import (
    Event,
    EventName,
    FabstirSDK,
    MockConfig,
    MockHostSpec,
    MockMarketplace,
    TimeoutConfig,
)

MODEL = "llama-3.2-1b-instruct"
MAX_TOKENS = 40

MARKET = MockConfig(
    seed=5,
    hosts=(
        MockHostSpec(name="erring", price_per_token=1_000_000_000, error_at_token=4),
        MockHostSpec(name="flaky", price_per_token=2_000_000_000, drop_at_token=6),
        MockHostSpec(name="frozen", price_per_token=3_000_000_000, hang_at_token=5),
        MockHostSpec(name="steady", price_per_token=4_000_000_000),
    ),
)


def gwei(wei: int) -> str:
    return f"{wei / 1e9:g} gwei"


def make_sdk(market: MockMarketplace, journal: Path) -> FabstirSDK:
    """A client of ``market`` writing its jobs to ``journal``. A market built from the same MockConfig
    (the same seed) has the same hosts and gives the client the same key: a restarted client."""
    return FabstirSDK(
        mock=MARKET,
        marketplace=market,  # shared, so that this script can name the hosts by their peer ids
        selection_strategy="price",  # cheapest first: the faulty hosts are tried before the steady one
        # A frozen host is given up on after 0.3 s without a token (the default, 30 s, suits real models).
        timeouts=TimeoutConfig(inter_token=0.3),
        # Three failovers per job (default 2); the journal keeps every job for a restarted client.
        recovery={"max_failovers": 3, "journal_path": str(journal)},
    )


async def main() -> None:
    # The mock hosts run in this process and log their scripted faults as warnings; this script shows
    # what the client sees, so it keeps them quiet.
    logging.getLogger("fabstir.host").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="fabstir-recovery-") as tmp:
        journal = Path(tmp) / "jobs.sqlite3"

        async with MockMarketplace(MARKET) as market, make_sdk(market, journal) as sdk:
            # Host names by peer id and by payment address, to print something readable.
            names = {host.peer_id: host.spec.name for host in market.hosts}
            names |= {host.account.address: host.spec.name for host in market.hosts}

            def name(who: str | None) -> str:
                return names.get(who or "", str(who))

            def on_failover(event: Event) -> None:
                d = event.data
                # `delivered` counts every token the job has so far, from all hosts before.
                print(
                    f"\n  [job:failover] {name(d['from_node'])} failed ({d['code']}) with {d['delivered']} "
                    f"tokens delivered; {name(d['to_node'])} continues from there"
                )

            sdk.on(EventName.JOB_FAILOVER, on_failover)

            handle = await sdk.submit_job(
                prompt="tell me about failover", model=MODEL, max_tokens=MAX_TOKENS, stream=True
            )
            assert handle.stream is not None
            indices: list[int] = []
            print("streaming: ", end="")
            async with handle.stream as stream:
                async for token in stream:
                    indices.append(token.index)
                    print(token.text, end="", flush=True)
            print()

            details = await sdk.wait_for_job_completion(handle.job_id)
            print(f"\nstatus {details.status}, finished by {name(details.host)}")
            print(f"token indices contiguous (0..{len(indices) - 1}): {indices == list(range(len(indices)))}")

            # Payments: one leg per host, the failed ones first; approve_job_payment waits for every
            # host's settlement. A host is paid by the client's signed receipts it holds when it settles:
            # erring and frozen got a receipt for each of their tokens; flaky reset its stream before a
            # receipt for its tokens reached it, so it had nothing to claim and its deposit came back whole.
            payment = await sdk.approve_job_payment(handle.job_id)
            print("\npayment legs:")
            for leg in payment.legs:
                print(
                    f"  {name(leg.host_address):<7} {leg.acknowledged_tokens:2d} tokens × "
                    f"{gwei(leg.price_per_token)}: settled {gwei(leg.settled_amount)}, "
                    f"refunded {gwei(leg.refunded_amount)} of {gwei(leg.deposit)}  [{leg.status}]"
                )
            cost = await sdk.calculate_actual_cost(handle.job_id)
            print(
                f"total: {cost.tokens} tokens, {gwei(cost.total)} (host {gwei(cost.host)}, "
                f"treasury {gwei(cost.treasury)})"
            )

            # The recovery report: what failed, how, and what the SDK did about it.
            report = sdk.get_error_recovery_report()
            print(
                f"\nrecovery report: {report['failovers']} failovers, {len(report['failures'])} failed jobs"
            )
            for f in report["failover_details"]:
                print(
                    f"  {name(f['from_node'])} → {name(f['to_node'])} "
                    f"after {f['delivered_by_failed_host']} tokens ({f['code']})"
                )
            for h in report["hosts"]:
                print(f"  {name(h['peer_id'])}: reliability {h['reliability']:.2f}")
            job_id = handle.job_id

        # A "restarted" client: a new SDK with the same journal finds the job from the file.
        async with MockMarketplace(MARKET) as market, make_sdk(market, journal) as restarted:
            info = await restarted.get_job_recovery_info(job_id)
            print(
                f"\nfrom the journal: job {info.job_id} {info.status}, {info.tokens_delivered} tokens, "
                f"can resume: {info.can_resume}, read from journal: {info.from_journal}"
            )
            print(f"  same text as streamed: {info.text == details.result}")
            for session in info.sessions:
                print(
                    f"  session {session.session_id[:12]}…  deposit {gwei(session.deposit)}, "
                    f"signed {gwei(session.signed_amount)}, settled {gwei(session.settled)}, "
                    f"closed {session.closed}"
                )


if __name__ == "__main__":
    asyncio.run(main())
