"""HL-Gauss projection, loss and expected value (tandem.policies.heads.hl_gauss)."""

import math

import pytest
import torch

from tandem.core.errors import ConfigError
from tandem.policies.heads.hl_gauss import HLGauss, bin_centers, cross_entropy, expected_value, project

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_projection_is_a_distribution_inside_at_edges_and_outside():
    hl = HLGauss(-1.0, 1.0, 21)
    y = torch.tensor([-5.0, -1.0, -0.33, 0.0, 0.5, 1.0, 7.0])
    p = hl.project(y)
    assert p.shape == (7, 21)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(7))
    # out-of-support targets are clamped: same histogram as the edge value
    torch.testing.assert_close(p[0], p[1])
    torch.testing.assert_close(p[-1], p[-2])


def test_mean_recovers_interior_targets():
    hl = HLGauss(0.0, 1.0, 51)  # width 0.02, sigma 0.015
    y = torch.linspace(0.1, 0.9, 41)
    mean = hl.project(y) @ hl.centers
    assert (mean - y).abs().max() < 1e-4
    # logits = log p give back the same value through the network-side path
    torch.testing.assert_close(hl.value(torch.log(hl.project(y))), mean)


def test_erf_formula_by_hand():
    edges = torch.tensor([0.0, 1.0, 2.0])
    sigma = 0.75
    p = project(torch.tensor([0.5]), edges, sigma)[0]
    phi = lambda x: 0.5 * (1 + math.erf(x / (sigma * math.sqrt(2))))  # noqa: E731
    z = phi(2 - 0.5) - phi(0 - 0.5)
    assert p[0].item() == pytest.approx((phi(1 - 0.5) - phi(0 - 0.5)) / z, abs=1e-6)
    assert p[1].item() == pytest.approx((phi(2 - 0.5) - phi(1 - 0.5)) / z, abs=1e-6)


def test_sigma_widens_the_histogram():
    centers = bin_centers(-1.0, 1.0, 41)
    spreads = []
    for ratio in (0.25, 0.75, 3.0):
        hl = HLGauss(-1.0, 1.0, 41, sigma_ratio=ratio)
        p = hl.project(torch.tensor([0.0]))[0]
        spreads.append(float((p * centers**2).sum()))
        assert hl.sigma == pytest.approx(ratio * 2.0 / 41)
    assert spreads[0] < spreads[1] < spreads[2]
    # away from the edges the spread is sigma^2 plus the within-bin term (width^2 / 12)
    hl = HLGauss(-1.0, 1.0, 41, sigma_ratio=3.0)
    var = float((hl.project(torch.tensor([0.0]))[0] * centers**2).sum())
    assert var == pytest.approx(hl.sigma**2 + hl.bin_width**2 / 12, rel=0.05)


def test_cross_entropy_is_minimised_by_the_target_histogram():
    hl = HLGauss(0.0, 1.0, 11)
    p = hl.project(torch.tensor([0.37]))
    best = cross_entropy(torch.log(p.clamp_min(1e-30)), p)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    torch.testing.assert_close(best, entropy)
    for _ in range(5):
        other = torch.randn(1, 11)
        assert cross_entropy(other, p).item() > best.item()


def test_expected_value_of_a_peaked_distribution_is_its_centre():
    centers = bin_centers(0.0, 1.0, 10)
    logits = torch.full((10,), -1e4)
    logits[3] = 0.0
    assert expected_value(logits, centers).item() == pytest.approx(centers[3].item())


def test_regression_through_the_loss_recovers_a_value():
    hl = HLGauss(-2.0, 2.0, 41)
    logits = torch.zeros(3, 41, requires_grad=True)
    y = torch.tensor([-1.3, 0.2, 1.7])
    opt = torch.optim.Adam([logits], lr=0.3)
    for _ in range(100):
        opt.zero_grad()
        hl.loss(logits, y).sum().backward()
        opt.step()
    assert (hl.value(logits) - y).abs().max() < 0.02


def test_bad_support_is_a_config_error():
    with pytest.raises(ConfigError, match="bins"):
        HLGauss(0.0, 1.0, 1)
    with pytest.raises(ConfigError, match="v_max"):
        HLGauss(1.0, 1.0, 10)
