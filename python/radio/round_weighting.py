"""How much each calibration round's squared gradients count (``QuantConfig.round_weighting``).

From round 2 on, the gradients are measured on the QUANTIZED working model (method.md §2.2 item
6), and their scale follows the quantization error: at 2.5 bpw on SmolLM2-135M, round 2's total
squared gradient is 1400x round 1's, 98.7% of it in blocks 0-9 (issue 5). Summed as they come
(``"cumulative"``, the paper's cumulative mean: every sequence weighs the same), such a round
drowns the others and the late blocks look insensitive.

``"normalized"`` (the default since the H100 comparison at six rates, docs/design.md) scales
every round's statistics (the per-group and per-row sums of squared
gradients, not the input means) so that their total over all layers equals round 1's: every
round has the same say in the RELATIVE sensitivities. The allocation only compares sensitivities
(``radio._core.allocate`` takes a prefix of the increments sorted by ``coef / weight``; a
``max_distortion`` target is relative to the all-0-bit distortion; the row and column orders sort
``log2 G^2`` plus per-layer terms), so a global scale changes nothing, and round 1 (scale 1) is
bit-identical in both modes.

The scaling runs after the round's statistics are summed over the ranks (every rank then holds
the same sums and computes the same scale). Round 1's total is the reference; it is kept in the
round history (``"gradient_mass"``), which checkpoints save and restore exactly (JSON floats
round-trip), so a resumed run scales alike.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

ROUND_WEIGHTINGS = ("cumulative", "normalized")

__all__ = ["ROUND_WEIGHTINGS", "RoundWeighting", "gradient_mass"]


def gradient_mass(states: Sequence) -> float:
    """Total squared gradient over all layers (the per-row sums: float64, and the same total as
    the per-group sums)."""
    if not states:
        return 0.0
    # One reduction on the device and one transfer (not one host sync per layer, twice a round).
    return float(torch.stack([s.row_g2_sum.sum() for s in states]).sum())


class RoundWeighting:
    """Call ``begin_round`` before the round's backward passes (before the ranks clear their
    local statistics) and ``end_round`` after the statistics are summed over the ranks.

    ``history``: the round history so far (a resumed run's), whose first positive
    ``gradient_mass`` is the reference."""

    def __init__(self, mode: str, history: Optional[List[dict]] = None) -> None:
        if mode not in ROUND_WEIGHTINGS:
            raise ValueError(f"round_weighting must be one of {ROUND_WEIGHTINGS}, got {mode!r}")
        self.mode = mode
        self.reference: Optional[float] = None
        for entry in history or []:
            mass = entry.get("gradient_mass")
            if mass is not None and mass > 0:
                self.reference = float(mass)
                break
        self._previous = None
        self._mass_before = 0.0

    @torch.no_grad()
    def begin_round(self, states: Sequence) -> None:
        """``normalized``: set the totals of the earlier rounds aside and start every rank's
        accumulators from zero, so that after the all-reduce they hold this round alone."""
        self._mass_before = gradient_mass(states)  # every rank holds the totals here
        if self.mode != "normalized":
            return
        self._previous = [(s.g2_sum.clone(), s.row_g2_sum.clone()) for s in states]
        for s in states:
            s.g2_sum.zero_()
            s.row_g2_sum.zero_()

    @torch.no_grad()
    def end_round(self, states: Sequence) -> float:
        """Returns the round's own gradient mass (for the history); ``normalized``: adds the
        round, scaled to the reference, to the earlier rounds' totals."""
        if self.mode != "normalized":
            return gradient_mass(states) - self._mass_before
        mass = gradient_mass(states)
        if self.reference is None and mass > 0:
            self.reference = mass  # round 1 (or the first round with any gradient)
        scale = self.reference / mass if mass > 0 else 1.0
        for s, (g2_prev, row_prev) in zip(states, self._previous):
            s.g2_sum.mul_(scale).add_(g2_prev)
            s.row_g2_sum.mul_(scale).add_(row_prev)
        self._previous = None
        return mass
