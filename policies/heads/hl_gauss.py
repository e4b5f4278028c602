"""HL-Gauss: value regression as classification over fixed bins (arXiv 2403.03950).

A scalar target y becomes a histogram over B equal bins on [v_min, v_max]: the mass a Gaussian
N(y, sigma^2) puts in each bin, renormalised to the support,

    p_i = [Phi((e_{i+1} - y) / sigma) - Phi((e_i - y) / sigma)] / [Phi((v_max - y) / sigma) - Phi((v_min - y) / sigma)]

with Phi(z) = (1 + erf(z / sqrt 2)) / 2 and e_0 = v_min < e_1 < ... < e_B = v_max the bin edges. The
network outputs B logits; the loss is the cross-entropy to p, and the prediction is the expected
value sum_i softmax(logits)_i c_i over the bin centres c_i. sigma defaults to 0.75 bin widths.

Targets outside the support are clamped to [v_min, v_max] before projection, so a value head can
never be asked for mass outside its bins; choose the support to cover the return range.
"""

from __future__ import annotations

import math

import torch

from tandem.core.errors import ConfigError
from tandem.core.validate import positive


def bin_edges(v_min: float, v_max: float, bins: int) -> torch.Tensor:
    """float32[bins + 1], the bin edges on [v_min, v_max]."""
    return torch.linspace(v_min, v_max, bins + 1, dtype=torch.float32)


def bin_centers(v_min: float, v_max: float, bins: int) -> torch.Tensor:
    """float32[bins], the bin centres."""
    edges = bin_edges(v_min, v_max, bins)
    return (edges[:-1] + edges[1:]) / 2


def project(target: torch.Tensor, edges: torch.Tensor, sigma: float) -> torch.Tensor:
    """Histogram of N(target, sigma^2) over the bins, renormalised to the support.

    Args:
        target: float[...], scalar targets (clamped to [edges[0], edges[-1]]).
        edges: float[B + 1], increasing bin edges.
        sigma: Gaussian standard deviation, in value units (> 0).

    Returns:
        float[..., B], non-negative, summing to 1 along the last axis.
    """
    y = target.to(edges.dtype).clamp(float(edges[0]), float(edges[-1])).unsqueeze(-1)
    cdf = torch.special.erf((edges - y) / (math.sqrt(2.0) * sigma))  # [..., B + 1], = 2 Phi - 1
    mass = cdf[..., 1:] - cdf[..., :-1]
    z = (cdf[..., -1:] - cdf[..., :1]).clamp_min(1e-12)
    return mass / z


def cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """float[...]: -sum_i probs_i log softmax(logits)_i, for logits and probs float[..., B]."""
    return -(probs * torch.log_softmax(logits, dim=-1)).sum(dim=-1)


def expected_value(logits: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """float[...]: sum_i softmax(logits)_i centers_i, for logits float[..., B] and centers float[B]."""
    return torch.softmax(logits, dim=-1) @ centers


class HLGauss:
    """The HL-Gauss support and its three operations, holding the edges/centres on one device.

    Args:
        v_min, v_max: value support (v_min < v_max).
        bins: number of bins B (>= 2).
        sigma_ratio: sigma as a multiple of the bin width (default 0.75).
        device: torch device of the edge and centre tensors.
    """

    def __init__(self, v_min: float, v_max: float, bins: int, sigma_ratio: float = 0.75,
                 device: str | torch.device = "cpu") -> None:
        if int(bins) < 2:
            raise ConfigError("bins", bins, "must be >= 2")
        if not v_max > v_min:
            raise ConfigError("v_max", v_max, f"must be > v_min ({v_min})")
        positive("sigma_ratio", sigma_ratio)
        self.v_min, self.v_max, self.bins = float(v_min), float(v_max), int(bins)
        self.bin_width = (self.v_max - self.v_min) / self.bins
        self.sigma = sigma_ratio * self.bin_width
        self.edges = bin_edges(v_min, v_max, bins).to(device)
        self.centers = bin_centers(v_min, v_max, bins).to(device)

    def to(self, device: str | torch.device) -> HLGauss:
        """Move the tensors to ``device`` (in place); returns self."""
        self.edges, self.centers = self.edges.to(device), self.centers.to(device)
        return self

    def project(self, target: torch.Tensor) -> torch.Tensor:
        """float[..., B] target histogram for scalar targets float[...]."""
        return project(target, self.edges, self.sigma)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """float[...] cross-entropy of logits float[..., B] against the projection of target float[...]."""
        return cross_entropy(logits, self.project(target))

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """float[...] expected value of logits float[..., B]."""
        return expected_value(logits, self.centers)
