"""bench/clip_train.py --matmul-shapes: every product of a step found, its FLOPs counted, timed alone."""

from __future__ import annotations

import re

from bench.clip_train import _product, matmul_shapes, parse_args

TINY = ["--width", "64", "--layers", "1", "--image-size", "16", "--patch", "8", "--context", "8", "--batch", "2",
        "--embed", "32", "--warmup", "1", "--threads", "1"]  # fmt: skip


def test_profiled_products_are_read_as_a_b_and_bias() -> None:
    assert _product("aten::addmm", [[768], [10, 256], [256, 768]]) == ((10, 256), (256, 768), (768,))
    assert _product("aten::bmm", [[4, 5, 6], [4, 6, 7]]) == ((4, 5, 6), (4, 6, 7), ())
    assert _product("aten::add", [[3], [3]]) is None


def test_matmul_shapes_tables_every_product_of_the_step(capsys) -> None:
    matmul_shapes(parse_args(TINY), "fp32")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\| (mm|addmm|bmm|baddbmm) \|", line)]
    # (4 + 1 tokens) x 2 images = 10 rows through the vision qkv (64 -> 192) forward: one addmm of that shape.
    assert any(line.startswith("| addmm | 10x64 | 64x192 | 1 |") for line in rows)
    total = re.search(r"all products: ([\d.]+) GFLOP, ([\d.]+) ms in the step", out)
    assert total and float(total.group(2)) > 0
