"""QuantConfig: every hyperparameter of the Radio pipeline, validated in one place.

Two presets exist. ``"paper"`` carries the settings the Radio paper quotes (docs/method.md §3.3 and
§9.2): 16 sequences per round, 17 sampled tokens per 2048-token sequence, 64 rounds, 256 rows per
group, 1024 output principal directions. ``"cpu"`` keeps the method and shrinks the work (fewer
rounds, shorter sequences) so that a small model quantizes in seconds without a GPU.
``QuantConfig.for_device`` picks the preset from the device; ``radio.quantize`` does that when no
config is given and prints the choice in its report.

Fields left at ``None`` are "scaled to the model" when the pipeline starts (``resolved``): the
sequence length becomes ``min(2048, the model's context)``, the group size is clamped to each
layer's rows, the number of principal directions to the model's width.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

ESTIMATORS = ("random_sign", "per_token")
QUANTIZERS = ("laplace", "uniform")
ROUNDINGS = ("rd", "nearest")
ROUND_WEIGHTINGS = ("cumulative", "normalized")  # radio.round_weighting
REFINE_SEARCHES = ("full", "coarse")  # the same names as radio.torch_quant.REFINE_SEARCHES
PRESETS = ("paper", "cpu")


def _check_int(name: str, value, low: int, high: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"QuantConfig.{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"QuantConfig.{name} must be {span}, got {value}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"QuantConfig.{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass
class QuantConfig:
    """Hyperparameters of ``radio.quantize`` (the targets ``bits``/``size``/``max_distortion``
    are arguments of ``quantize`` itself).

    Grouping and quantizer
        rows_per_group: rows per group ``gs`` (docs/format.md); clamped to each layer's rows.
        quantizer: ``"laplace"`` (companded, the method's) or ``"uniform"``.
        symmetric: uniform quantizer only: location fixed at 0.
        max_depth: largest bit depth a unit may get (<= 8).
        rounding: ``"rd"`` rounds a fractional depth up past 0.4431 (the Lagrangian-optimal point,
            method.md §3.1); ``"nearest"`` rounds to nearest.
        refine: run the per-group scale/shift search in the final quantization.
        refine_search: ``"full"`` tries all 33 grid points per parameter; ``"coarse"`` every 4th,
            then the 3 on each side of the best (15; the ``cpu`` preset's, for time).
        refine_every: also refine every this many rounds during calibration (0: only at the end;
            the paper's working model uses the plain quantizer between validations).
        bias_correction: ``b <- b - (W_hat - W) x_mean`` after every re-quantization.

    Sensitivity estimation
        rounds: number of allocate-and-requantize rounds.
        sequences_per_round: calibration sequences whose gradients are accumulated per round.
        seq_len: tokens per calibration sequence (None: ``min(2048, model context)``).
        tokens_per_sequence: sampled output positions per sequence (17 at 2048 tokens, evenly
            spaced, the last token included).
        pca_components: output principal directions cycled through, one per sequence.
        pca_sequences: calibration sequences used to estimate the output covariance (None: all).
        estimator: ``"random_sign"`` (one backward pass per micro-batch on a Rademacher
            combination of the sampled projections; unbiased for the per-token sum) or
            ``"per_token"`` (each sampled token's own gradient, the paper's; in a few batched
            passes per micro-batch, ``sensitivity.per_token_batched``).
        micro_batch: sequences per forward/backward pass (None: chosen from memory).
        round_weighting: how the rounds' squared gradients add up (``radio.round_weighting``).
            ``"normalized"`` (default): each round's statistics scaled so that their total
            over all layers equals round 1's, every round having the same say in the relative
            sensitivities (the allocation is invariant to a global scale). ``"cumulative"``:
            as measured, every sequence weighing the same (the paper's cumulative mean). From
            round 2 on the gradients are measured on the quantized model, and at low rates
            their scale explodes in the early blocks (issue 5), which the cumulative mean
            follows. SmolLM2-135M on an H100 (16 rounds x 16 x 2048 tokens, whole WikiText-2 /
            SOTU 1990-2021 texts, bench/RESULTS.md, session 4), normalized vs cumulative:
            2.5 bpw 229 / 154 vs 9380 / 1530; 3.0 bpw 56.6 / 45.9 vs 60.9 / 51.1; 3.25-4.25
            bpw within +-1 ppl of each other (4.0: 26.3 / 25.6 vs 26.5 / 25.7).

    Calibration data
        calib_sequences: windows cut from calibration text (fixed-seed offsets).
        generate_sequences: sequences sampled from the model when no calibration data is given.
        generate_length: their length in tokens (None: ``min(seq_len, 512)``, as sampling is
            sequential and slow).

    Placement and misc
        include_lm_head: quantize the LM head too (its sensitivity is then measured in logit
            space for every layer). Embeddings always stay full precision.
        checkpointing: recompute each decoder block in the backward pass (``None``: on when the
            activations would not fit in ``activation_budget_gb``).
        offload_originals: keep the original weights in CPU memory between rounds (``None``: on
            for CUDA models whose quantized layers exceed 1 GiB).
        activation_budget_gb: GiB of GPU memory the calibration activations may use (None: what
            keeps the whole run near 20 GiB, see ``quantize.activation_budget_gb``).
        seed: every random choice (windows, sampling, signs) derives from it.
        progress: show tqdm progress bars.
        preset: name of the preset the values came from (reported).
    """

    rows_per_group: int = 256
    quantizer: str = "laplace"
    symmetric: bool = False
    max_depth: int = 8
    rounding: str = "rd"
    refine: bool = True
    refine_search: str = "full"
    refine_every: int = 0
    bias_correction: bool = True

    rounds: int = 64
    sequences_per_round: int = 16
    seq_len: Optional[int] = None
    tokens_per_sequence: int = 17
    pca_components: int = 1024
    pca_sequences: Optional[int] = None
    estimator: str = "random_sign"
    micro_batch: Optional[int] = None
    round_weighting: str = "normalized"

    calib_sequences: int = 128
    generate_sequences: int = 16
    generate_length: Optional[int] = None

    include_lm_head: bool = False
    checkpointing: Optional[bool] = None
    offload_originals: Optional[bool] = None
    activation_budget_gb: Optional[float] = None
    seed: int = 0
    progress: bool = True
    preset: str = "paper"
    version: int = 1

    def __post_init__(self) -> None:
        _check_int("rows_per_group", self.rows_per_group, 1)
        _check_choice("quantizer", self.quantizer, QUANTIZERS)
        if self.symmetric and self.quantizer != "uniform":
            raise ValueError("QuantConfig.symmetric=True needs quantizer='uniform', "
                             f"got quantizer={self.quantizer!r}")
        _check_int("max_depth", self.max_depth, 1, 8)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        _check_choice("refine_search", self.refine_search, REFINE_SEARCHES)
        _check_int("refine_every", self.refine_every, 0)
        _check_int("rounds", self.rounds, 1)
        _check_int("sequences_per_round", self.sequences_per_round, 1)
        if self.seq_len is not None:
            _check_int("seq_len", self.seq_len, 2)
        _check_int("tokens_per_sequence", self.tokens_per_sequence, 1)
        if self.seq_len is not None and self.tokens_per_sequence > self.seq_len:
            raise ValueError(f"QuantConfig.tokens_per_sequence={self.tokens_per_sequence} exceeds "
                             f"seq_len={self.seq_len}; expected at most seq_len")
        _check_int("pca_components", self.pca_components, 1)
        if self.pca_sequences is not None:
            _check_int("pca_sequences", self.pca_sequences, 1)
        _check_choice("estimator", self.estimator, ESTIMATORS)
        if self.micro_batch is not None:
            _check_int("micro_batch", self.micro_batch, 1)
        _check_choice("round_weighting", self.round_weighting, ROUND_WEIGHTINGS)
        _check_int("calib_sequences", self.calib_sequences, 1)
        _check_int("generate_sequences", self.generate_sequences, 1)
        if self.generate_length is not None:
            _check_int("generate_length", self.generate_length, 2)
        budget = self.activation_budget_gb
        if budget is not None and (isinstance(budget, bool) or not isinstance(
                budget, (int, float)) or not (math.isfinite(budget) and budget > 0)):
            raise ValueError(f"QuantConfig.activation_budget_gb must be a positive number, "
                             f"got {budget!r}")
        _check_int("seed", self.seed, 0)
        _check_choice("preset", self.preset, PRESETS + ("custom",))
        if self.version != 1:
            raise ValueError(f"QuantConfig.version must be 1, got {self.version!r}")

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides) -> "QuantConfig":
        """The settings quoted by the Radio paper (for a GPU)."""
        return cls(**{"preset": "paper", **overrides})

    @classmethod
    def cpu(cls, **overrides) -> "QuantConfig":
        """Fewer rounds and shorter sequences: minutes, not hours, without a GPU."""
        values = dict(preset="cpu", rounds=8, sequences_per_round=4, seq_len=256,
                      tokens_per_sequence=9, pca_components=256, pca_sequences=32,
                      calib_sequences=32, generate_sequences=8, generate_length=128,
                      refine_search="coarse")
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_device(cls, device: Union[str, "torch.device"], **overrides) -> "QuantConfig":
        """``paper`` on a CUDA device, ``cpu`` otherwise."""
        kind = device.type if hasattr(device, "type") else str(device).split(":")[0]
        return cls.paper(**overrides) if kind == "cuda" else cls.cpu(**overrides)

    def replace(self, **changes) -> "QuantConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- scaling to a model --------------------------------------------------------------------
    def resolved_seq_len(self, model_context: Optional[int]) -> int:
        """``seq_len``, or ``min(2048, model context)`` when unset."""
        if self.seq_len is not None:
            return self.seq_len if model_context is None else min(self.seq_len, model_context)
        return 2048 if model_context is None else min(2048, model_context)

    def resolved_generate_length(self, seq_len: int) -> int:
        return min(seq_len, self.generate_length if self.generate_length is not None else 512)

    def rows_per_group_for(self, out_features: int) -> int:
        """The group size of a layer with ``out_features`` rows (clamped to its rows)."""
        return min(self.rows_per_group, out_features)
