"""The fake provider server's command line: `python -m clients.testing --port 8765 --wire anthropic`.

Serves until interrupted and prints the base URL to give `make_client` for
each wire format served; --fault-rate adds random 429/5xx/dropped replies,
--storm PERIOD ON a 529 storm for ON seconds of every PERIOD.
"""

from __future__ import annotations

import argparse
import asyncio

import clients.testing
from clients.testing.faults import Fault, fault_mix
from clients.testing.server import FakeLLMServer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m clients.testing",
                                description=clients.testing.__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 = any free port)")
    p.add_argument("--wire", choices=["anthropic", "openai", "both"], default="both", help="routes to serve")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    p.add_argument("--rate-limit", type=float, default=None, help="requests/s allowed (429 beyond)")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests given a random fault")
    p.add_argument("--storm", type=float, nargs=2, metavar=("PERIOD_S", "ON_S"), default=None,
                   help="answer every request with 529 for ON_S seconds of every PERIOD_S (an overload storm)")
    p.add_argument("--api-key", default=None, help="require this key (default: accept any)")
    p.add_argument("--openrouter", action="store_true", help="OpenRouter-shaped errors and usage.cost")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    faults = fault_mix(a.fault_rate) if a.fault_rate else []
    if a.storm:
        faults.insert(0, Fault.storm(529, period_s=a.storm[0], on_s=a.storm[1]))
    server = FakeLLMServer(faults=faults, latency_s=a.latency,
                           rate_limit_rps=a.rate_limit, api_key=a.api_key, openrouter=a.openrouter, wire=a.wire,
                           port=a.port, seed=a.seed)

    async def serve() -> None:
        async with server:
            hint = {"anthropic": f"{server.base_url}  (make_client('anthropic', ..., base_url=...))",
                    "openai": f"{server.base_url}/v1  (make_client('openai-compatible', ..., base_url=...))"}
            for w in (["anthropic", "openai"] if a.wire == "both" else [a.wire]):
                print(f"fake LLM server [{w}] on {hint[w]}", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
