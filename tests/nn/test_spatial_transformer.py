import math

import pytest
import torch

from multimodal.nn import LocalisationNet, SpatialTransformer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_identity_initialisation_returns_the_input() -> None:
    st = SpatialTransformer(3)
    x = torch.rand(2, 3, 28, 20)
    torch.testing.assert_close(st(x), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(st.last_theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3))


def test_a_known_translation_moves_a_known_pixel() -> None:
    st = SpatialTransformer(1)
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 5, 4] = 1.0  # row 5, column 4
    # output (u, v) samples input (u + 0.25, v - 0.5) in [-1, 1] units; a pixel is 2 / 16 = 0.125 wide, so the
    # output shows the input shifted left by 2 columns and down by 4 rows
    theta = torch.tensor([[[1.0, 0.0, 0.25], [0.0, 1.0, -0.5]]])
    out = st(x, theta)
    assert out[0, 0, 9, 2] == pytest.approx(1.0, abs=1e-5) and out.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_rotation_by_ninety_degrees_is_rot90() -> None:
    st = SpatialTransformer(1)
    x = torch.rand(1, 1, 8, 8)
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    out = st(x, torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]]))
    # output (x, y) samples input (-y, x): counter-clockwise in row-down image coordinates, as rot90 with k=1
    torch.testing.assert_close(out[0, 0], torch.rot90(x[0, 0], k=1), atol=1e-5, rtol=0)


def test_gradients_reach_the_localisation_net() -> None:
    """At the identity start only the regressor's last layer (zero weights) gets a gradient; one step later every
    layer of the localisation net does."""
    st = SpatialTransformer(3, out_size=(12, 12))
    x, target = torch.rand(4, 3, 24, 24), torch.randn(4, 3, 12, 12)
    opt = torch.optim.SGD(st.parameters(), lr=1e-4)
    for step in range(2):
        opt.zero_grad()
        out = st(x)
        assert out.shape == (4, 3, 12, 12)
        (out * target).sum().backward()
        grads = {name: p.grad.abs().sum().item() for name, p in st.localisation.named_parameters()}
        assert grads["regressor.2.weight"] > 0 and grads["regressor.2.bias"] > 0
        if step == 1:
            assert all(g > 0 for g in grads.values()), grads
        opt.step()


def test_a_custom_localisation_and_bad_inputs() -> None:
    st = SpatialTransformer(1, localisation=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6)))
    assert st(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"expected images \(B, 1, H, W\)"):
        st(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="must give"):
        SpatialTransformer(1, localisation=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)))(
            torch.rand(2, 1, 8, 8)
        )
    with pytest.raises(ValueError, match="padding_mode"):
        SpatialTransformer(1, padding_mode="wrap")
    assert LocalisationNet(3)(torch.rand(2, 3, 9, 9)).shape == (2, 2, 3)
