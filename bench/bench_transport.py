"""Transport capacity: how many tokens per second the SDK ↔ host path carries when the model costs nothing.

A host runs in a separate process with the simulated backend at ``token_delay`` 0 (it produces tokens as
fast as the event loop lets it), and the SDK in this process runs jobs against it over libp2p on loopback:

* **1 stream**: one job at a time, back to back;
* **50 streams**: 50 workers, each running jobs back to back (so 50 jobs are always in flight on the one
  libp2p connection; the host takes 64 at once).

Every job streams exactly 256 tokens (prompts picked so that the simulated completion is longer).
Reported: aggregate tokens/s (all tokens delivered / wall time, job set-up included), jobs/s, time to
first token, and the gaps between consecutive tokens as the client's ``async for`` sees them — the p99
per stream (median and worst stream) and over all gaps pooled. Tokens travel in batches (the host flushes
the first token at once, then at most every 25 ms), so most gaps are ~0 and the p99 shows the batch
cadence plus any stall. The same workload runs in mock mode (in-process, same core, in-memory transport)
in the same run, for the ratio production / mock; note that mock hosts flush batches without the 25 ms
pacing (``realistic_pacing`` off), so a single stream's ratio shows mostly that pacing, not libp2p.

Run:  .venv/bin/python bench/bench_transport.py  [--quick]
Writes bench/results/transport.json (not with --quick) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _procs import ProcessGroup, machine_info, percentile, process_cpu_seconds, quiet_libp2p, rss_mb

from fabstir import FabstirSDK, MockConfig, MockHostSpec, SDKConfig
from fabstir.backend import GenerationRequest, SimulatedBackend

MODEL = "llama-3.2-1b-instruct"
TOKENS = 256
CONCURRENT = 50
HOST_SLOTS = 64


def long_prompts(count: int) -> list[str]:
    """Prompts whose simulated completion (backend seed 0, as in both the host and the mock marketplace)
    runs past :data:`TOKENS`, so every job ends at ``max_tokens`` with exactly that many tokens."""
    backend = SimulatedBackend(models=(MODEL,))
    found: list[str] = []
    index = 0
    while len(found) < count:
        prompt = f"Write a long story, part {index}."
        tokens, _ = backend.completion(GenerationRequest(model=MODEL, prompt=prompt, max_tokens=TOKENS))
        if len(tokens) == TOKENS:
            found.append(prompt)
        index += 1
    return found


@dataclass(slots=True)
class Job:
    ttft: float
    total: float
    arrivals: list[float]  # perf_counter of each token as the consumer received it

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


async def one_job(sdk: FabstirSDK, prompt: str) -> Job:
    started = time.perf_counter()
    handle = await sdk.submit_job(prompt=prompt, model=MODEL, max_tokens=TOKENS, stream=True)
    assert handle.stream is not None
    arrivals: list[float] = []
    async with handle.stream as stream:
        async for _token in stream:
            arrivals.append(time.perf_counter())
    await sdk.wait_for_job_completion(handle.job_id)
    if len(arrivals) != TOKENS:
        raise RuntimeError(f"a job streamed {len(arrivals)} tokens, expected {TOKENS}")
    return Job(arrivals[0] - started, arrivals[-1] - started, arrivals)


async def phase(sdk: FabstirSDK, prompts: Sequence[str], workers: int, jobs_each: int) -> dict[str, Any]:
    """``workers`` tasks each running ``jobs_each`` jobs back to back; returns the phase's numbers."""

    async def worker(offset: int) -> list[Job]:
        return [await one_job(sdk, prompts[(offset + j) % len(prompts)]) for j in range(jobs_each)]

    cpu = time.process_time()
    started = time.perf_counter()
    results = await asyncio.gather(*(worker(w) for w in range(workers)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    jobs = [job for batch in results for job in batch]
    per_stream_p99 = [percentile(job.gaps, 0.99) * 1000 for job in jobs]
    pooled = [gap * 1000 for job in jobs for gap in job.gaps]
    tokens = TOKENS * len(jobs)
    return {
        "streams": workers,
        "jobs": len(jobs),
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_second": tokens / elapsed,
        "jobs_per_second": len(jobs) / elapsed,
        "ttft_p50_ms": percentile([j.ttft * 1000 for j in jobs], 0.5),
        "job_p50_ms": percentile([j.total * 1000 for j in jobs], 0.5),
        "per_stream_tokens_per_second_p50": statistics.median(TOKENS / j.total for j in jobs),
        "inter_token_gap_p99_ms_per_stream_median": statistics.median(per_stream_p99),
        "inter_token_gap_p99_ms_worst_stream": max(per_stream_p99),
        "inter_token_gap_p99_ms_pooled": percentile(pooled, 0.99),
        "inter_token_gap_max_ms": max(pooled),
        "client_process_cpu_seconds": cpu,
    }


async def run_phases(
    sdk: FabstirSDK, prompts: Sequence[str], quick: bool, host_pid: int | None
) -> dict[str, Any]:
    await one_job(sdk, prompts[0])  # warm-up: discovery (then cached), first connection and stream
    out: dict[str, Any] = {}
    for name, workers, jobs_each in (
        ("single_stream", 1, 5 if quick else 30),
        ("concurrent_streams", CONCURRENT, 1 if quick else 4),
    ):
        before = process_cpu_seconds(host_pid) if host_pid is not None else None
        out[name] = result = await phase(sdk, prompts, workers, jobs_each)
        if host_pid is not None and before is not None:
            result["host_process_cpu_seconds"] = process_cpu_seconds(host_pid) - before
    return out


async def production(prompts: Sequence[str], quick: bool) -> dict[str, Any]:
    async with ProcessGroup() as group:
        boot = await group.start("bootstrap", ["bootstrap"])
        host = await group.start(
            "host",
            [
                "host",
                "run",
                "--no-escrow",
                "--backend",
                "simulated",
                "--token-delay",
                "0",
                "--model",
                MODEL,
                "--max-concurrent-jobs",
                str(HOST_SLOTS),
                "--max-queue",
                str(HOST_SLOTS),
                "--bootstrap",
                boot.addrs[0],
                "--status-interval",
                "0",
            ],
        )
        sdk = FabstirSDK(mode="production", p2p={"bootstrap_nodes": boot.addrs}, chain={"escrow": False})
        async with sdk:
            quiet_libp2p()
            result = await run_phases(sdk, prompts, quick, host.process.pid)
        result["host_process_rss_mb"] = round(rss_mb(host.process.pid), 1)
    return result


async def mock(prompts: Sequence[str], quick: bool) -> dict[str, Any]:
    host = MockHostSpec(
        name="bench", models=(MODEL,), price_per_token=1_000_000_000, max_concurrent_jobs=HOST_SLOTS
    )
    async with FabstirSDK(SDKConfig(mode="mock", mock=MockConfig(seed=0, hosts=(host,)))) as sdk:
        return await run_phases(sdk, prompts, quick, None)


def _ratio(prod: dict[str, Any], mock_: dict[str, Any], key: str) -> float:
    return float(prod[key]) / float(mock_[key])


def render(result: dict[str, Any]) -> str:
    """The Markdown table(s) of a results file (docs/BENCHMARKS.md is regenerated from it by
    bench/report.py)."""
    lines = [
        "| mode | streams | tokens/s | jobs/s | TTFT p50 | gap p99 (median stream) "
        "| gap p99 (worst stream) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, label in (("production", "production (libp2p, 2 processes)"), ("mock", "mock (in-process)")):
        for phase_name in ("single_stream", "concurrent_streams"):
            p = result[mode][phase_name]
            lines.append(
                f"| {label} | {p['streams']} | {p['tokens_per_second']:,.0f} | {p['jobs_per_second']:.1f} | "
                f"{p['ttft_p50_ms']:.1f} ms | {p['inter_token_gap_p99_ms_per_stream_median']:.1f} ms | "
                f"{p['inter_token_gap_p99_ms_worst_stream']:.1f} ms |"
            )
    ratios = result["ratios_production_over_mock"]
    single, many = ratios["single_stream"], ratios["concurrent_streams"]
    streams = result["production"]["concurrent_streams"]["streams"]
    lines += [
        "",
        f"Ratios production / mock: 1 stream {single['tokens_per_second']:.2f}× tokens/s, "
        f"{single['ttft_p50_ms']:.1f}× TTFT; {streams} streams {many['tokens_per_second']:.2f}× tokens/s, "
        f"{many['ttft_p50_ms']:.1f}× TTFT, {many['inter_token_gap_p99_ms_per_stream_median']:.2f}× gap p99.",
    ]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer jobs (smoke run); writes no results")
    args = parser.parse_args()
    started = time.perf_counter()
    machine = machine_info()
    prompts = long_prompts(8)
    prod = await production(prompts, args.quick)
    mocked = await mock(prompts, args.quick)
    ratios = {
        phase_name: {
            key: _ratio(prod[phase_name], mocked[phase_name], key)
            for key in ("tokens_per_second", "ttft_p50_ms", "inter_token_gap_p99_ms_per_stream_median")
        }
        for phase_name in ("single_stream", "concurrent_streams")
    }
    result = {
        "machine": machine,
        "setup": {
            "backend": "simulated, token_delay 0",
            "tokens_per_job": TOKENS,
            "host_max_concurrent_jobs": HOST_SLOTS,
            "host_max_queue": HOST_SLOTS,
            "host_batch_interval_ms": 25,
            "mock_batch_interval_ms": 0,  # mock hosts flush at once unless realistic_pacing is on
        },
        "production": prod,
        "mock": mocked,
        "ratios_production_over_mock": ratios,
        "seconds": time.perf_counter() - started,
        "command": "python bench/bench_transport.py",
    }
    if not args.quick:
        out = Path(__file__).parent / "results" / "transport.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))


if __name__ == "__main__":
    asyncio.run(main())
