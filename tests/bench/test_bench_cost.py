"""bench/cost.py arithmetic on hand-computed cases (cache read/write prices, batch discount, minimum length, padding) and reply sizing."""

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


def test_padding_to_the_minimum_by_hand():
    price = ModelPrice(1.0, 5.0)
    part = Part(shared=200, fresh=1000, output=100, requests=2)  # 200-token prefix, minimum 1024
    c = costs(part, price, min_cache=1024, n_latents=1000, pad=True)  # prefix filled to 1024 and cached
    assert c["plain"] == pytest.approx((2 * 200 + 1000 + 5 * 100) / 1e6)  # plain is what is sent today
    assert c["cache"] == pytest.approx((1000 + 5 * 100 + 0.1 * 2 * 1024 + 1.25 * 1024 / 1000) / 1e6)
    assert c["cacheable"]


def test_reply_has_one_entry_per_item():
    import json

    from bench.cost import reply
    from engine.score.scorers.judge import BINARY_SCHEMA
    from engine.score.scorers.simulation import SCHEMA

    assert len(json.loads(reply(BINARY_SCHEMA, 5))["answers"]) == 5
    assert len(json.loads(reply(SCHEMA, 33))["activations"]) == 33
