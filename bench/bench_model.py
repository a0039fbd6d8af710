"""Production path vs direct: what the marketplace adds on top of the model server.

One llama.cpp server (the built-in SmolLM2-135M-Instruct, 1 thread, started here through
``fabstir.backend.LlamaCppBackend``) is reached two ways, with identical requests (same prompts,
``max_tokens``, temperature 0, seed 0), interleaved run by run:

* **direct**: OpenAI-compatible streaming HTTP straight to the server (httpx, SSE parsed here);
* **p2p**: SDK (production mode) → libp2p → a host *process* (``fabstir host run --backend openai``
  pointed at that same server URL and API key) → the server. Time to first token counts from
  ``submit_job`` and so includes negotiation (offer / accept) with the host; discovery is cached after
  a warm-up job, as it is for any client submitting more than one job.

Reported per path: time to first token (p50 / p90), tokens/s while streaming (from the first to the last
token, as the client sees them) and end to end (tokens / (last token - request)), and the ratios p2p / direct.

Run:  .venv/bin/python bench/bench_model.py  [--quick]
Writes bench/results/model.json (not with --quick) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _procs import ProcessGroup, machine_info, percentile, quiet_libp2p, rss_mb

from fabstir import FabstirSDK
from fabstir.backend import BUILTIN_MODEL_ID, LlamaCppBackend

PROMPTS = (
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about a lighthouse.",
    "List three tips for learning a new language.",
)
MAX_TOKENS = 64
SEED = 0


@dataclass(slots=True)
class Run:
    path: str
    prompt: int
    ttft: float  # request sent → first token, seconds
    total: float  # request sent → last token
    tokens: int
    text: str

    @property
    def stream_rate(self) -> float:
        """Tokens/s from the first to the last token (the decode rate the client sees)."""
        span = self.total - self.ttft
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else float("nan")

    @property
    def end_to_end_rate(self) -> float:
        return self.tokens / self.total if self.total > 0 else float("nan")


async def direct_run(client: httpx.AsyncClient, base_url: str, api_key: str, index: int) -> Run:
    """One streaming chat completion straight to the server; a token is a non-empty content delta (what
    the host's backend counts as one, too)."""
    body = {
        "model": BUILTIN_MODEL_ID,
        "messages": [{"role": "user", "content": PROMPTS[index]}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "seed": SEED,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    pieces: list[str] = []
    first: float | None = None
    last = 0.0
    started = time.perf_counter()
    async with client.stream(
        "POST",
        f"{base_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {api_key}"},
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    last = now
                    pieces.append(content)
    assert first is not None, "the server sent no token"
    return Run("direct", index, first - started, last - started, len(pieces), "".join(pieces))


async def p2p_run(sdk: FabstirSDK, index: int) -> Run:
    """One job through the marketplace; times from ``submit_job`` to each token the stream yields."""
    started = time.perf_counter()
    handle = await sdk.submit_job(
        prompt=PROMPTS[index],
        model=BUILTIN_MODEL_ID,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        seed=SEED,
        stream=True,
    )
    assert handle.stream is not None
    pieces: list[str] = []
    first: float | None = None
    last = 0.0
    async with handle.stream as stream:
        async for token in stream:
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            pieces.append(token.text)
    await sdk.wait_for_job_completion(handle.job_id)
    assert first is not None, "the host sent no token"
    return Run("p2p", index, first - started, last - started, len(pieces), "".join(pieces))


def summarise(runs: list[Run]) -> dict[str, Any]:
    ttfts = [r.ttft * 1000 for r in runs]
    return {
        "runs": len(runs),
        "tokens_per_run_mean": statistics.fmean(r.tokens for r in runs),
        "ttft_p50_ms": percentile(ttfts, 0.5),
        "ttft_p90_ms": percentile(ttfts, 0.9),
        "stream_tokens_per_second_p50": statistics.median(r.stream_rate for r in runs),
        "end_to_end_tokens_per_second_p50": statistics.median(r.end_to_end_rate for r in runs),
        "total_p50_ms": statistics.median(r.total * 1000 for r in runs),
    }


async def bench(rounds: int) -> dict[str, Any]:
    async with (
        LlamaCppBackend(n_threads=1, n_parallel=2) as server,
        ProcessGroup() as group,
        httpx.AsyncClient(timeout=60.0, trust_env=False) as client,
    ):
        assert server.base_url is not None
        boot = await group.start("bootstrap", ["bootstrap"])
        host = await group.start(
            "host",
            [
                "host",
                "run",
                "--no-escrow",
                "--backend",
                "openai",
                "--backend-url",
                server.base_url,
                "--api-key",
                server.api_key,
                "--model",
                f"{BUILTIN_MODEL_ID}={BUILTIN_MODEL_ID}",
                "--bootstrap",
                boot.addrs[0],
                "--status-interval",
                "0",
            ],
        )
        sdk = FabstirSDK(mode="production", p2p={"bootstrap_nodes": boot.addrs}, chain={"escrow": False})
        async with sdk:
            quiet_libp2p()
            # Warm-up, not measured: the first job discovers the host (then cached), both paths load the
            # prompt once.
            for index in range(len(PROMPTS)):
                await direct_run(client, server.base_url, server.api_key, index)
                await p2p_run(sdk, index)
            runs: list[Run] = []
            for round_ in range(rounds):
                for index in range(len(PROMPTS)):
                    # Alternate which path goes first, so neither always follows the other.
                    order = ("direct", "p2p") if (round_ + index) % 2 == 0 else ("p2p", "direct")
                    for path in order:
                        if path == "direct":
                            runs.append(await direct_run(client, server.base_url, server.api_key, index))
                        else:
                            runs.append(await p2p_run(sdk, index))
            host_rss = rss_mb(host.process.pid)
    direct = summarise([r for r in runs if r.path == "direct"])
    p2p = summarise([r for r in runs if r.path == "p2p"])
    texts: dict[tuple[int, str], set[str]] = {}
    for r in runs:
        texts.setdefault((r.prompt, r.path), set()).add(r.text)
    same = all(texts[(i, "direct")] == texts[(i, "p2p")] for i in range(len(PROMPTS)))
    return {
        "setup": {
            "model": BUILTIN_MODEL_ID,
            "llama_cpp_threads": 1,
            "llama_cpp_slots": 2,
            "prompts": list(PROMPTS),
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "seed": SEED,
            "rounds": rounds,
            "host_process_rss_mb": round(host_rss, 1),
        },
        "identical_completions_on_both_paths": same,
        "direct": direct,
        "p2p": p2p,
        "ratios_p2p_over_direct": {
            "ttft_p50": p2p["ttft_p50_ms"] / direct["ttft_p50_ms"],
            "ttft_p90": p2p["ttft_p90_ms"] / direct["ttft_p90_ms"],
            "stream_tokens_per_second": p2p["stream_tokens_per_second_p50"]
            / direct["stream_tokens_per_second_p50"],
            "end_to_end_tokens_per_second": p2p["end_to_end_tokens_per_second_p50"]
            / direct["end_to_end_tokens_per_second_p50"],
        },
        "added_ttft_p50_ms": p2p["ttft_p50_ms"] - direct["ttft_p50_ms"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run); writes no results")
    args = parser.parse_args()
    started = time.perf_counter()
    machine = machine_info()
    result = await bench(rounds=1 if args.quick else 5)
    result = {"machine": machine, **result, "seconds": time.perf_counter() - started}
    result["command"] = "python bench/bench_model.py"
    if not args.quick:
        out = Path(__file__).parent / "results" / "model.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    d, p, r = result["direct"], result["p2p"], result["ratios_p2p_over_direct"]
    print(f"{result['setup']['rounds']} rounds × {len(PROMPTS)} prompts × {MAX_TOKENS} max tokens per path")
    print("| path | TTFT p50 | TTFT p90 | tokens/s streaming | tokens/s end to end |")
    print("|---|---|---|---|---|")
    for name, s in (("direct HTTP", d), ("SDK → libp2p → host", p)):
        print(
            f"| {name} | {s['ttft_p50_ms']:.1f} ms | {s['ttft_p90_ms']:.1f} ms | "
            f"{s['stream_tokens_per_second_p50']:.1f} | {s['end_to_end_tokens_per_second_p50']:.1f} |"
        )
    print(
        f"| p2p / direct | {r['ttft_p50']:.2f}× | {r['ttft_p90']:.2f}× | "
        f"{r['stream_tokens_per_second']:.2f}× | {r['end_to_end_tokens_per_second']:.2f}× |"
    )
    print(f"identical completions on both paths: {result['identical_completions_on_both_paths']}")


if __name__ == "__main__":
    asyncio.run(main())
