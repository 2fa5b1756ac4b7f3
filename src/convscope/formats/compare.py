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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StoreError
from . import attribution, cka, diagnosis, preferred_inputs

__all__ = ["RunComparison", "compare", "FINDING_COLUMNS", "METRIC_COLUMNS", "PREFERRED_COLUMNS",
           "SEVERITY_ORDER"]

FINDING_COLUMNS = ("report", "code", "layer", "stage", "status", "severity_a", "severity_b",
                   "message")
METRIC_COLUMNS = ("set", "method", "metric", "a", "b", "delta")
PREFERRED_COLUMNS = ("layer", "in_a", "in_b", "units_a", "units_b", "value_a", "value_b")
#: severities from the most to the least serious
SEVERITY_ORDER = ("error", "warning", "info", "note")  # diagnose.rules.SEVERITIES
#: attribution metric columns averaged per method (booleans as rates)
_METRICS = ("prob", "drop", "increase", "pointing_hit")


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


def compare(reader_a: Any, reader_b: Any) -> RunComparison:
    """Compare two opened runs (``cs.open_run``): A is the reference, B the run compared
    with it."""
    notes: list[str] = []
    return RunComparison(
        a=str(reader_a.name), b=str(reader_b.name),
        findings=_compare_findings(reader_a, reader_b, notes),
        metrics=_compare_metrics(reader_a, reader_b, notes),
        preferred=_compare_preferred(reader_a, reader_b),
        cka_a=cka.keys(reader_a), cka_b=cka.keys(reader_b), notes=notes)
