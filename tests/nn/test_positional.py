import math

import pytest
import torch

from multimodal.nn import LearnedPositionalEmbedding, sincos_2d_embedding, sinusoidal_embedding

TOL = 1e-5


def closed_form(position: float, dim: int, max_period: float = 10000.0) -> list[float]:
    half = dim // 2
    row = [math.sin(position / max_period ** (i / half)) for i in range(half)]
    row += [math.cos(position / max_period ** (i / half)) for i in range(half)]
    return row + [0.0] * (dim % 2)


@pytest.mark.parametrize("dim", [8, 9])
def test_sinusoidal_matches_closed_form(dim: int) -> None:
    positions = torch.arange(12)
    expected = torch.tensor([closed_form(p, dim) for p in range(12)])
    emb = sinusoidal_embedding(positions, dim)
    assert emb.shape == (12, dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, expected, atol=TOL, rtol=0)


def test_sinusoidal_is_vaswani_up_to_interleaving() -> None:
    dim, positions = 16, torch.arange(20)
    pe = torch.zeros(20, dim)  # Vaswani et al.: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
    for pos in range(20):
        for i in range(dim // 2):
            pe[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / dim))
            pe[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / dim))
    emb = sinusoidal_embedding(positions, dim)
    torch.testing.assert_close(emb[:, : dim // 2], pe[:, 0::2], atol=TOL, rtol=0)
    torch.testing.assert_close(emb[:, dim // 2 :], pe[:, 1::2], atol=TOL, rtol=0)


def test_sinusoidal_float_timesteps_and_batch_shape() -> None:
    t = torch.tensor([[0.5, 999.25], [3.0, 17.75]])
    emb = sinusoidal_embedding(t, 6, max_period=100.0)
    assert emb.shape == (2, 2, 6)
    expected = torch.tensor([[closed_form(v, 6, 100.0) for v in row] for row in t.tolist()])
    torch.testing.assert_close(emb, expected, atol=1e-4, rtol=0)


def test_sincos_2d_is_column_then_row_1d_embeddings() -> None:
    grid_h, grid_w, dim = 3, 5, 16
    emb = sincos_2d_embedding(grid_h, grid_w, dim)
    assert emb.shape == (grid_h * grid_w, dim)
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # raster order
    cols = torch.arange(grid_w).repeat(grid_h)
    torch.testing.assert_close(emb[:, : dim // 2], sinusoidal_embedding(cols, dim // 2), atol=TOL, rtol=0)
    torch.testing.assert_close(emb[:, dim // 2 :], sinusoidal_embedding(rows, dim // 2), atol=TOL, rtol=0)
    assert len({tuple(r) for r in emb.tolist()}) == grid_h * grid_w  # every patch has its own code


def test_sincos_2d_needs_dim_divisible_by_4() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_embedding(2, 2, 10)


def test_learned_positional_embedding() -> None:
    torch.manual_seed(0)
    pos = LearnedPositionalEmbedding(6, 4, init_std=0.02)
    assert pos.weight.abs().max() <= 0.04 and 0.005 < pos.weight.std() < 0.04
    x = torch.randn(2, 4, 4)
    torch.testing.assert_close(pos(x), x + pos.weight[:4])
    torch.testing.assert_close(pos(x, offset=2), x + pos.weight[2:6])
    torch.testing.assert_close(pos.embedding(3, offset=1), pos.weight[1:4])
    with pytest.raises(ValueError, match="num_positions >= 7"):
        pos(torch.randn(1, 7, 4))
    with pytest.raises(ValueError, match="num_positions >= 7"):
        pos(x, offset=3)
