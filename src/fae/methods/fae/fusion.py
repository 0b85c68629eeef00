"""Fusing FAE's structural evidence with the intensity evidence thresholding uses.

Each evidence is read against healthy tissue, s(v) = −log P_healthy(value ≥ v) (its
*surprisal*), off quantiles of healthy brain pixels (the calibration slices: no lesion label is
used) with log-linear interpolation between them and the last segment's slope beyond the
highest one, so that the scale stays unbounded and monotone. The fused map is the intensity's
surprisal weighted by how unusual the structure is, P_healthy(structure < u) = 1 − e^(−s): a
soft AND in which a bright pixel counts fully only where FAE also finds the structure unusual
(the weight runs from 0.5 at the healthy median to 1). Nothing is fitted on lesions and there is
no weight to tune. The plain sum of both surprisals (Fisher's combination) was tried first and
dropped: the structural surprisal's noise diluted the intensity evidence (README, "Quality on
real scans").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# upper-tail levels of the healthy distribution whose values are kept (the median and up)
LEVELS = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)
_P99 = LEVELS.index(0.99)


class TailSurprisal(nn.Module):
    """v → −log P_healthy(V ≥ v), fitted by :meth:`fit` on healthy values (identity-free until
    then: all knots 0)."""

    def __init__(self) -> None:
        super().__init__()
        levels = torch.tensor(LEVELS, dtype=torch.float64)
        self.register_buffer("surprisal", (-torch.log1p(-levels)).float())
        self.register_buffer("knots", torch.zeros(len(LEVELS)))

    def fit(self, values: Tensor) -> None:
        """Set the knots to the ``LEVELS`` quantiles of healthy ``values`` (1-D), made strictly
        increasing so that every segment has a finite slope."""
        v = values.double().flatten()
        v = v[torch.isfinite(v)]
        if v.numel() < 2:
            raise ValueError("the fusion needs healthy brain pixels to fit on")
        if v.numel() > 2**24:  # torch.quantile's limit; an even subsample keeps the quantiles
            v = v[torch.arange(2**24, dtype=torch.int64) * (v.numel() - 1) // (2**24 - 1)]
        q = torch.quantile(v, torch.tensor(LEVELS, dtype=torch.float64))
        spread = float(q[-1] - q[0]) or 1.0
        q = torch.maximum(q, torch.cummax(q, 0).values)
        q = q + torch.arange(len(q), dtype=torch.float64) * spread * 1e-6
        self.knots.copy_(q.float())

    def forward(self, v: Tensor) -> Tensor:
        q, s = self.knots.to(v.dtype), self.surprisal.to(v.dtype)
        # (an export, of a calibrated run only, cannot branch on the knots' values)
        if not torch.compiler.is_exporting() and not bool(q[-1] > q[0]):
            raise RuntimeError("the fusion's healthy distributions are not fitted: calibrate first")
        # the segment of each value: how many knots lie below it (searchsorted, as plain
        # comparisons, which ONNX has)
        i = (v.unsqueeze(-1) > q).sum(-1).clamp(1, len(q) - 1)
        q0, q1, s0, s1 = q[i - 1], q[i], s[i - 1], s[i]
        inside = s0 + (v.clamp_min(q[0]) - q0) * (s1 - s0) / (q1 - q0)
        # beyond the highest knot: the slope from the 99th percentile up, robust to tied knots
        tail = (s[-1] - s[_P99]) / (q[-1] - q[_P99])
        beyond = s[-1] + (v - q[-1]) * tail
        return torch.where(v > q[-1], beyond, inside).clamp_min(s[0])
