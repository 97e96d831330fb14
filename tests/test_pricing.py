"""Prices, costs, and the token estimates a dry run makes: tile rule, overrides, unknown models."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
from PIL import Image

from adinstruct.builder.describe.pricing import (
    PriceTable,
    estimate_request_tokens,
    estimate_run,
    image_size,
    image_tokens,
)
from adinstruct.builder.describe.requests import ChatRequest, Usage
from adinstruct.builder.errors import ConfigError


def data_url(width: int, height: int, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, format=fmt)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def image_request(url: str, detail: str, model: str = "gpt-4o") -> ChatRequest:
    content = [{"type": "image_url", "image_url": {"url": url, "detail": detail}}]
    return ChatRequest(
        request_id="img", model=model, messages=[{"role": "user", "content": content}]
    )


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((1024, 1024), 765),  # 768×768: 2×2 tiles (OpenAI's worked example)
        ((2048, 4096), 1105),  # 1024×2048, then 768×1536: 2×3 tiles (OpenAI's worked example)
        ((512, 512), 255),  # small images are not scaled up: one tile
        ((4000, 3000), 765),  # 2048×1536, then 1024×768: 2×2 tiles
        ((800, 600), 765),  # shortest side already ≤ 768: 2×2 tiles
        ((100, 3000), 765),  # 68×2048, shortest side already ≤ 768: 1×4 tiles
    ],
)
def test_high_detail_tiles(size, tokens):
    assert image_tokens(size, "high") == tokens


@pytest.mark.parametrize("size", [(64, 64), (1024, 1024), (4096, 8192), None])
def test_low_detail_is_flat(size):
    assert image_tokens(size, "low") == 85


def test_gpt_4o_mini_counts_images_by_its_own_figures():
    mini = PriceTable().lookup("gpt-4o-mini-2024-07-18")
    assert image_tokens((1024, 1024), "high", mini) == 2833 + 4 * 5667
    assert image_tokens((1024, 1024), "low", mini) == 2833


def test_image_size_is_read_from_the_header_only():
    png = data_url(1024, 768)
    assert image_size(png) == (1024, 768)
    assert image_size(data_url(300, 200, "JPEG")) == (300, 200)
    # A payload cut just past the PNG header chunks still gives the size: pixels never matter.
    header_only = png[: png.index(",") + 1 + 100]
    assert image_size(header_only) == (1024, 768)
    assert image_size("https://example.com/a.png") is None
    assert image_size("data:image/png;base64,bm90IGFuIGltYWdl") is None


def test_request_estimate_adds_text_and_images():
    high = estimate_request_tokens(image_request(data_url(1024, 1024), "high"))
    low = estimate_request_tokens(image_request(data_url(1024, 1024), "low"))
    auto = estimate_request_tokens(image_request(data_url(1024, 1024), "auto"))
    assert high - low == 765 - 85
    assert auto == high  # auto is counted as high: the upper bound
    text = ChatRequest(
        request_id="t", model="gpt-4o", messages=[{"role": "user", "content": "x" * 401}]
    )
    assert estimate_request_tokens(text) == 3 + 3 + 101  # priming, message, ceil(401 / 4)


def test_cost_arithmetic():
    prices = PriceTable()
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=200_000, output_tokens=100_000)
    # 800k uncached × $2.50 + 200k cached × $1.25 + 100k output × $10.00, per million
    assert prices.cost("gpt-4o", usage) == pytest.approx(2.00 + 0.25 + 1.00)
    assert prices.cost("gpt-4o", usage, batch=True) == pytest.approx(3.25 / 2)
    assert prices.cost("gpt-4o-2024-08-06", usage) == pytest.approx(3.25)  # snapshot → family
    assert prices.cost("gpt-4o-mini", usage) == pytest.approx(0.12 + 0.015 + 0.06)
    # No cached price: cached tokens cost the full input price.
    assert prices.cost("gpt-4o-2024-05-13", usage) == pytest.approx(5.00 + 1.50)


def test_user_price_file_overrides_and_extends(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "gpt-4o": {"input": 1.0, "output": 2.0},
                "my-local-llava": {"input": 0.5, "cached_input": 0.1, "output": 0.5},
            }
        )
    )
    prices = PriceTable.from_file(path)
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=500_000, output_tokens=1_000_000)
    assert prices.cost("gpt-4o", usage) == pytest.approx(1.0 + 2.0)
    assert prices.cost("my-local-llava", usage) == pytest.approx(0.25 + 0.05 + 0.5)
    assert prices.cost("gpt-4o-mini", usage) > 0  # the built-in entries stay


def test_bad_price_file_names_the_file_and_model(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o": {"input": "cheap"}}))
    with pytest.raises(ConfigError, match=r"prices\.json.*'gpt-4o'"):
        PriceTable.from_file(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"prices\.json"):
        PriceTable.from_file(path)


def test_unknown_model_costs_zero_with_a_flag(caplog):
    prices = PriceTable()
    with caplog.at_level(logging.WARNING):
        assert prices.cost("mystery-model", Usage(input_tokens=10, output_tokens=10)) == 0.0
        assert prices.cost("mystery-model", Usage(input_tokens=10, output_tokens=10)) == 0.0
    assert prices.unknown_models == {"mystery-model"}
    assert sum("mystery-model" in record.message for record in caplog.records) == 1


def test_dry_run_estimate_counts_cached_and_repeats():
    requests = [
        ChatRequest(
            request_id=f"r{i}",
            model="gpt-4o",
            max_tokens=500,
            messages=[{"role": "user", "content": f"describe item {i % 3}"}],
        )
        for i in range(5)
    ]
    cached_key = requests[0].cache_key()
    estimate = estimate_run(
        requests, PriceTable(), lambda key: key == cached_key, typical_output_tokens=200
    )
    # Items 0..2 then 0, 1 again: item 0 cached, the repeats cost nothing either.
    assert (estimate.requests, estimate.cached, estimate.to_send) == (5, 3, 2)
    per_request = estimate_request_tokens(requests[1])
    assert estimate.input_tokens == 2 * per_request
    assert (estimate.output_tokens_max, estimate.output_tokens_typical) == (1000, 400)
    expected = (2 * per_request * 2.50 + 1000 * 10.00) / 1e6
    assert estimate.cost_usd_max == pytest.approx(expected)
    assert "2 to send" in estimate.summary()
