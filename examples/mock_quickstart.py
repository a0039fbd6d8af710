"""Mock mode from start to finish: connect, discover hosts, submit a job, stream its tokens, read the
result and what it cost.

Mock mode (the default) runs the whole marketplace in this process — three simulated hosts, an
in-memory ledger with the contracts' escrow rules, the real job protocol — so this needs no network,
no chain and no model, and it prints the same thing on every run (the market is seeded).

Run it with::

    python examples/mock_quickstart.py
"""

from __future__ import annotations

import asyncio

from fabstir import FabstirSDK, MockConfig

MODEL = "llama-3.2-1b-instruct"  # one of the mock hosts' models
PROMPT = "Why is the sky blue?"


def gwei(wei: int) -> str:
    return f"{wei / 1e9:g} gwei"


async def main() -> None:
    # A fixed seed makes the market — peer ids, accounts, the generated text — the same on every run.
    async with FabstirSDK(mock=MockConfig(seed=7)) as sdk:
        print(f"connected in {sdk.mode} mode as {sdk.get_address()}")

        # Discovery: the live hosts serving the model, best first by the selection strategy
        # ("reliability" by default: reliability first, then price and latency).
        nodes = await sdk.discover_nodes(model=MODEL)
        print(f"\n{len(nodes)} hosts serve {MODEL}:")
        for node in nodes:
            price = node.capabilities.price_for(MODEL)  # in wei per token (the native token)
            print(f"  {node.peer_id[:20]}…  {gwei(price or 0)}/token  reliability {node.reliability:.2f}")

        # An estimate before submitting (the TypeScript SDK's: a quarter of the prompt's characters plus
        # 80 % of max_tokens, at the cheapest live host's price).
        estimate = await sdk.estimate_job_cost(prompt=PROMPT, model=MODEL, max_tokens=48)
        print(f"\nestimate: {estimate.estimated_tokens} tokens, {gwei(estimate.estimated_cost)}")

        # submit_job returns at once; the job (negotiation, escrow, streaming, settlement) runs in the
        # background. With stream=True the handle carries a stream that owns the job: leaving its
        # `async with` early would cancel the job and refund what was not delivered.
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=48, stream=True)
        assert handle.stream is not None
        print(f"\njob {handle.job_id}: ", end="")
        async with handle.stream as stream:
            async for token in stream:
                print(token.text, end="", flush=True)
        print()

        details = await sdk.wait_for_job_completion(handle.job_id)
        print(f"\nstatus: {details.status}  host: {details.host and details.host[:20]}…")
        print(
            f"tokens: {details.tokens_generated}  result equals the streamed text: "
            f"{details.result == stream.text}"
        )

        # The bill: tokens the client signed receipts for × the host's price, split host / treasury;
        # the rest of the deposit went back to the client. approve_job_payment waits for the settlement.
        payment = await sdk.approve_job_payment(handle.job_id)
        session = str(payment.session_id)[:18]
        print(f"payment: {payment.status}, deposit {gwei(payment.deposit)} in session {session}…")
        cost = await sdk.calculate_actual_cost(handle.job_id)
        print(
            f"cost: {cost.tokens} tokens × {gwei(cost.price_per_token)} = {gwei(cost.total)} "
            f"(host {gwei(cost.host)}, treasury {gwei(cost.treasury)}), refunded {gwei(cost.refunded)}"
        )


if __name__ == "__main__":
    asyncio.run(main())
