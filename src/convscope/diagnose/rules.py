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
    "profile_findings",
    "explain_zero_weights",
    "zero_weights",
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
    "alike-channel-distributions": (
        "the features' value distributions barely differ, so the layer hands on little that "
        "tells inputs apart (Wang & Li, §1.3.3): add batch normalisation or otherwise change how "
        "the layer extracts features, and check the layers before it for duplicated units."
    ),
    "outlier-outputs": (
        "a few values dominate this layer's output: look for the channels or inputs that "
        "produce them (an exploding unit, an unnormalised input), normalise the input of this "
        "layer (batch normalisation) or clip the activation."
    ),
    "collapsed-param-splits": (
        "most output units split off the tree at one height: they are duplicates (height ~0, "
        "e.g. a constant initialisation that never broke symmetry) or all equally unlike; a "
        "good tree's split points spread evenly (Wang & Li, §1.3.2, §1.3.4). Re-initialise the "
        "layer randomly and train it; confirm with the output findings."
    ),
    "noisy-dense-params": (
        "the dense weights look like noise, with little learned structure (Wang & Li, §1.3.4: "
        "a poor model's heatmap is cluttered); the layer is untrained or trained with too high "
        "a learning rate or too little data: train longer, lower the learning rate, or add "
        "weight decay."
    ),
    "param-depth-profile": (
        "this middle layer's weights are far wider than the network's others; in a good model "
        "they narrow in the middle and widen towards both ends (Wang & Li, §1.3.5). Check its "
        "initialisation scale and learning rate; parameter analysis is auxiliary, so confirm "
        "with this layer's output findings."
    ),
    "zero-weights": (
        "zero-initialised layer: its weights and bias are all zero, so its outputs are zero "
        "whatever the input (no ReLU is at fault). Expected before training for heads "
        "initialised to zero (torchvision's ViT zero-initialises heads.head); after training it "
        "means the layer never learned: check its learning rate, that its parameters are in the "
        "optimiser and that it receives gradients (requires_grad, no detach before it)."
    ),
    "no-clustering": "nothing to fix in the model; give a larger batch or a layer with more "
                     "channels to get the channel tree.",
    "sampled": "nothing to fix; pass larger max_channels / max_elements to analyse more of the layer.",
}

#: Every finding code and its usual severity (``zero-weights`` is ``info`` for the network's
#: head, see :func:`explain_zero_weights`).
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
    "alike-channel-distributions": "warning",
    "outlier-outputs": "warning",
    "collapsed-param-splits": "warning",
    "noisy-dense-params": "info",
    "param-depth-profile": "info",
    "zero-weights": "warning",
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
    if (st.abstraction == "high" and st.channel_distance is not None
            and st.channel_distance < th.min_channel_distance):
        unit = "channels" if st.kind == "maps" else "features"
        out.append(_make(
            "alike-channel-distributions", name, stage,
            f"the live {unit}' value distributions are nearly the same (mean pairwise "
            f"Wasserstein distance {st.channel_distance:.3f} within-channel std, threshold "
            f"{th.min_channel_distance}).",
            channel_distance=st.channel_distance, threshold=th.min_channel_distance,
        ))
    if st.active_kurtosis is not None and st.active_kurtosis > th.outlier_kurtosis:
        out.append(_make(
            "outlier-outputs", name, stage,
            f"the non-zero values are extremely heavy-tailed (excess kurtosis "
            f"{st.active_kurtosis:.1f} > {th.outlier_kurtosis:g}; largest |value| "
            f"{st.absmax:.4g}, root-mean-square {st.rms:.4g}).",
            active_kurtosis=st.active_kurtosis, excess_kurtosis=st.excess_kurtosis,
            skewness=st.skewness, zero_share=st.zero_share, absmax=st.absmax, rms=st.rms,
            threshold=th.outlier_kurtosis,
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
    if (st.split_collapse is not None and st.clustered >= 8
            and st.split_collapse >= th.collapsed_split_share):
        out.append(_make(
            "collapsed-param-splits", name, stage,
            f"{_pct(st.split_collapse)} of the output units' split points lie within "
            f"{th.split_tie_width:g} of one another (threshold {_pct(th.collapsed_split_share)}; "
            f"median height {st.merge_median:.3f}).",
            split_collapse=st.split_collapse, merge_median=st.merge_median,
            merge_q10=st.merge_q10, merge_q90=st.merge_q90, width=th.split_tie_width,
            threshold=th.collapsed_split_share,
        ))
    if st.dense_noise is not None and st.dense_noise >= th.dense_noise:
        out.append(_make(
            "noisy-dense-params", name, stage,
            f"{_pct(st.dense_noise)} of the weight energy lies below the noise edge of the "
            f"singular values (threshold {_pct(th.dense_noise)}): the heatmap is mostly noise.",
            dense_noise=st.dense_noise, threshold=th.dense_noise,
        ))
    if st.sampled:
        out.append(_make(
            "sampled", name, stage, "; ".join(n for n in st.notes if "sample" in n),
            clustered=st.clustered, outputs=st.outputs,
        ))
    return out


def profile_findings(params: list[ParamStats], th: Thresholds) -> list[Finding]:
    """Findings that compare weight tensors along the depth (Wang & Li 2020, §1.3.5); fills
    ``depth`` and ``gain_ratio`` of ``params`` (:func:`~convscope.diagnose.stats.depth_profile`).
    Needs at least three tensors with a gain; the first and the last are never flagged (the
    ends are expected to be wider)."""
    from .stats import depth_profile

    depth_profile(params)
    measured = [p for p in params if p.gain is not None]
    out: list[Finding] = []
    if len(measured) < 3:
        return out
    for p in measured[1:-1]:
        if p.gain_ratio is not None and p.gain_ratio > th.depth_gain_ratio:
            stage = STAGES[3] if p.kind == "linear" else STAGES[2]
            expected = "normal" if p.depth < 1 / 3 else "uniform"
            out.append(_make(
                "param-depth-profile", p.name, stage,
                f"at relative depth {p.depth:.2f} the weights' gain {p.gain:.2f} is "
                f"{p.gain_ratio:.1f}x the network's median (threshold {th.depth_gain_ratio:g}x); "
                f"distribution {p.shape_label} (expected here: {expected}, narrow).",
                depth=p.depth, gain=p.gain, gain_ratio=p.gain_ratio, shape_label=p.shape_label,
                expected_shape=expected, threshold=th.depth_gain_ratio,
            ))
    return out


#: last path components that name a classifier head
HEAD_NAMES = ("head", "heads", "fc", "classifier", "logits", "last_linear")


def zero_weights(st: ParamStats) -> bool:
    """True when a weight tensor (and its bias, if any) is all exactly zero."""
    return (st.values > 0 and st.nonfinite_share == 0 and st.min == 0 and st.max == 0
            and (st.bias_mean is None or (st.bias_mean == 0 and st.bias_std == 0)))


def explain_zero_weights(findings: list[Finding], params: list[ParamStats]) -> list[Finding]:
    """Replace ``dead-maps`` (whose advice blames the activation) by ``zero-weights`` for every
    layer whose weights and bias are all zero: its outputs are zero because of its parameters.
    Severity ``info`` for the network's head (the last weight tensor analysed, or a linear
    layer named ``head``/``fc``/``classifier``...: zero-initialised on purpose, e.g. torchvision's
    ViT), ``warning`` otherwise. A zero layer whose outputs were not analysed gets the finding
    at its parameter stage. ``findings`` is not modified; a new list is returned."""
    zero = {p.name: p for p in params if zero_weights(p)}
    if not zero:
        return list(findings)
    last = params[-1].name if params else None

    def finding(p: ParamStats, stage: str, dead: Finding | None) -> Finding:
        head = p.name == last or (p.kind == "linear"
                                  and p.name.rsplit(".", 1)[-1] in HEAD_NAMES)
        what = "outputs" if p.kind == "linear" else "output channels"
        told = (f"; so all {dead.evidence.get('channels', p.outputs)} of its {what} are zero "
                "over the batch") if dead is not None else ""
        evidence: dict[str, Any] = dict(dead.evidence) if dead is not None else {}
        evidence.update(weights=p.values, weight_shape=list(p.shape), head=head,
                        has_bias=p.bias_mean is not None)
        f = _make("zero-weights", p.name if dead is None else dead.layer, stage,
                  f"all {p.values} weights{' and the bias' if p.bias_mean is not None else ''} "
                  f"are exactly zero{told}"
                  + (" (a zero-initialised head)." if head else "."), **evidence)
        f.severity = "info" if head else "warning"
        return f

    out: list[Finding] = []
    explained: set[str] = set()
    for f in findings:
        base = f.layer.split(":", 1)[0]
        if f.code == "dead-maps" and base in zero:
            out.append(finding(zero[base], f.stage, f))
            explained.add(base)
        else:
            out.append(f)
    for name, p in zero.items():
        if name not in explained:
            out.append(finding(p, STAGES[3] if p.kind == "linear" else STAGES[2], None))
    return out
