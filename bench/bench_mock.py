"""Mock-mode benchmarks: the cost of the SDK's own machinery (codec, state machine, receipts, events,
escrow) with no network and no model in the way.

  (a) one job, submit → last token, streaming 200 tokens (repeated; p50 / p95);
  (b) throughput: 100 concurrent jobs of 32 tokens each, jobs per second.

Run:  .venv/bin/python bench/bench_mock.py  [--quick]
Writes bench/results/mock.json and prints its Markdown table (``render``; bench/report.py puts it into
docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _procs import machine_info

from fabstir import FabstirSDK, JobStatus, MockConfig, MockHostSpec, SDKConfig

MODEL = "llama-3.2-1b-instruct"
# A prompt whose simulated completion (seed 0) runs past 200 tokens, so that max_tokens=200 is reached.
PROMPT_200 = "Write a long story, part 2."
HOSTS = 3
CONCURRENT_TOKENS = 32  # max_tokens of each concurrent job


def _hosts(slots: int) -> tuple[MockHostSpec, ...]:
    return tuple(
        MockHostSpec(name=f"bench-{i}", price_per_token=1_000_000_000 * (i + 1), max_concurrent_jobs=slots)
        for i in range(HOSTS)
    )


def _config(slots: int = 4) -> SDKConfig:
    return SDKConfig(mode="mock", mock=MockConfig(seed=0, hosts=_hosts(slots)))


async def bench_single(repeats: int) -> dict[str, Any]:
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0
    async with FabstirSDK(_config()) as sdk:
        for _ in range(repeats):
            started = time.perf_counter()
            handle = await sdk.submit_job(prompt=PROMPT_200, model=MODEL, max_tokens=200, stream=True)
            assert handle.stream is not None
            first: float | None = None
            count = 0
            async for _token in handle.stream:
                if first is None:
                    first = time.perf_counter() - started
                count += 1
            latencies.append(time.perf_counter() - started)
            ttfts.append(first or 0.0)
            tokens = count
            await sdk.wait_for_job_completion(handle.job_id)
    latencies.sort()
    return {
        "tokens_per_job": tokens,
        "repeats": repeats,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1000,
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "tokens_per_second": tokens / statistics.median(latencies),
    }


async def bench_concurrent(jobs: int) -> dict[str, Any]:
    async with FabstirSDK(_config(slots=jobs)) as sdk:
        started = time.perf_counter()
        handles = [
            await sdk.submit_job(prompt=f"question {i}", model=MODEL, max_tokens=CONCURRENT_TOKENS)
            for i in range(jobs)
        ]
        await asyncio.gather(*(sdk.wait_for_job_completion(h.job_id) for h in handles))
        elapsed = time.perf_counter() - started
        completed = [await sdk.get_job_status(h.job_id) for h in handles].count(JobStatus.COMPLETED)
    return {
        "jobs": jobs,
        "tokens_per_job": CONCURRENT_TOKENS,
        "hosts": HOSTS,
        "completed": completed,
        "seconds": elapsed,
        "jobs_per_second": jobs / elapsed,
    }


def render(result: dict[str, Any]) -> str:
    """The Markdown table(s) of a results file (docs/BENCHMARKS.md is regenerated from it by
    bench/report.py)."""
    single = result["single_job_200_tokens"]
    concurrent = result["concurrent_jobs"]
    # results files written before these two keys existed ran with the constants above
    tokens = concurrent.get("tokens_per_job", CONCURRENT_TOKENS)
    hosts = concurrent.get("hosts", HOSTS)
    return "\n".join(
        [
            "| benchmark | result |",
            "|---|---|",
            f"| one job, submit → last of {single['tokens_per_job']} tokens ({single['repeats']} runs) | "
            f"p50 {single['p50_ms']:.1f} ms, p95 {single['p95_ms']:.1f} ms, "
            f"first token p50 {single['ttft_p50_ms']:.1f} ms, "
            f"≈ {round(single['tokens_per_second'], -2):,.0f} tokens/s |",
            f"| {concurrent['jobs']} concurrent jobs × {tokens} tokens ({hosts} hosts) | "
            f"{concurrent['seconds']:.2f} s, ≈ {concurrent['jobs_per_second']:,.0f} jobs/s |",
        ]
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    single = await bench_single(5 if args.quick else 30)
    concurrent = await bench_concurrent(20 if args.quick else 100)
    result = {
        "machine": machine_info(),
        "single_job_200_tokens": single,
        "concurrent_jobs": concurrent,
        "command": "python bench/bench_mock.py",
    }
    out = Path(__file__).parent / "results" / "mock.json"
    if not args.quick:
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))


if __name__ == "__main__":
    asyncio.run(main())
