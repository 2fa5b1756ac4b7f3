"""Two runs side by side: what changed between them in their diagnosis findings, attribution
metrics and preferred inputs, and the CKA matrices either run holds. Read by the Compare page
and ``convscope compare RUN_A RUN_B``; torch-free, like every format module.

* **Findings** are matched by report key, code and layer (the same fault in the same layer):
  ``gone`` (only in A), ``new`` (only in B), ``changed`` (in both, another severity) or
  ``kept`` (in both, the same severity).
* **Attribution metrics** are averaged per attribution set, method and metric over the set's
  images (deletion drop, the share of images whose score rose, the pointing-game hit rate,
  the target probability), for the sets both runs hold under the same key.
* **Preferred inputs** are listed per layer recorded in either run, with the mean objective
  value reached in each.
* **Generated image grids** (:mod:`.generated`, a GAN run's samples over training): the steps
  each run holds, and the diversity of each run's last grid (the mean RMS difference between
  its tiles); the run whose last samples differ more is named when the two differ by at least
  :data:`DIVERSITY_MARK` (relative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StoreError
from . import attribution, cka, diagnosis, generated, preferred_inputs

__all__ = ["RunComparison", "compare", "FINDING_COLUMNS", "METRIC_COLUMNS", "PREFERRED_COLUMNS",
           "SEVERITY_ORDER", "DIVERSITY_MARK", "GeneratedComparison", "compare_generated",
           "steps_text"]

FINDING_COLUMNS = ("report", "code", "layer", "stage", "status", "severity_a", "severity_b",
                   "message")
METRIC_COLUMNS = ("set", "method", "metric", "a", "b", "delta")
PREFERRED_COLUMNS = ("layer", "in_a", "in_b", "units_a", "units_b", "value_a", "value_b")
#: severities from the most to the least serious
SEVERITY_ORDER = ("error", "warning", "info", "note")  # diagnose.rules.SEVERITIES
#: attribution metric columns averaged per method (booleans as rates)
_METRICS = ("prob", "drop", "increase", "pointing_hit")
#: last-grid diversities that differ by at least this share of the larger are called different
DIVERSITY_MARK = 0.1


@dataclass(frozen=True)
class GeneratedComparison:
    """The generated grids of runs A and B: each run's steps and ``(step, diversity)`` of its
    last grid (None when it has none, or its tiling is unknown)."""

    steps_a: list[int] = field(default_factory=list)
    steps_b: list[int] = field(default_factory=list)
    diversity_a: tuple[int, float] | None = None
    diversity_b: tuple[int, float] | None = None

    def both(self) -> bool:
        return bool(self.steps_a) and bool(self.steps_b)

    def steps(self) -> list[int]:
        """The steps of either run, ascending (what one slider over both runs moves along)."""
        return sorted(set(self.steps_a) | set(self.steps_b))

    def at(self, step: int) -> tuple[int, int]:
        """The steps of A's and B's grids nearest to ``step`` (needs :meth:`both`)."""
        return generated.nearest(self.steps_a, step), generated.nearest(self.steps_b, step)

    def more_diverse(self) -> str | None:
        """``"a"`` or ``"b"``: the run whose last grid is more diverse by at least
        :data:`DIVERSITY_MARK` of the larger value; ``"same"`` when they are closer; None when
        a run has no diversity."""
        if self.diversity_a is None or self.diversity_b is None:
            return None
        da, db = self.diversity_a[1], self.diversity_b[1]
        if not (np.isfinite(da) and np.isfinite(db)):
            return None
        if abs(db - da) < DIVERSITY_MARK * max(da, db, 1e-12):
            return "same"
        return "b" if db > da else "a"

    def verdict(self) -> str | None:
        """Which run ended with the more diverse samples, with both values, or None."""
        which = self.more_diverse()
        if which is None:
            return None
        assert self.diversity_a is not None and self.diversity_b is not None
        (sa, da), (sb, db) = self.diversity_a, self.diversity_b
        head = {"a": "A's samples are more diverse", "b": "B's samples are more diverse",
                "same": "about as diverse"}[which]
        return (f"{head} (diversity A {da:.4f} at step {sa}, B {db:.4f} at step {sb}; mean "
                "RMS difference between tiles)")

    def line(self) -> str | None:
        """One line (None when neither run has grids): the steps of each run and, at their
        last grids, which ended with the more diverse samples."""
        if not self.steps_a and not self.steps_b:
            return None
        text = f"generated grids: A {steps_text(self.steps_a)}; B {steps_text(self.steps_b)}"
        v = self.verdict()
        return text + (f"; last grids: {v}" if v else "")


@dataclass(frozen=True)
class RunComparison:
    """What differs between runs ``a`` and ``b`` (see the module docstring)."""

    a: str
    b: str
    findings: pd.DataFrame
    metrics: pd.DataFrame
    preferred: pd.DataFrame
    cka_a: list[str] = field(default_factory=list)
    cka_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    generated: GeneratedComparison = field(default_factory=GeneratedComparison)

    def generated_line(self) -> str | None:
        """:meth:`GeneratedComparison.line` (for ``convscope compare``)."""
        return self.generated.line()

    def counts(self) -> dict[str, int]:
        """Findings per status: ``{"gone": ..., "new": ..., "changed": ..., "kept": ...}``."""
        vc = self.findings["status"].value_counts() if len(self.findings) else {}
        return {s: int(vc.get(s, 0)) for s in ("gone", "new", "changed", "kept")}


def _findings(reader: Any, notes: list[str]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key in diagnosis.keys(reader):
        try:
            rep = diagnosis.report_dict(reader, key)
        except StoreError as err:
            notes.append(f"{reader.name}: diagnosis {key!r} unreadable ({err})")
            continue
        for f in rep.get("findings") or []:
            if not isinstance(f, dict):
                continue
            k = (str(key), str(f.get("code", "")), str(f.get("layer") or ""))
            prev = out.get(k)
            sev = str(f.get("severity", "info"))
            if prev is None or _rank(sev) < _rank(prev["severity"]):
                out[k] = {"severity": sev, "stage": str(f.get("stage") or ""),
                          "message": str(f.get("message") or "")}
    return out


def _rank(severity: str) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)


def _compare_findings(ra: Any, rb: Any, notes: list[str]) -> pd.DataFrame:
    fa, fb = _findings(ra, notes), _findings(rb, notes)
    rows = []
    for k in sorted(set(fa) | set(fb)):
        a, b = fa.get(k), fb.get(k)
        status = "gone" if b is None else "new" if a is None else \
            "kept" if a["severity"] == b["severity"] else "changed"
        src = b if b is not None else a
        assert src is not None
        rows.append({"report": k[0], "code": k[1], "layer": k[2], "stage": src["stage"],
                     "status": status, "severity_a": a["severity"] if a else "",
                     "severity_b": b["severity"] if b else "", "message": src["message"]})
    df = pd.DataFrame(rows, columns=list(FINDING_COLUMNS))
    if len(df):  # what changed first, the most serious first
        order = {"new": 0, "gone": 1, "changed": 2, "kept": 3}
        sev = df[["severity_a", "severity_b"]].map(_rank).min(axis=1)
        df = df.assign(_s=df["status"].map(order), _v=sev).sort_values(
            ["_s", "_v", "report", "layer", "code"], kind="stable").drop(columns=["_s", "_v"])
    return df.reset_index(drop=True)


def _metric_means(reader: Any, notes: list[str]) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    if not attribution.has_sets(reader):
        return out
    for info in attribution.infos(reader):
        try:
            m = attribution.metrics(reader, info.key)
        except StoreError as err:
            notes.append(f"{reader.name}: attribution metrics of {info.key!r} unreadable ({err})")
            continue
        for method, g in m.groupby("method", sort=False):
            for col in _METRICS:
                if col in g.columns:
                    v = pd.to_numeric(g[col].astype("float64"), errors="coerce")
                    if v.notna().any():
                        out[(str(info.key), str(method), col)] = float(v.mean())
    return out


def _compare_metrics(ra: Any, rb: Any, notes: list[str]) -> pd.DataFrame:
    ma, mb = _metric_means(ra, notes), _metric_means(rb, notes)
    rows = [{"set": k[0], "method": k[1], "metric": k[2], "a": ma[k], "b": mb[k],
             "delta": mb[k] - ma[k]} for k in sorted(set(ma) & set(mb))]
    only = sorted({k[0] for k in set(ma) ^ set(mb)})
    if only:
        notes.append("attribution sets in one run only (not compared): " + ", ".join(only))
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def _preferred(reader: Any) -> dict[str, tuple[int, float]]:
    out = {}
    for layer in preferred_inputs.layers(reader):
        m = preferred_inputs.meta(reader, layer) or {}
        values = np.asarray(m.get("values") or [], dtype=np.float64)
        out[layer] = (int(len(m.get("units") or [])),
                      float(values.mean()) if values.size else float("nan"))
    return out


def _compare_preferred(ra: Any, rb: Any) -> pd.DataFrame:
    pa, pb = _preferred(ra), _preferred(rb)
    rows = []
    for layer in list(dict.fromkeys([*pa, *pb])):
        a, b = pa.get(layer), pb.get(layer)
        rows.append({"layer": layer, "in_a": a is not None, "in_b": b is not None,
                     "units_a": a[0] if a else 0, "units_b": b[0] if b else 0,
                     "value_a": a[1] if a else float("nan"),
                     "value_b": b[1] if b else float("nan")})
    return pd.DataFrame(rows, columns=list(PREFERRED_COLUMNS))


def steps_text(steps: list[int], most: int = 6) -> str:
    """``"none"``, ``"4 at steps 0, 50, 100, 150"`` or, for many,
    ``"31 at steps 0, 500, 1000, ..., 15000"``."""
    if not steps:
        return "none"
    shown = [str(s) for s in steps] if len(steps) <= most else \
        [*(str(s) for s in steps[:3]), "...", str(steps[-1])]
    return f"{len(steps)} at step{'s' if len(steps) > 1 else ''} {', '.join(shown)}"


def _generated(reader: Any, notes: list[str]) -> tuple[list[int], tuple[int, float] | None]:
    try:
        infos = generated.index(reader)
    except StoreError as err:
        notes.append(f"{reader.name}: generated grids unreadable ({err})")
        return [], None
    try:
        return [g.step for g in infos], generated.final_diversity(reader, infos)
    except StoreError as err:
        notes.append(f"{reader.name}: its last generated grid is unreadable ({err})")
        return [g.step for g in infos], None


def compare_generated(reader_a: Any, reader_b: Any, notes: list[str] | None = None
                      ) -> GeneratedComparison:
    """The generated grids of two opened runs (unreadable ones are named in ``notes``)."""
    notes = [] if notes is None else notes
    (sa, da), (sb, db) = _generated(reader_a, notes), _generated(reader_b, notes)
    return GeneratedComparison(sa, sb, da, db)


def compare(reader_a: Any, reader_b: Any) -> RunComparison:
    """Compare two opened runs (``cs.open_run``): A is the reference, B the run compared
    with it."""
    notes: list[str] = []
    gen = compare_generated(reader_a, reader_b, notes)
    return RunComparison(
        a=str(reader_a.name), b=str(reader_b.name),
        findings=_compare_findings(reader_a, reader_b, notes),
        metrics=_compare_metrics(reader_a, reader_b, notes),
        preferred=_compare_preferred(reader_a, reader_b),
        cka_a=cka.keys(reader_a), cka_b=cka.keys(reader_b), notes=notes,
        generated=gen)
