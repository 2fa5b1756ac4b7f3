"""Wang & Li's rules: measured numbers -> findings that name the layer, the evidence and the fix.

Analysis order (Wang & Li, §1.3.1): low-abstraction outputs, then high-abstraction outputs, then
conv / transposed-conv parameters, then dense parameters. Each rule is a small function of one
layer's numbers and the :class:`~convscope.diagnose.thresholds.Thresholds`; it returns findings
(possibly none).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .stats import LayerStats, ParamStats
from .thresholds import Thresholds

__all__ = [
    "Finding",
    "SEVERITIES",
    "STAGES",
    "ADVICE",
    "CODES",
    "output_findings",
    "param_findings",
]

#: Severities, most severe first. ``note`` marks a limit of the analysis, not a fault.
SEVERITIES = ("error", "warning", "info", "note")

#: Stages in Wang & Li (2020)'s analysis order.
STAGES = ("low-abstraction outputs", "high-abstraction outputs", "conv parameters",
          "dense parameters")

#: The advice of Wang & Li (2020) (and, for the extra rules, the standard remedy) per finding code.
ADVICE: dict[str, str] = {
    "dead-maps": (
        "check the input data, then this layer and the layers before it; change the activation "
        "(e.g. LeakyReLU instead of ReLU) or adjust the structure (Wang & Li removed one of two "
        "ReLU fully connected layers)."
    ),
    "low-diversity": (
        "change how the layer extracts features: add batch normalisation (Wang & Li's fix for "
        "its discriminator)."
    ),
    "near-zero-outputs": (
        "check the activation functions of this layer and the layers before it for dead units "
        "(dead ReLUs); check the scale of the input data."
    ),
    "maps-far-from-input": (
        "feature extraction is too aggressive and loses features: increase the network's "
        "capacity (more channels, less aggressive striding or pooling)."
    ),
    "exploding-outputs": (
        "normalise the input data (e.g. images in [0, 1] or standardised, not 0-255) and add "
        "batch normalisation."
    ),
    "saturated-outputs": (
        "most outputs sit at the activation's bounds, where gradients vanish: normalise the "
        "input of this activation (batch normalisation) or lower the learning rate."
    ),
    "nonfinite-outputs": (
        "find the first layer with NaN/Inf: check the input data for NaN, lower the learning "
        "rate, guard divisions and logarithms."
    ),
    "nonfinite-params": (
        "the weights hold NaN/Inf (training diverged): lower the learning rate, clip gradients, "
        "and restart from the last finite checkpoint."
    ),
    "wide-uniform-params": (
        "a wide, uniform weight distribution marks a poorly trained layer (Wang & Li, §1.3.5); "
        "parameter analysis is auxiliary: confirm with this layer's output findings, then check "
        "the initialisation scale and the learning rate."
    ),
    "concentrated-param-splits": (
        "the output units' merge heights are large and concentrated: the units differ from one "
        "another without structure and extract no effective features (Wang & Li, §1.3.4); train "
        "longer or revisit the learning rate, and confirm with the output findings."
    ),
    "no-clustering": "nothing to fix in the model; give a larger batch or a layer with more "
                     "channels to get the channel tree.",
    "sampled": "nothing to fix; pass larger max_channels / max_elements to analyse more of the layer.",
}

#: Every finding code and its severity.
CODES: dict[str, str] = {
    "nonfinite-outputs": "error",
    "dead-maps": "warning",
    "low-diversity": "warning",
    "near-zero-outputs": "warning",
    "maps-far-from-input": "warning",
    "exploding-outputs": "warning",
    "saturated-outputs": "warning",
    "nonfinite-params": "error",
    "wide-uniform-params": "info",
    "concentrated-param-splits": "info",
    "no-clustering": "note",
    "sampled": "note",
}


@dataclass
class Finding:
    """One diagnosis finding.

    Attributes:
        code: what was found (``dead-maps``, ``low-diversity``, ... see :data:`CODES`).
        layer: module path of the layer.
        severity: ``error``, ``warning``, ``info`` or ``note``.
        stage: which step of Wang & Li (2020)'s order found it (see :data:`STAGES`).
        message: one readable sentence with the numbers.
        evidence: the measured numbers and the thresholds they crossed.
        advice: Wang & Li (2020)'s advice for this finding.
    """

    code: str
    layer: str
    severity: str
    stage: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    advice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        return cls(
            code=d["code"], layer=d["layer"], severity=d["severity"], stage=d["stage"],
            message=d["message"], evidence=dict(d.get("evidence", {})),
            advice=d.get("advice", ""),
        )

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code} at {self.layer}: {self.message}"


def _make(code: str, layer: str, stage: str, message: str, **evidence: Any) -> Finding:
    return Finding(code=code, layer=layer, severity=CODES[code], stage=stage, message=message,
                   evidence=evidence, advice=ADVICE[code])


def _pct(x: float) -> str:
    if 0 < x < 0.001:
        return "<0.1%"
    return f"{100 * x:.1f}%" if x < 0.995 or x == 1 else f"{100 * x:.2f}%"


def output_findings(st: LayerStats, th: Thresholds) -> list[Finding]:
    """Findings for one layer output (rules in the order Wang & Li (2020) name the signs)."""
    stage = STAGES[0] if st.abstraction == "low" else STAGES[1]
    out: list[Finding] = []
    name = st.name
    if st.kind == "other":
        return out
    if st.nonfinite_share > 0:
        bad = round(st.nonfinite_share * st.values)
        out.append(_make(
            "nonfinite-outputs", name, stage,
            f"{bad} of {st.values} values ({_pct(st.nonfinite_share)}) are NaN or Inf.",
            nonfinite_share=st.nonfinite_share, nonfinite=bad, values=st.values,
        ))
    if st.dead_fraction is not None and st.dead_fraction >= th.dead_fraction:
        n_dead = round(st.dead_fraction * st.channels)
        unit = "channels" if st.kind == "maps" else "features"
        out.append(_make(
            "dead-maps", name, stage,
            f"{n_dead} of {st.channels} {unit} ({_pct(st.dead_fraction)}) are all zero over the "
            f"batch (threshold {_pct(th.dead_fraction)}).",
            dead_fraction=st.dead_fraction, dead_channels=n_dead, channels=st.channels,
            dead_map_fraction=st.dead_map_fraction, threshold=th.dead_fraction,
        ))
    if st.merge_median is not None and st.merge_median < th.low_diversity_height:
        out.append(_make(
            "low-diversity", name, stage,
            f"the channel tree merges at a median cosine distance of {st.merge_median:.4f} "
            f"(threshold {th.low_diversity_height}): the maps are nearly all alike.",
            merge_median=st.merge_median, merge_iqr=st.merge_iqr, merge_q90=st.merge_q90,
            clustered=st.clustered, threshold=th.low_diversity_height,
        ))
    if st.near_zero_share is not None and st.near_zero_share >= th.near_zero_share:
        out.append(_make(
            "near-zero-outputs", name, stage,
            f"{_pct(st.near_zero_share)} of the values are within {th.near_zero_eps:g} of 0 "
            f"(threshold {_pct(th.near_zero_share)}).",
            near_zero_share=st.near_zero_share, eps=th.near_zero_eps, rms=st.rms,
            threshold=th.near_zero_share,
        ))
    if (st.abstraction == "low" and st.input_similarity is not None
            and st.input_similarity < th.min_input_similarity):
        out.append(_make(
            "maps-far-from-input", name, stage,
            f"the maps resemble the image little (similarity {st.input_similarity:.3f}, "
            f"threshold {th.min_input_similarity}) although the layer is close to it.",
            input_similarity=st.input_similarity, threshold=th.min_input_similarity,
        ))
    if st.rms is not None and st.rms > th.max_activation_rms:
        out.append(_make(
            "exploding-outputs", name, stage,
            f"root-mean-square value {st.rms:.4g} (threshold {th.max_activation_rms:g}); "
            f"largest absolute value {st.absmax:.4g}.",
            rms=st.rms, absmax=st.absmax, threshold=th.max_activation_rms,
        ))
    if st.saturation is not None and st.saturation >= th.saturated_share:
        out.append(_make(
            "saturated-outputs", name, stage,
            f"{_pct(st.saturation)} of the values sit at the bounds of the {st.type} "
            f"(threshold {_pct(th.saturated_share)}).",
            saturation=st.saturation, threshold=th.saturated_share,
        ))
    if st.merge_median is None and st.nonfinite_share < 1 and st.values:
        why = "; ".join(n for n in st.notes if n.startswith("no clustering")) or (
            "no two live channels to compare" if st.channels >= 2 else
            f"{st.channels} channel: a tree needs at least two"
        )
        out.append(_make("no-clustering", name, stage, why, channels=st.channels,
                         batch=st.shape[0] if st.shape else None))
    if st.sampled:
        out.append(_make(
            "sampled", name, stage,
            "; ".join(n for n in st.notes if "sample" in n),
            clustered=st.clustered, channels=st.channels,
        ))
    return out


def param_findings(st: ParamStats, th: Thresholds) -> list[Finding]:
    """Findings for one weight tensor."""
    stage = STAGES[3] if st.kind == "linear" else STAGES[2]
    out: list[Finding] = []
    name = st.name
    if st.nonfinite_share > 0:
        bad = round(st.nonfinite_share * st.values)
        out.append(_make(
            "nonfinite-params", name, stage,
            f"{bad} of {st.values} weights ({_pct(st.nonfinite_share)}) are NaN or Inf.",
            nonfinite_share=st.nonfinite_share, nonfinite=bad, values=st.values,
        ))
    if st.wide and st.shape_label == "uniform":
        out.append(_make(
            "wide-uniform-params", name, stage,
            f"the weights are uniform (excess kurtosis {st.excess_kurtosis:.2f}) and wide "
            f"(std x sqrt(fan_in) = {st.gain:.2f} > {th.wide_gain}; range "
            f"[{st.min:.3g}, {st.max:.3g}]).",
            excess_kurtosis=st.excess_kurtosis, gain=st.gain, min=st.min, max=st.max,
            wide_gain=th.wide_gain, uniform_kurtosis=th.uniform_kurtosis,
        ))
    if (st.merge_median is not None and st.merge_iqr is not None and st.clustered >= 8
            and st.merge_median > th.split_height and st.merge_iqr < th.split_spread):
        out.append(_make(
            "concentrated-param-splits", name, stage,
            f"the output units' tree splits at large, concentrated heights (median "
            f"{st.merge_median:.3f} > {th.split_height}, IQR {st.merge_iqr:.4f} < "
            f"{th.split_spread}).",
            merge_median=st.merge_median, merge_iqr=st.merge_iqr,
            split_height=th.split_height, split_spread=th.split_spread,
        ))
    if st.sampled:
        out.append(_make(
            "sampled", name, stage, "; ".join(n for n in st.notes if "sample" in n),
            clustered=st.clustered, outputs=st.outputs,
        ))
    return out
