"""The result tables of ``ppfr demo``, its report and ``ppfr bench orl``, declared once.

Every figure a table can show is declared once in :data:`FIGURES` (where it sits in a
method's record, and how it prints); each table is a list of ``(header, figure)`` columns:

* :data:`DEMO_COLUMNS`: the demo's ``results.md`` (:func:`results_table`);
* :data:`DEMO_CONSOLE_COLUMNS`: the table ``ppfr demo`` prints;
* :data:`REPORT_COLUMNS`: the report's accuracy-vs-privacy table (:func:`summary_rows`,
  in ``report.html`` and under it ``ppfr demo``'s privacy table);
* :data:`BENCH_COLUMNS`: the benchmark's ``bench.md`` (:func:`bench_rows`,
  :func:`bench_table`), and :data:`BENCH_CONSOLE_COLUMNS` the table ``ppfr bench`` prints.

A demo record is one run (``results["methods"][name]``: ``accuracy``, ``std``, ``auc``,
``tar_at_far``, ..., ``attacks``: per attack its scores); a benchmark record aggregates
splits (every figure ``{"mean", "std"}``, an attack's scores flattened to
``"<prefix>_<score>"`` by :data:`ATTACK_FIGURES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AGGREGATED",
    "ATTACK_FIGURES",
    "ATTACK_SCORES",
    "BENCH_COLUMNS",
    "BENCH_CONSOLE_COLUMNS",
    "DEMO_COLUMNS",
    "DEMO_CONSOLE_COLUMNS",
    "FIGURES",
    "REPORT_COLUMNS",
    "Figure",
    "bench_rows",
    "bench_table",
    "markdown_table",
    "results_table",
    "run_rows",
    "summary_rows",
]

#: per-split benchmark figures aggregated as mean and std
AGGREGATED = ("accuracy", "auc", "train_seconds", "protect_ms", "embed_ms")
#: the figures kept of each attack in the benchmark, and the prefix of their per-split keys
#: ("<prefix>_<score>")
ATTACK_FIGURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "viewing": ("viewing", ("ssim", "psnr", "leakage", "rank1")),
    "recovery": ("recovery", ("ssim", "psnr", "leakage", "rank1")),
    "linkage": ("linkage", ("accuracy", "auc", "rank1", "tar_0.01", "tar_0.001")),
    "identity-recovery": ("identity", ("ssim", "psnr", "leakage", "rank1")),
    # what the attacker had to solve first: a keyed order, per-image shuffled tiles
    "key": ("key", ("placed",)),
    "tiles": ("tiles", ("placed",)),
}
#: attack figures, aggregated when the attacks ran
ATTACK_SCORES = tuple(f"{p}_{k}" for p, keys in ATTACK_FIGURES.values() for k in keys)


@dataclass(frozen=True)
class Figure:
    """One figure of a method's results, and how every table prints it.

    Attributes:
        key: ``"accuracy"`` (a top-level figure), ``"tar@0.01"`` (TAR at that FAR) or
            ``"<attack>.<score>"`` (an attack's score).
        digits: decimals printed; None for a count (thousands separators).
        scale: factor before printing (100 for a percentage).
        with_std: a single run prints ``value ± std`` from the record's ``std``.
    """

    key: str
    digits: int | None
    scale: float = 1.0
    with_std: bool = False

    def run_value(self, r: dict[str, Any]) -> Any:
        """The figure in one run's record (None where it is not there)."""
        if self.key.startswith("tar@"):
            return r["tar_at_far"].get(self.key[4:])
        if "." in self.key:
            attack, score = self.key.split(".", 1)
            return r.get("attacks", {}).get(attack, {}).get(score)
        return r[self.key]

    def bench_value(self, r: dict[str, Any]) -> Any:
        """The figure in a benchmark record: ``{"mean", "std"}`` (or the count itself)."""
        none = {"mean": None, "std": None}
        if self.key.startswith("tar@"):
            return r["tar_at_far"].get(self.key[4:], none)
        if "." in self.key:
            attack, score = self.key.split(".", 1)
            return r.get(f"{ATTACK_FIGURES[attack][0]}_{score}", none)
        return r[self.key]

    def number(self, x: float | None) -> str:
        """One value as printed; None and NaN are ``n/a``."""
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "n/a"
        if self.digits is None:
            return f"{x:,}"
        return f"{self.scale * x:.{self.digits}f}"

    def run_cell(self, r: dict[str, Any]) -> str:
        """The cell of one run's record."""
        x = self.run_value(r)
        if self.with_std and x is not None:
            return f"{self.number(x)} ± {self.number(r['std'])}"
        return self.number(x)

    def bench_cell(self, r: dict[str, Any]) -> str:
        """The cell of a benchmark record: mean ± std over splits."""
        stat = self.bench_value(r)
        if self.digits is None:
            return self.number(stat)
        if stat["mean"] is None:
            return "n/a"
        return f"{self.number(stat['mean'])} ± {self.number(stat['std'])}"


def _pct(key: str, digits: int = 1) -> Figure:
    return Figure(key, digits, 100.0)


#: every figure a result table shows, declared once
FIGURES: dict[str, Figure] = {
    f.key: f
    for f in (
        Figure("accuracy", 2, 100.0, with_std=True),
        Figure("auc", 4),
        _pct("tar@0.01"),
        _pct("tar@0.001"),
        Figure("train_seconds", 0),
        Figure("protect_ms", 2),
        Figure("embed_ms", 2),
        Figure("bytes_sent", None),
        Figure("viewing.ssim", 3),
        _pct("viewing.leakage"),
        Figure("recovery.ssim", 3),
        Figure("recovery.floor_ssim", 3),
        Figure("recovery.psnr", 2),
        _pct("recovery.leakage"),
        _pct("recovery.rank1"),
        Figure("linkage.auc", 3),
        _pct("linkage.accuracy"),
        _pct("linkage.rank1"),
        Figure("identity-recovery.ssim", 3),
        _pct("identity-recovery.leakage"),
        _pct("identity-recovery.rank1"),
    )
}

#: the demo's ``results.md``: (header, figure key)
DEMO_COLUMNS = (
    ("verification accuracy (%)", "accuracy"),
    ("AUC", "auc"),
    ("TAR@FAR=1e-2", "tar@0.01"),
    ("training (s)", "train_seconds"),
    ("protect (ms/img)", "protect_ms"),
    ("embed (ms/img)", "embed_ms"),
    ("bytes sent / face", "bytes_sent"),
)
#: the table ``ppfr demo`` prints
DEMO_CONSOLE_COLUMNS = (
    ("accuracy %", "accuracy"),
    ("AUC", "auc"),
    ("train s", "train_seconds"),
    ("protect ms/img", "protect_ms"),
    ("embed ms/img", "embed_ms"),
    ("bytes/face", "bytes_sent"),
)
#: the report's accuracy-vs-privacy table
REPORT_COLUMNS = (
    ("accuracy %", "accuracy"),
    ("AUC", "auc"),
    ("viewing SSIM", "viewing.ssim"),
    ("viewing leakage %", "viewing.leakage"),
    ("recovery SSIM", "recovery.ssim"),
    ("average-face SSIM", "recovery.floor_ssim"),
    ("recovery PSNR dB", "recovery.psnr"),
    ("recovery leakage %", "recovery.leakage"),
    ("recovery rank-1 %", "recovery.rank1"),
    ("linkage AUC", "linkage.auc"),
    ("linkage accuracy %", "linkage.accuracy"),
    ("linkage rank-1 %", "linkage.rank1"),
    ("identity-guided SSIM", "identity-recovery.ssim"),
    ("identity-guided leakage %", "identity-recovery.leakage"),
    ("identity-guided rank-1 %", "identity-recovery.rank1"),
    ("bytes/face", "bytes_sent"),
)
#: the benchmark's ``bench.md``
BENCH_COLUMNS = (
    ("accuracy (%)", "accuracy"),
    ("AUC", "auc"),
    ("TAR@FAR=1e-2 (%)", "tar@0.01"),
    ("TAR@FAR=1e-3 (%)", "tar@0.001"),
    ("training (s)", "train_seconds"),
    ("protect (ms/img)", "protect_ms"),
    ("embed (ms/img)", "embed_ms"),
    ("bytes sent / face", "bytes_sent"),
    ("viewing leakage (%)", "viewing.leakage"),
    ("recovery SSIM", "recovery.ssim"),
    ("recovery PSNR (dB)", "recovery.psnr"),
    ("recovery leakage (%)", "recovery.leakage"),
    ("linkage AUC", "linkage.auc"),
    ("linkage rank-1 (%)", "linkage.rank1"),
    ("identity-guided rank-1 (%)", "identity-recovery.rank1"),
    ("identity-guided leakage (%)", "identity-recovery.leakage"),
)
#: the table ``ppfr bench`` prints: the first columns of :data:`BENCH_COLUMNS`, short headers
BENCH_CONSOLE_COLUMNS = (
    ("accuracy %", "accuracy"),
    ("AUC", "auc"),
    ("TAR@1e-2 %", "tar@0.01"),
    ("TAR@1e-3 %", "tar@0.001"),
    ("train s", "train_seconds"),
    ("protect ms/img", "protect_ms"),
    ("embed ms/img", "embed_ms"),
    ("bytes/face", "bytes_sent"),
    ("viewing leak %", "viewing.leakage"),
    ("recovery SSIM", "recovery.ssim"),
    ("recovery PSNR", "recovery.psnr"),
    ("recovery leak %", "recovery.leakage"),
)


def run_rows(
    results: dict[str, Any], columns: tuple[tuple[str, str], ...]
) -> tuple[list[str], list[list[str]]]:
    """Headers (``method`` first) and one row per method of a one-run ``results``."""
    headers = ["method", *(h for h, _ in columns)]
    rows = [
        [name, *(FIGURES[key].run_cell(r) for _, key in columns)]
        for name, r in results["methods"].items()
    ]
    return headers, rows


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def results_table(results: dict[str, Any]) -> str:
    """The demo's ``results.md``: accuracy and costs per method (:data:`DEMO_COLUMNS`)."""
    return markdown(*run_rows(results, DEMO_COLUMNS))


def summary_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the report's accuracy-vs-privacy table (:data:`REPORT_COLUMNS`)."""
    return run_rows(results, REPORT_COLUMNS)


def markdown_table(results: dict[str, Any]) -> str:
    """:func:`summary_rows` as markdown."""
    return markdown(*summary_rows(results))


def bench_rows(
    results: dict[str, Any], columns: tuple[tuple[str, str], ...] = BENCH_COLUMNS
) -> tuple[list[str], list[list[str]]]:
    """Column headers and one row of formatted cells per method (mean ± std over splits)."""
    headers = ["method", *(h for h, _ in columns)]
    rows = [
        [name, *(FIGURES[key].bench_cell(r) for _, key in columns)]
        for name, r in results["methods"].items()
    ]
    return headers, rows


def bench_table(results: dict[str, Any]) -> str:
    """Markdown table of :func:`~ppfr.experiments.bench.run_orl_bench` results, with a
    one-line caption."""
    s = results["settings"]
    caption = (
        f"ORL open-set verification, {s['splits']} identity split(s) (seeds "
        f"{', '.join(map(str, s['split_seeds']))}) x {s['test_identities']} held-out "
        f"identities, epoch scale {s['epoch_scale']:g}, {s['device']}; mean ± std over splits."
    )
    return caption + "\n\n" + markdown(*bench_rows(results))
