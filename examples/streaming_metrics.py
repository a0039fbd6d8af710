"""Streaming in detail: live metrics while tokens arrive, pausing a reader, the final summary, and the
events the SDK emits along the way.

Runs in mock mode with realistic pacing (the simulated hosts send tokens at their advertised speed and
latency), so the numbers mean something: time to first token, tokens per second, inter-token latency.
No network, chain or model needed.

Run it with::

    python examples/streaming_metrics.py
"""

from __future__ import annotations

import asyncio
from collections import Counter

from fabstir import Event, EventName, FabstirSDK, MockConfig

MODEL = "llama-3.2-1b-instruct"


async def main() -> None:
    # realistic_pacing: without it mock hosts answer as fast as the event loop allows (good for tests,
    # meaningless for metrics).
    async with FabstirSDK(mock=MockConfig(seed=3, realistic_pacing=True)) as sdk:
        # Count every event by name and keep the job's status changes; "*" subscribes to every event
        # (sdk.on_job_status_change(job_id, cb) follows one job). on() returns an unsubscribe function.
        seen: Counter[str] = Counter()
        statuses: list[str] = []

        def on_event(event: Event) -> None:
            seen[event.name] += 1
            if event.name == EventName.JOB_STATUS:
                statuses.append(str(event.data["status"]))

        stop_counting = sdk.on("*", on_event)

        handle = await sdk.submit_job(
            prompt="Describe a peer-to-peer network in a few words.", model=MODEL, max_tokens=60, stream=True
        )
        assert handle.stream is not None

        async with handle.stream as stream:
            async for token in stream:
                if token.index % 15 == 14:
                    # get_metrics() can be read at any time: it describes what arrived so far.
                    m = stream.get_metrics()
                    ttft = m.time_to_first_token or 0.0
                    print(
                        f"  after {m.tokens_received:3d} tokens: {m.tokens_per_second:5.1f} tokens/s, "
                        f"first token after {ttft * 1000:.0f} ms"
                    )
                if token.index == 29:
                    # Pausing stops handing out tokens; they keep arriving and wait in the buffer. The
                    # reader picks them up at once after resume(), so the stream skips nothing.
                    stream.pause()
                    print(f"  paused at token {stream.position}")
                    await asyncio.sleep(0.2)
                    stream.resume()
                    print("  resumed")

            # Once the iteration ends, the job has ended: the summary says how and what it delivered.
            summary = stream.get_final_summary()
            metrics = stream.get_metrics()

        print(f"\ntext: {summary.text}")
        print(
            f"\nsummary: {summary.total_tokens} tokens in {summary.duration:.2f} s, "
            f"finish reason {summary.finish_reason}"
        )
        itl = metrics.mean_inter_token_latency
        print(
            f"metrics: {metrics.tokens_received} tokens, {metrics.tokens_per_second:.1f} tokens/s, "
            f"mean inter-token latency {itl * 1000 if itl is not None else 0:.1f} ms"
        )

        # A second reader can replay the same job from any index (this one does not own the job).
        replay = sdk.create_response_stream(handle.job_id, resume_from=50)
        tail = "".join([token.text async for token in replay])
        print(f"tokens 50.. replayed: {tail!r}")

        stop_counting()  # events can also be iterated: `async for event in sdk.events("job:completed")`
        print(f"\njob statuses: {' → '.join(statuses)}")
        print("events:")
        for name in (
            EventName.JOB_SUBMITTED,
            EventName.STREAM_START,
            EventName.STREAM_TOKEN,
            EventName.STREAM_END,
            EventName.PAYMENT_ESCROWED,
            EventName.JOB_COMPLETED,
        ):
            print(f"  {name:<18} {seen[name]}")
        print(f"stream:token events: {seen[EventName.STREAM_TOKEN]} (one per token)")


if __name__ == "__main__":
    asyncio.run(main())
