"""Which architecture generalises? One table, like the GeNAS paper's Table 4, from the suite's result files.

    python -m report --results runs/ [more dirs ...] --out report/ [--published] [--compute-macs]

Reads every ``genas-result/1`` JSON written by ``genas/search.py``, ``robustness/eval.py``,
``detection/train_net.py``, ``segmentation/test.py`` and the ImageNet trainer, groups them by ``model`` and
writes ``report.md``, ``report.csv`` and ``report.png`` (one bar panel per metric, grouped: clean ImageNet,
distribution shift, downstream transfer) into ``--out``.

Rows are models; columns are the search metric, params (M), MACs (G) at 224x224 and:

======================  ================================================================================
column                  result
======================  ================================================================================
imagenet_top1           kind ``robustness`` with ``meta.set == "imagenet"`` (top1); else kind ``imagenet`` (top1)
imagenet_ece            kind ``robustness``, set ``imagenet`` (ece; lower is better)
imagenet_real_top1      kind ``robustness``, set ``imagenet-real`` (real_top1)
imagenet_v2_top1        kind ``robustness``, set ``imagenet-v2`` (top1)
imagenet_a_top1         kind ``robustness``, set ``imagenet-a`` (top1)
imagenet_r_top1         kind ``robustness``, set ``imagenet-r`` (top1)
imagenet_sketch_top1    kind ``robustness``, set ``imagenet-sketch`` (top1)
imagenet_c_mce          kind ``robustness``, set ``imagenet-c`` (mce; lower is better)
imagenet_o_aupr         kind ``robustness``, set ``imagenet-o`` (aupr)
coco_ap                 kind ``detection`` (AP)
cityscapes_miou         kind ``segmentation`` (mIoU)
======================  ================================================================================

Lower-is-better columns are marked "↓" in report.md and the figure. A missing measurement is shown as "—". Two results for one cell are an error naming both files (a report
never silently picks or averages runs). Params/MACs come from a result's ``meta`` (``params_m``, ``macs_g``)
when written there, else, for a timm model (``backbones`` registers the suite's), from building the model:
params always (cheap), MACs with fvcore only with ``--compute-macs`` (slow). A model that only has a search
result shows the searched network's own size from ``summary.json``. A search result gives the *search metric*
of the rows with its model name or its architecture (genotype / NB201 arch string).

Which files are read: every ``*.json`` under the ``--results`` folders whose text contains the schema tag
``genas-result``; such a file that is not valid JSON or breaks the schema is an error naming it, and nothing
is written. Other JSON files are skipped on purpose: Detectron2's ``metrics.json`` and MMEngine's
``scalars.json`` are JSON-lines logs (not one JSON document) that live in the same run folders.

``--published`` adds the paper's numbers (configs/published_results.yaml) as reference rows, labelled
"published" everywhere (own section of report.md, ``source`` column of report.csv, hatched bars), never
mixed with measured values.
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from genas.core.errors import UsageError, usage_errors
from genas.core.io import atomic_write_text
from genas.core.results import find_result_files, read_result
from genas.plots import architecture_key
from report.plots import plot_metric_bars

__all__ = ["ReportError", "Column", "COLUMNS", "GROUPS", "Row", "find_result_files", "load_results", "build_rows", "load_published",
           "render_csv", "render_markdown", "write_report", "main"]

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_FILE = REPO / "configs" / "published_results.yaml"
MISSING = "—"
MEASURED = "measured"
PUBLISHED = "published"
# Kinds whose meta describes the classification network itself (detection/segmentation meta would count
# the detector / segmentor around it).
_NETWORK_KINDS = ("robustness", "imagenet")


class ReportError(UsageError):
    """Result folders or a published-numbers file the report cannot use; the message names the file."""


CLEAN, SHIFT, TRANSFER = "ImageNet (clean)", "Distribution shift", "Downstream transfer"


@dataclass(frozen=True)
class Column:
    """One metric column: where its value comes from (result kind, robustness set, metric name)."""

    key: str
    name: str
    kind: str
    metric: str
    set: str | None = None
    fallback_kind: str | None = None  # read when no result of ``kind`` exists for the model
    lower_is_better: bool = False
    group: str = SHIFT

    @property
    def title(self) -> str:
        return self.name + (" ↓" if self.lower_is_better else "")


COLUMNS: tuple[Column, ...] = (
    Column("imagenet_top1", "ImageNet top-1", "robustness", "top1", "imagenet", fallback_kind="imagenet",
           group=CLEAN),
    Column("imagenet_ece", "ImageNet ECE", "robustness", "ece", "imagenet", lower_is_better=True, group=CLEAN),
    Column("imagenet_real_top1", "ImageNet ReaL top-1", "robustness", "real_top1", "imagenet-real", group=CLEAN),
    Column("imagenet_v2_top1", "ImageNet-V2 top-1", "robustness", "top1", "imagenet-v2"),
    Column("imagenet_a_top1", "ImageNet-A top-1", "robustness", "top1", "imagenet-a"),
    Column("imagenet_r_top1", "ImageNet-R top-1", "robustness", "top1", "imagenet-r"),
    Column("imagenet_sketch_top1", "ImageNet-Sketch top-1", "robustness", "top1", "imagenet-sketch"),
    Column("imagenet_c_mce", "ImageNet-C mCE", "robustness", "mce", "imagenet-c", lower_is_better=True),
    Column("imagenet_o_aupr", "ImageNet-O AUPR", "robustness", "aupr", "imagenet-o"),
    Column("coco_ap", "COCO AP", "detection", "AP", group=TRANSFER),
    Column("cityscapes_miou", "Cityscapes mIoU", "segmentation", "mIoU", group=TRANSFER),
)
#: the figure's panel groups, in order: metric title -> group
GROUPS: dict[str, str] = {c.title: c.group for c in COLUMNS}
CSV_FIELDS = ("model", "source", "search_metric", "params_m", "macs_g", *(c.key for c in COLUMNS))


@dataclass
class Row:
    """One model of the report."""

    model: str
    source: str = MEASURED
    search_metric: str | None = None
    params_m: float | None = None
    macs_g: float | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Reading results
# --------------------------------------------------------------------------------------------------
def load_results(dirs: Sequence[str | Path]) -> list[tuple[Path, dict]]:
    """``(path, result)`` of every result file under ``dirs``; :class:`ResultFileError` names a bad file."""
    files = find_result_files(dirs)
    if not files:
        raise ReportError(f"no result files (JSON with \"schema\": \"genas-result/1\") under "
                         f"{', '.join(map(str, dirs))}; point --results at the output folders of the search, "
                         f"robustness, detection or segmentation runs")
    return [(p, read_result(p)) for p in files]


# --------------------------------------------------------------------------------------------------
# Model facts: architecture keys, params and MACs
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _timm_facts(name: str, compute_macs: bool) -> tuple[float, float | None, str | None] | None:
    """``(params M, MACs G or None, architecture key)`` of the timm model ``name`` built without weights;
    ``None`` when timm does not know ``name``."""
    import timm

    import backbones  # noqa: F401  (registers the suite's genas_* models)
    from genas.cost import count_macs, count_params

    if not timm.is_model(name):
        return None
    model = timm.create_model(name, pretrained=False)
    macs = count_macs(model, (3, 224, 224)) / 1e9 if compute_macs else None
    return count_params(model) / 1e6, macs, architecture_key(getattr(model, "genotype", None))


def _meta_size(results: Iterable[tuple[Path, dict]]) -> tuple[float | None, float | None]:
    """``(params M, MACs G)`` written in the results' meta (``params_m``; ``macs_g`` or ``macs_m``), the
    first found of each; ``None`` where no result gives it."""
    metas = [r["meta"] for _, r in results]

    def first(*names_and_scales: tuple[str, float]) -> float | None:
        for meta in metas:
            for name, scale in names_and_scales:
                value = meta.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return float(value) * scale
        return None
    return first(("params_m", 1.0)), first(("macs_g", 1.0), ("macs_m", 1e-3))


def _search_arch(result: Mapping[str, Any]) -> str | None:
    meta = result["meta"]
    return architecture_key(meta.get("genotype") if meta.get("genotype") is not None else meta.get("arch"))


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------
def _cell(model: str, column: Column, results: Sequence[tuple[Path, dict]]) -> float | None:
    """The value of ``column`` for ``model``; an error naming both files when two results claim it."""
    for kind in filter(None, (column.kind, column.fallback_kind)):
        matches = [(p, r) for p, r in results if r["kind"] == kind
                   and (column.set is None or kind != "robustness" or r["meta"].get("set") == column.set)]
        if len(matches) > 1:
            files = " and ".join(str(p) for p, _ in matches)
            raise ReportError(f"model {model!r} has {len(matches)} results for {column.title}: {files}; keep one "
                             f"(move the other runs out of the --results folders)")
        if matches:
            return matches[0][1]["metrics"].get(column.metric)
    return None


def build_rows(results: Sequence[tuple[Path, dict]], compute_macs: bool = False) -> list[Row]:
    """One measured row per model (sorted by name); search results attach to the rows of their model name or
    architecture, and make a row of their own when they match none."""
    by_model: dict[str, list[tuple[Path, dict]]] = {}
    searches = []
    for path, r in results:
        (searches if r["kind"] == "search" else by_model.setdefault(r["model"], [])).append((path, r))
    need_arch = any(_search_arch(r) for _, r in searches)
    rows: dict[str, Row] = {}
    arch_of: dict[str, set[str]] = {}
    for model, model_results in sorted(by_model.items()):
        row = Row(model)
        network = [(p, r) for p, r in model_results if r["kind"] in _NETWORK_KINDS]
        row.params_m, row.macs_g = _meta_size(network)
        keys = {architecture_key(r["meta"].get("genotype")) for _, r in model_results} | {architecture_key(model)}
        if row.params_m is None or (row.macs_g is None and compute_macs) or (need_arch and keys == {None}):
            facts = _timm_facts(model, compute_macs)
            if facts is not None:
                params, macs, key = facts
                row.params_m = row.params_m if row.params_m is not None else params
                row.macs_g = row.macs_g if row.macs_g is not None else macs
                keys.add(key)
        row.values = {column.key: _cell(model, column, model_results) for column in COLUMNS}
        row.files = [str(p) for p, _ in model_results]
        rows[model], arch_of[model] = row, keys - {None}
    metrics: dict[str, set[str]] = {}
    for path, r in searches:
        key = _search_arch(r)
        targets = [m for m in rows if m == r["model"] or (key is not None and key in arch_of[m])]
        if not targets:
            params_m, macs_g = _meta_size([(path, r)])
            rows[r["model"]] = Row(r["model"], params_m=params_m, macs_g=macs_g, values={c.key: None for c in COLUMNS})
            arch_of[r["model"]] = {key} - {None}
            targets = [r["model"]]
        for m in targets:
            metrics.setdefault(m, set()).add(str(r["meta"].get("metric") or "?"))
            rows[m].files.append(str(path))
    for m, names in metrics.items():
        rows[m].search_metric = " / ".join(sorted(names))
    return [rows[m] for m in sorted(rows)]


def load_published(path: str | Path = PUBLISHED_FILE) -> tuple[str, list[Row]]:
    """``(paper reference, rows)`` of the published-numbers file; errors name the file and the entry."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"published results file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ReportError(f"{path}: expected a mapping with 'paper' and a 'models' list")
    known = {"name", "genotype", "search_metric", "search_dataset", "params_m", "macs_g", *(c.key for c in COLUMNS)}
    rows = []
    for i, entry in enumerate(data["models"]):
        unknown = sorted(set(entry) - known) if isinstance(entry, dict) else None
        if unknown is None or unknown or "name" not in entry:
            raise ReportError(f"{path}: models[{i}] must be a mapping with 'name' and keys among {sorted(known)}"
                             + (f"; unknown: {unknown}" if unknown else ""))
        numbers = {k: entry.get(k) for k in ("params_m", "macs_g", *(c.key for c in COLUMNS))}
        bad = [k for k, v in numbers.items() if v is not None and not isinstance(v, (int, float))]
        if bad:
            raise ReportError(f"{path}: models[{i}] ({entry['name']}): {bad} must be numbers")
        rows.append(Row(str(entry["name"]), source=PUBLISHED, search_metric=entry.get("search_metric"),
                        params_m=numbers["params_m"], macs_g=numbers["macs_g"],
                        values={c.key: numbers[c.key] for c in COLUMNS}, files=[str(path)]))
    return str(data.get("paper", "")), rows


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def _csv_number(value: float | None) -> str:
    if value is None:
        return MISSING
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _md_number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def render_csv(rows: Sequence[Row]) -> str:
    """CSV text: one line per row, numbers to 4 decimals, missing cells "—"."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in rows:
        writer.writerow([row.model, row.source, row.search_metric or MISSING, _csv_number(row.params_m),
                         _csv_number(row.macs_g), *(_csv_number(row.values.get(c.key)) for c in COLUMNS)])
    return buffer.getvalue()


def _md_table(rows: Sequence[Row]) -> list[str]:
    header = ["Model", "Search metric", "Params (M)", "MACs (G)", *(c.title for c in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.model.replace("|", "\\|"), row.search_metric or MISSING, _md_number(row.params_m),
                 _md_number(row.macs_g), *(_md_number(row.values.get(c.key)) for c in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(measured: Sequence[Row], published: Sequence[Row], dirs: Sequence[str | Path],
                    paper: str = "") -> str:
    n_files = len({f for row in measured for f in row.files})
    lines = ["# Generalisation report", "",
             f"Measured: {n_files} result file(s) under {', '.join(f'`{d}`' for d in dirs)}. Metrics in percent; "
             f"{MISSING} = not measured; ↓ = lower is better (ECE, mCE). Params/MACs: the evaluated network at 224x224 (a search-only row: the "
             f"searched network's own size).", "", "## Measured", "", *_md_table(measured), ""]
    if published:
        lines += ["## Published (reference numbers from the paper, not measured here)", "",
                  f"{paper}: Table 4 (ImageNet-V2, ImageNet-A, COCO AP, Cityscapes mIoU) and Table 3 (ImageNet "
                  f"top-1); the paper's FLOPs are MACs; it reports none of the other columns. Source: `{published[0].files[0]}`.", "",
                  *_md_table(published), ""]
    lines += ["## Result files", ""]
    lines += [f"- {row.model}: " + ", ".join(f"`{f}`" for f in row.files) for row in measured]
    return "\n".join(lines) + "\n"


def _chart_table(measured: Sequence[Row], published: Sequence[Row]) -> dict[str, dict[str, float | None]]:
    table = {row.model: {c.title: row.values.get(c.key) for c in COLUMNS} for row in measured}
    table.update({f"{row.model} (published)": {c.title: row.values.get(c.key) for c in COLUMNS} for row in published})
    return table


def write_report(dirs: Sequence[str | Path], out: str | Path, published: bool = False, compute_macs: bool = False,
                 published_file: str | Path = PUBLISHED_FILE) -> dict[str, Path]:
    """Read, check and render everything first; only then write report.png, report.csv and report.md."""
    measured = build_rows(load_results(dirs), compute_macs=compute_macs)
    paper, reference = load_published(published_file) if published else ("", [])
    csv_text = render_csv([*measured, *reference])
    md_text = render_markdown(measured, reference, dirs, paper)
    out = Path(out)
    written = {"png": plot_metric_bars(_chart_table(measured, reference), out / "report.png",
                                       hatched=[f"{row.model} (published)" for row in reference], groups=GROUPS)}
    written["csv"] = atomic_write_text(out / "report.csv", csv_text)
    written["md"] = atomic_write_text(out / "report.md", md_text)
    return written


@usage_errors
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", nargs="+", required=True, type=Path, help="folders searched recursively for results")
    p.add_argument("--out", required=True, type=Path, help="folder for report.md, report.csv, report.png")
    p.add_argument("--published", action="store_true", help="add the paper's numbers as labelled reference rows")
    p.add_argument("--published-file", type=Path, default=PUBLISHED_FILE, help="default: %(default)s")
    p.add_argument("--compute-macs", action="store_true",
                   help="count MACs at 224x224 with fvcore for timm models without macs_g in their results (slow)")
    args = p.parse_args(argv)
    written = write_report(args.results, args.out, args.published, args.compute_macs, args.published_file)
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
