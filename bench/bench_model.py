"""Production path vs direct: what the marketplace adds on top of the model server.

One llama.cpp server (the built-in SmolLM2-135M-Instruct, 1 thread, started here through
``fabstir.backend.LlamaCppBackend``) is reached three ways, with identical requests (same prompts,
``max_tokens``, temperature 0, seed 0), interleaved run by run:

* **direct**: OpenAI-compatible streaming HTTP straight to the server (httpx, SSE parsed here);
* **litellm**: the same HTTP request to a LiteLLM proxy (``litellm`` CLI, a subprocess on 127.0.0.1)
  in front of that server: the usual way to put one OpenAI-compatible endpoint before model servers,
  so the yardstick for what a relay hop costs. Needs the ``bench`` extra (``scripts/bench.sh``);
* **p2p**: SDK (production mode) → libp2p → a host *process* (``fabstir host run --backend openai``
  pointed at that same server URL and API key) → the server. Time to first token counts from
  ``submit_job`` and so includes negotiation (offer / accept) with the host; discovery is cached after
  a warm-up job, as it is for any client submitting more than one job.

Reported per path: time to first token (p50 / p90), tokens/s while streaming (from the first to the last
token, as the client sees them) and end to end (tokens / (last token - request)), and the ratios of
each path to direct.

Run:  .venv/bin/python bench/bench_model.py  [--quick]
Writes bench/results/model.json (not with --quick) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
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
PATHS = ("direct", "litellm", "p2p")
LABELS = {
    "direct": "direct HTTP",
    "litellm": "HTTP → LiteLLM proxy → server",
    "p2p": "SDK → libp2p → host → server",
}

# The LiteLLM proxy's environment: it must not reach beyond 127.0.0.1 or read stray configuration.
_LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the bundled price list, not a fetch from GitHub at import
    "LITELLM_TELEMETRY_DISABLED": "True",  # vetoes usage reporting, whatever a stored setting says
    "LITELLM_MODE": "PRODUCTION",  # in DEV mode it loads a .env from the working directory
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
_UPSTREAM_KEY_VAR = "FABSTIR_BENCH_UPSTREAM_KEY"


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


async def http_run(client: httpx.AsyncClient, path: str, base_url: str, api_key: str, index: int) -> Run:
    """One streaming chat completion to an OpenAI-compatible endpoint (the server itself, or the proxy in
    front of it); a token is a non-empty content delta (what the host's backend counts as one, too)."""
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
    assert first is not None, f"{path}: the server sent no token"
    return Run(path, index, first - started, last - started, len(pieces), "".join(pieces))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class LiteLLMProxy:
    """The LiteLLM proxy as a subprocess in front of one OpenAI-compatible server, serving it under the
    same model id. ``spawn()`` starts it (returns at once: it needs ~15 s to import and boot, which the
    other processes' start-up overlaps), ``await wait_ready()`` polls ``/health/readiness``, ``stop()``
    (also on leaving ``async with``, and at exit) ends it: SIGTERM to its process group, SIGKILL after 10 s.

    It binds 127.0.0.1 on a free port and requires a random master key (it refuses to start without
    one); the server's key reaches it through the environment, not the config file."""

    def __init__(self, upstream_url: str, upstream_key: str, start_timeout: float = 180.0) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="fabstir-bench-litellm-"))
        self._upstream_url = upstream_url
        self._upstream_key = upstream_key
        self._start_timeout = start_timeout
        self.port = _free_port()
        self.master_key = "sk-" + secrets.token_hex(32)
        self.log = self._dir / "litellm.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LiteLLMProxy:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()  # synchronous, like ProcessGroup: it must run even while the task is cancelled

    def spawn(self) -> None:
        executable = Path(sys.executable).parent / "litellm"
        if not executable.exists():
            raise RuntimeError(
                f"no {executable}: the LiteLLM path needs the bench extra (bash scripts/bench.sh, or "
                ".venv/bin/pip install -e '.[bench]')"
            )
        # JSON is YAML, which is what --config reads. "os.environ/NAME" is LiteLLM's reference to a variable.
        config = self._dir / "config.yaml"
        model = {
            "model_name": BUILTIN_MODEL_ID,
            "litellm_params": {
                "model": f"openai/{BUILTIN_MODEL_ID}",
                "api_base": f"{self._upstream_url}/v1",
                "api_key": f"os.environ/{_UPSTREAM_KEY_VAR}",
            },
        }
        config.write_text(json.dumps({"model_list": [model]}, indent=2) + "\n")
        env = {
            **os.environ,
            **_LITELLM_ENV,
            "LITELLM_MASTER_KEY": self.master_key,
            _UPSTREAM_KEY_VAR: self._upstream_key,
        }
        command = [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self._dir,
                env=env,
            )
        atexit.register(self.stop)

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + self._start_timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                response = await client.get(f"{self.base_url}/health/readiness", timeout=5.0)
                if response.status_code == 200:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(
                    f"the LiteLLM proxy did not start (exit code {self.process.poll()}):\n{tail}"
                )
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        """Idempotent. The whole process group: the CLI may run the server in a child process."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5.0)


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


def ratios(path: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    """``path`` / direct for each reported number (TTFT above 1 is slower, tokens/s below 1 is slower)."""
    return {
        "ttft_p50": path["ttft_p50_ms"] / direct["ttft_p50_ms"],
        "ttft_p90": path["ttft_p90_ms"] / direct["ttft_p90_ms"],
        "stream_tokens_per_second": path["stream_tokens_per_second_p50"]
        / direct["stream_tokens_per_second_p50"],
        "end_to_end_tokens_per_second": path["end_to_end_tokens_per_second_p50"]
        / direct["end_to_end_tokens_per_second_p50"],
    }


async def bench(rounds: int) -> dict[str, Any]:
    async with (
        LlamaCppBackend(n_threads=1, n_parallel=2) as server,
        ProcessGroup() as group,
        httpx.AsyncClient(timeout=60.0, trust_env=False) as client,
    ):
        assert server.base_url is not None
        server_url = server.base_url
        async with LiteLLMProxy(server_url, server.api_key) as proxy:
            proxy.spawn()  # boots while the bootstrap peer and the host start
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
                    server_url,
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
            await proxy.wait_ready(client)
            assert proxy.process is not None
            sdk = FabstirSDK(mode="production", p2p={"bootstrap_nodes": boot.addrs}, chain={"escrow": False})
            async with sdk:
                quiet_libp2p()

                async def run(path: str, index: int) -> Run:
                    if path == "direct":
                        return await http_run(client, path, server_url, server.api_key, index)
                    if path == "litellm":
                        return await http_run(client, path, proxy.base_url, proxy.master_key, index)
                    return await p2p_run(sdk, index)

                # Warm-up, not measured: the first job discovers the host (then cached), the proxy sets up
                # its client to the server, every path loads each prompt once.
                for index in range(len(PROMPTS)):
                    for path in PATHS:
                        await run(path, index)
                runs: list[Run] = []
                for round_ in range(rounds):
                    for index in range(len(PROMPTS)):
                        # Rotate which path goes first, so none always follows another.
                        shift = (round_ + index) % len(PATHS)
                        for path in PATHS[shift:] + PATHS[:shift]:
                            runs.append(await run(path, index))
                host_rss = rss_mb(host.process.pid)
                proxy_rss = rss_mb(proxy.process.pid)
    summaries = {path: summarise([r for r in runs if r.path == path]) for path in PATHS}
    texts: dict[tuple[int, str], set[str]] = {}
    for r in runs:
        texts.setdefault((r.prompt, r.path), set()).add(r.text)
    same = all(len({frozenset(texts[(i, path)]) for path in PATHS}) == 1 for i in range(len(PROMPTS)))
    direct = summaries["direct"]
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
            "litellm_version": metadata.version("litellm"),
            "litellm_process_rss_mb": round(proxy_rss, 1),
        },
        "identical_completions_on_all_paths": same,
        **summaries,
        "ratios_over_direct": {path: ratios(summaries[path], direct) for path in PATHS if path != "direct"},
        "added_ttft_p50_ms": {
            path: summaries[path]["ttft_p50_ms"] - direct["ttft_p50_ms"] for path in PATHS if path != "direct"
        },
    }


def render(result: dict[str, Any]) -> str:
    """The Markdown table(s) of a results file (docs/BENCHMARKS.md is regenerated from it by
    bench/report.py)."""
    lines = [
        "| path | TTFT p50 | TTFT p90 | tokens/s while streaming | tokens/s end to end |",
        "|---|---|---|---|---|",
    ]
    for path in PATHS:
        s = result[path]
        lines.append(
            f"| {LABELS[path]} | {s['ttft_p50_ms']:.1f} ms | {s['ttft_p90_ms']:.1f} ms | "
            f"{s['stream_tokens_per_second_p50']:.1f} | {s['end_to_end_tokens_per_second_p50']:.1f} |"
        )
    for path in PATHS[1:]:
        r = result["ratios_over_direct"][path]
        lines.append(
            f"| **{path} / direct** | **{r['ttft_p50']:.2f}×** | **{r['ttft_p90']:.2f}×** | "
            f"**{r['stream_tokens_per_second']:.2f}×** | **{r['end_to_end_tokens_per_second']:.2f}×** |"
        )
    added, setup = result["added_ttft_p50_ms"], result["setup"]
    lines += [
        "",
        f"Added before the first token (p50, vs direct): LiteLLM proxy {added['litellm']:+.1f} ms, "
        f"SDK → libp2p → host {added['p2p']:+.1f} ms. Resident memory: host process "
        f"{setup['host_process_rss_mb']:.0f} MiB, LiteLLM proxy {setup['litellm_process_rss_mb']:.0f} MiB "
        f"(LiteLLM {setup['litellm_version']}); the model lives in the server. Completions identical on all "
        f"paths: {'yes' if result['identical_completions_on_all_paths'] else 'NO'}.",
    ]
    return "\n".join(lines)


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
    print(f"identical completions on all paths: {result['identical_completions_on_all_paths']}")
    print(render(result))


if __name__ == "__main__":
    asyncio.run(main())
