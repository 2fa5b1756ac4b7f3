"""The diagnosis :class:`Report`: findings in Wang & Li's order plus the per-layer numbers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .rules import SEVERITIES, STAGES, Finding
from .stats import LayerStats, ParamStats
from .thresholds import Thresholds

__all__ = ["Report", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN / Inf floats become None, tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return _clean(obj.item())
        except (TypeError, ValueError):
            return str(obj)
    return obj


@dataclass
class Report:
    """What :func:`~convscope.diagnose.diagnose` found.

    Attributes:
        findings: :class:`~convscope.diagnose.rules.Finding` s in Wang & Li's order (low- then
            high-abstraction outputs, conv then dense parameters; within a stage by layer order).
        layers: per-output numbers (:class:`~convscope.diagnose.stats.LayerStats`), in execution
            order.
        params: per-weight numbers (:class:`~convscope.diagnose.stats.ParamStats`).
        thresholds: the :class:`~convscope.diagnose.thresholds.Thresholds` used.
        meta: model class, input shape, reference image, seconds, ...
        output_views, param_views: the figure data per layer when ``views=True`` was asked
            (not part of :meth:`to_dict`; store them with their own ``to_dict``).

    ``print(report)`` gives readable text; :meth:`to_dict` / :meth:`from_dict` and
    :meth:`to_json` / :meth:`from_json` round-trip; :meth:`to_frame`, :meth:`layers_frame` and
    :meth:`params_frame` give DataFrames.
    """

    findings: list[Finding] = field(default_factory=list)
    layers: list[LayerStats] = field(default_factory=list)
    params: list[ParamStats] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)
    meta: dict[str, Any] = field(default_factory=dict)
    output_views: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    param_views: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- queries ----------------------------------------------------------------------------

    def select(
        self, code: str | None = None, layer: str | None = None, severity: str | None = None
    ) -> list[Finding]:
        """Findings matching every given filter (exact matches; :attr:`problems` gives all
        warnings and errors)."""
        return [
            f for f in self.findings
            if (code is None or f.code == code)
            and (layer is None or f.layer == layer)
            and (severity is None or f.severity == severity)
        ]

    @property
    def problems(self) -> list[Finding]:
        """Findings of severity ``error`` or ``warning``."""
        return [f for f in self.findings if f.severity in ("error", "warning")]

    @property
    def ok(self) -> bool:
        """True when nothing of severity ``warning`` or ``error`` was found."""
        return not self.problems

    def codes(self) -> set[str]:
        """The distinct finding codes."""
        return {f.code for f in self.findings}

    def layer(self, name: str) -> LayerStats:
        """The numbers of one output layer."""
        for st in self.layers:
            if st.name == name:
                return st
        from ..errors import LayerNotFoundError, suggest

        raise LayerNotFoundError(
            f"no output layer {name!r} in this report." + suggest(name, [s.name for s in self.layers])
        )

    def param(self, name: str) -> ParamStats:
        """The numbers of one weight tensor."""
        for st in self.params:
            if st.name == name:
                return st
        from ..errors import LayerNotFoundError, suggest

        raise LayerNotFoundError(
            f"no parameter layer {name!r} in this report."
            + suggest(name, [s.name for s in self.params])
        )

    def __len__(self) -> int:
        return len(self.findings)

    # -- text -------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of findings per severity."""
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    def headline(self) -> str:
        c = self.counts()
        model = self.meta.get("model", "model")
        shape = self.meta.get("input_shape")
        on = f" on inputs {shape}" if shape else ""
        return (
            f"Diagnosis of {model}{on}: {c['error']} error(s), {c['warning']} warning(s), "
            f"{c['info']} info, {c['note']} note(s) — {len(self.layers)} outputs, "
            f"{len(self.params)} weight tensors analysed."
        )

    def to_text(self, notes: bool = True, numbers: bool = True) -> str:
        """Readable text: headline, findings per stage (Wang & Li's order) with their evidence
        and advice (given once per code), then tables of the per-layer numbers."""
        lines = [self.headline(), ""]
        advised: set[str] = set()
        for k, stage in enumerate(STAGES, 1):
            fs = [f for f in self.findings if f.stage == stage and (notes or f.severity != "note")]
            lines.append(f"{k}. {stage[0].upper()}{stage[1:]}")
            if not fs:
                lines.append("   no findings")
            for f in fs:
                lines.append(f"   [{f.severity}] {f.code} at {f.layer}: {f.message}")
                if f.severity != "note" and f.code not in advised:
                    lines.append(f"      advice: {f.advice}")
                    advised.add(f.code)
            lines.append("")
        if numbers and self.layers:
            lines.append("Per-layer numbers (outputs):")
            lines.append(
                f"   {'layer':<24} {'abstr':<5} {'shape':<18} {'dead':>6} {'~0':>6} "
                f"{'merge':>7} {'sim':>6} {'rms':>9} {'chdist':>7} {'kurt+':>7}"
            )
            for s in self.layers:
                lines.append(
                    f"   {s.name[:24]:<24} {s.abstraction:<5} {str(s.shape)[:18]:<18} "
                    f"{_fmt(s.dead_fraction, '%'):>6} {_fmt(s.near_zero_share, '%'):>6} "
                    f"{_fmt(s.merge_median, '.3f'):>7} {_fmt(s.input_similarity, '.2f'):>6} "
                    f"{_fmt(s.rms, '.3g'):>9} {_fmt(s.channel_distance, '.3f'):>7} "
                    f"{_fmt(s.active_kurtosis, '.1f'):>7}"
                )
            lines.append("")
        if numbers and self.params:
            lines.append("Per-layer numbers (weights):")
            lines.append(
                f"   {'layer':<24} {'kind':<6} {'shape':<18} {'dist':<12} {'gain':>6} "
                f"{'kurt':>6} {'merge':>7} {'iqr':>7} {'coll':>5} {'noise':>6} {'depth':>5} "
                f"{'xgain':>6}"
            )
            for p in self.params:
                lines.append(
                    f"   {p.name[:24]:<24} {p.kind:<6} {str(p.shape)[:18]:<18} "
                    f"{p.shape_label:<12} {_fmt(p.gain, '.2f'):>6} "
                    f"{_fmt(p.excess_kurtosis, '.2f'):>6} {_fmt(p.merge_median, '.3f'):>7} "
                    f"{_fmt(p.merge_iqr, '.3f'):>7} {_fmt(p.split_collapse, '%'):>5} "
                    f"{_fmt(p.dense_noise, '%'):>6} {_fmt(p.depth, '.2f'):>5} "
                    f"{_fmt(p.gain_ratio, '.2f'):>6}"
                )
        return "\n".join(lines).rstrip() + "\n"

    def __str__(self) -> str:
        return self.to_text()

    # -- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (views are left out)."""
        return _clean({
            "schema": SCHEMA_VERSION,
            "findings": [f.to_dict() for f in self.findings],
            "layers": [s.to_dict() for s in self.layers],
            "params": [p.to_dict() for p in self.params],
            "thresholds": self.thresholds.to_dict(),
            "meta": dict(self.meta),
        })

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Inverse of :meth:`to_dict`."""
        return cls(
            findings=[Finding.from_dict(f) for f in d.get("findings", [])],
            layers=[LayerStats.from_dict(s) for s in d.get("layers", [])],
            params=[ParamStats.from_dict(p) for p in d.get("params", [])],
            thresholds=Thresholds.from_dict(d.get("thresholds", {})),
            meta=dict(d.get("meta", {})),
        )

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as a JSON string (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    def to_frame(self):
        """Findings as a DataFrame: ``order, stage, severity, code, layer, message, advice,
        evidence`` (evidence as a JSON string, so the frame stores in Parquet as is)."""
        import pandas as pd

        rows = [
            {
                "order": i,
                "stage": f.stage,
                "severity": f.severity,
                "code": f.code,
                "layer": f.layer,
                "message": f.message,
                "advice": f.advice,
                "evidence": json.dumps(_clean(f.evidence)),
            }
            for i, f in enumerate(self.findings)
        ]
        cols = ["order", "stage", "severity", "code", "layer", "message", "advice", "evidence"]
        return pd.DataFrame(rows, columns=cols)

    def layers_frame(self):
        """Per-output numbers, one row per layer (shape and notes as strings)."""
        return _frame([s.to_dict() for s in self.layers], LayerStats)

    def params_frame(self):
        """Per-weight numbers, one row per layer (shape and notes as strings)."""
        return _frame([p.to_dict() for p in self.params], ParamStats)


def _frame(rows: list[dict[str, Any]], cls: type):
    import dataclasses

    import pandas as pd

    cols = [f.name for f in dataclasses.fields(cls)]
    out = []
    for r in rows:
        r = dict(r)
        r["shape"] = "x".join(str(s) for s in r.get("shape", []))
        r["notes"] = "; ".join(r.get("notes", []))
        out.append(r)
    return pd.DataFrame(out, columns=cols)


def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        return "-"
    if spec == "%":
        return f"{100 * v:.0f}%"
    return format(v, spec)
