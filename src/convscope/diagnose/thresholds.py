"""The named, documented thresholds of the diagnosis rules (all overridable)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import InputError, suggest

__all__ = ["Thresholds"]


@dataclass(frozen=True)
class Thresholds:
    """Thresholds of :func:`convscope.diagnose.diagnose`. Override any of them::

        cs.diagnose.diagnose(model, x, thresholds={"dead_fraction": 0.5})
        cs.diagnose.diagnose(model, x, thresholds=Thresholds(low_diversity_height=0.02))

    Measurement settings (they change the per-layer numbers):

    Attributes:
        dead_atol: a channel (feature) is *dead* when every value over the batch (and space) has
            ``|x| <= dead_atol``. 0 means exactly zero, which is what a dead ReLU gives.
        near_zero_eps: a value counts as *near zero* when ``|x| <= near_zero_eps``.
        saturation_margin: a value of a bounded activation (tanh, sigmoid, hardtanh, softsign,
            ReLU6) is *saturated* when it lies within this fraction of the output range of a
            bound (0.01: tanh outputs beyond +-0.98).
        low_abstraction_min_scale: a 4-D output is *low-abstraction* (Wang & Li 2020: close to an
            image at the input or output) when its smaller spatial side is at least this
            fraction of the reference image's smaller side; everything else (2-D outputs, small
            maps) is *high-abstraction*.

    Rule thresholds (a finding fires when the measured number crosses them):

    Attributes:
        dead_fraction: ``dead-maps`` fires when at least this share of a layer's channels
            (features) is dead.
        low_diversity_height: ``low-diversity`` fires when the median single-linkage merge height
            of the live channels is below this cosine distance (Wang & Li 2020: "split points close
            to 0").
        near_zero_share: ``near-zero-outputs`` fires when at least this share of a layer's
            values is near zero (a healthy ReLU layer holds about half zeros).
        min_input_similarity: ``maps-far-from-input`` fires on a low-abstraction layer whose
            maps resemble the reference image less than this (mean over live channels and
            samples of the best absolute correlation with a channel of the resized image).
        max_activation_rms: ``exploding-outputs`` fires when a layer's root-mean-square value
            exceeds this (healthy layers are of order 1).
        saturated_share: ``saturated-outputs`` fires when at least this share of a bounded
            activation's values is saturated.
        wide_gain: a weight tensor is *wide* when ``std * sqrt(fan_in)`` exceeds this
            (PyTorch's default init gives 0.58, Kaiming-normal 1.41).
        uniform_kurtosis: a weight distribution is *uniform* when its excess kurtosis is
            below this (uniform: -1.2, normal: 0); ``wide-uniform-params`` needs wide and
            uniform.
        heavy_kurtosis: excess kurtosis above this labels the distribution *heavy-tailed*.
        split_spread: ``concentrated-param-splits`` (Wang & Li 2020, §1.3.4: merge heights of the
            kernels large *and* concentrated) fires when the interquartile range of a
            parameter tree's merge heights is below this ...
        split_height: ... while their median is above this.
        split_tie_width: window (cosine distance) in which merge heights count as one split
            point for ``split_collapse``.
        collapsed_split_share: ``collapsed-param-splits`` (Wang & Li 2020, §1.3.2 and §1.3.4:
            a good tree's split points spread evenly and widely) fires when at least this share
            of a parameter tree's merge heights fits in one ``split_tie_width`` window.
        min_channel_distance: ``alike-channel-distributions`` (Wang & Li 2020, §1.3.3: the
            features' value distributions should differ a lot) fires on a high-abstraction
            output whose ``channel_distance`` (mean pairwise 1-Wasserstein distance over the mean
            within-channel std) is below this.
        outlier_kurtosis: ``outlier-outputs`` fires when the excess kurtosis of a layer's
            non-zero values exceeds this (normal 0, half-normal 0.87, exponential 6).
        dense_noise: ``noisy-dense-params`` (Wang & Li 2020, §1.3.4: a poor model's dense
            heatmap is cluttered and noisy) fires when at least this share of a dense weight's
            energy lies below the i.i.d.-noise edge of its singular values.
        depth_gain_ratio: ``param-depth-profile`` (Wang & Li 2020, §1.3.5: weights narrow in the
            middle of the network, wider at both ends) fires when a weight tensor that is neither
            the first nor the last has a gain more than this many times the median gain.
    """

    dead_atol: float = 0.0
    near_zero_eps: float = 1e-3
    saturation_margin: float = 0.01
    low_abstraction_min_scale: float = 0.125
    dead_fraction: float = 0.25
    low_diversity_height: float = 0.05
    near_zero_share: float = 0.95
    min_input_similarity: float = 0.2
    max_activation_rms: float = 100.0
    saturated_share: float = 0.5
    wide_gain: float = 3.0
    uniform_kurtosis: float = -0.9
    heavy_kurtosis: float = 1.0
    split_spread: float = 0.02
    split_height: float = 0.9
    split_tie_width: float = 0.002
    collapsed_split_share: float = 0.5
    min_channel_distance: float = 0.05
    outlier_kurtosis: float = 50.0
    dense_noise: float = 0.95
    depth_gain_ratio: float = 3.0

    def to_dict(self) -> dict[str, float]:
        """Plain dict of every threshold."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Thresholds:
        """Build from a dict (unknown keys raise :class:`InputError`)."""
        return cls().updated(d)

    def updated(self, overrides: dict[str, Any] | None) -> Thresholds:
        """A copy with ``overrides`` applied; unknown names raise :class:`InputError`."""
        if not overrides:
            return self
        names = [f.name for f in fields(self)]
        for k, v in overrides.items():
            if k not in names:
                raise InputError(
                    f"unknown threshold {k!r}." + suggest(k, names)
                    + f" Known thresholds: {', '.join(names)}."
                )
            try:
                float(v)
            except (TypeError, ValueError):
                raise InputError(f"threshold {k!r} must be a number, got {v!r}.") from None
        return replace(self, **{k: float(v) for k, v in overrides.items()})

    @classmethod
    def coerce(cls, value: Any) -> Thresholds:
        """Accept ``None`` (defaults), a :class:`Thresholds` or a dict of overrides."""
        if value is None:
            return cls()
        if isinstance(value, Thresholds):
            return value
        if isinstance(value, dict):
            return cls().updated(value)
        raise InputError(
            f"thresholds must be a Thresholds, a dict of overrides or None, got "
            f"{type(value).__name__}."
        )
