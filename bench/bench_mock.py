"""Mock-mode benchmarks: the cost of the SDK's own machinery (codec, state machine, receipts, events,
escrow) with no network and no model in the way.

  (a) one job, submit → last token, streaming 200 tokens (repeated; p50 / p95);
  (b) throughput: 100 concurrent jobs of 32 tokens each, jobs per second.

Run:  .venv/bin/python bench/bench_mock.py  [--quick]
Writes bench/results/mock.json and prints a Markdown table (pasted into docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from fabstir import FabstirSDK, JobStatus, MockConfig, MockHostSpec, SDKConfig

MODEL = "llama-3.2-1b-instruct"
# A prompt whose simulated completion (seed 0) runs past 200 tokens, so that max_tokens=200 is reached.
PROMPT_200 = "Write a long story, part 2."


def _hosts(slots: int) -> tuple[MockHostSpec, ...]:
    return tuple(
        MockHostSpec(name=f"bench-{i}", price_per_token=1_000_000_000 * (i + 1), max_concurrent_jobs=slots)
        for i in range(3)
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
            await sdk.submit_job(prompt=f"question {i}", model=MODEL, max_tokens=32) for i in range(jobs)
        ]
        await asyncio.gather(*(sdk.wait_for_job_completion(h.job_id) for h in handles))
        elapsed = time.perf_counter() - started
        completed = [await sdk.get_job_status(h.job_id) for h in handles].count(JobStatus.COMPLETED)
    return {"jobs": jobs, "completed": completed, "seconds": elapsed, "jobs_per_second": jobs / elapsed}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    single = await bench_single(5 if args.quick else 30)
    concurrent = await bench_concurrent(20 if args.quick else 100)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "single_job_200_tokens": single,
        "concurrent_jobs": concurrent,
        "command": "python bench/bench_mock.py",
    }
    out = Path(__file__).parent / "results" / "mock.json"
    if not args.quick:
        out.write_text(json.dumps(result, indent=2) + "\n")
    print("| benchmark | result |")
    print("|---|---|")
    print(
        f"| one job, submit → last of {single['tokens_per_job']} tokens | p50 {single['p50_ms']:.1f} ms, "
        f"p95 {single['p95_ms']:.1f} ms, first token p50 {single['ttft_p50_ms']:.1f} ms, "
        f"{single['tokens_per_second']:.0f} tokens/s |"
    )
    print(
        f"| {concurrent['jobs']} concurrent jobs × 32 tokens | {concurrent['seconds']:.2f} s, "
        f"{concurrent['jobs_per_second']:.1f} jobs/s |"
    )


if __name__ == "__main__":
    asyncio.run(main())
