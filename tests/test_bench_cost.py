"""bench/cost.py arithmetic on a hand-computed case (cache read/write prices, batch discount, minimum length)."""

import pytest

from bench.cost import Part, costs
from clients.config import ModelPrice


def test_cost_modes_by_hand():
    price = ModelPrice(1.0, 5.0)  # $/MTok in, out; cache write 1.25x (5 min) / 2x (1 h), read 0.1x
    part = Part(shared=2000, fresh=1000, output=100, requests=2)  # 2 requests sharing a 2000-token prefix
    c = costs(part, price, min_cache=1024, n_latents=1000)  # one cache write per run: 2000 / 1000 tokens per latent
    assert c["plain"] == pytest.approx((2 * 2000 + 1000 + 5 * 100) / 1e6)
    assert c["cache"] == pytest.approx((1000 + 5 * 100 + 0.1 * 4000 + 1.25 * 2) / 1e6)
    assert c["batch"] == pytest.approx(c["plain"] / 2)
    assert c["both"] == pytest.approx((1000 + 5 * 100 + 0.1 * 4000 + 2.0 * 2) / 1e6 / 2)
    short = costs(part, price, min_cache=4096, n_latents=1000)  # prefix below the model's minimum: no caching
    assert short["cache"] == short["plain"] and short["both"] == short["batch"] and not short["cacheable"]
