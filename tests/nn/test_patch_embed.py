import pytest
import torch
import torch.nn.functional as F

from multimodal.nn import PatchEmbed

TOL = 1e-5


@pytest.mark.parametrize(("img_size", "patch_size"), [(8, 4), ((8, 12), (4, 3))])
def test_patch_embed_equals_unfold_and_linear(img_size, patch_size) -> None:
    torch.manual_seed(0)
    embed = PatchEmbed(img_size, patch_size, in_chans=3, dim=10)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    assert embed.grid_size == (h // ph, w // pw)
    assert embed.num_patches == (h // ph) * (w // pw)
    x = torch.randn(2, 3, h, w)
    patches = F.unfold(x, kernel_size=(ph, pw), stride=(ph, pw)).transpose(1, 2)  # (B, N, C*ph*pw) raster order
    expected = patches @ embed.proj.weight.reshape(10, -1).T + embed.proj.bias
    out = embed(x)
    assert out.shape == (2, embed.num_patches, 10)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)


def test_patch_embed_loads_timm_weights() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    theirs = timm_layers.PatchEmbed(img_size=16, patch_size=4, in_chans=3, embed_dim=12)
    ours = PatchEmbed(16, 4, in_chans=3, dim=12)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours(x), theirs(x), atol=TOL, rtol=0)


def test_no_bias() -> None:
    assert PatchEmbed(8, 4, dim=6, bias=False).proj.bias is None


def test_wrong_image_size_raises() -> None:
    embed = PatchEmbed(8, 4, in_chans=3, dim=6)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 8, 8\), got \(1, 3, 8, 12\)"):
        embed(torch.randn(1, 3, 8, 12))
    with pytest.raises(ValueError, match="got \\(1, 1, 8, 8\\)"):
        embed(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        PatchEmbed(10, 4)
    with pytest.raises(ValueError, match="patch_size"):
        PatchEmbed(8, (4, 4, 4))


def test_conv_stem_grid_and_reference():
    from multimodal.nn import ConvStem

    stem = ConvStem(32, 8, 3, 24, width=8).eval()
    assert stem.grid_size == (4, 4) and stem.num_patches == 16
    assert len([m for m in stem.stages if isinstance(m, torch.nn.Conv2d)]) == 3  # log2(8) stride-2 stages
    x = torch.randn(2, 3, 32, 32)
    ref = stem.proj(stem.stages(x)).flatten(2).transpose(1, 2)
    out = stem(x)
    assert out.shape == (2, 16, 24)
    assert torch.equal(out, ref)
    # token (r, c) sees only its own neighbourhood: changing the far corner leaves token (0, 0) unchanged
    y = x.clone()
    y[..., 24:, 24:] += 1.0
    assert torch.equal(stem(y)[:, 0], out[:, 0])
    with pytest.raises(ValueError, match="power-of-two patch_size"):
        ConvStem(32, 6, 3, 24)
    with pytest.raises(ValueError, match="expected images of shape"):
        stem(torch.randn(1, 3, 16, 16))
