"""Reports of compare, bench and sweep as Markdown or one self-contained HTML file with plots.

A report is a :class:`Document` (title, verdict, sections of text, tables and figures) built from a
command's result by ``compare_document`` / ``bench_document`` / ``sweep_document`` and written by
:func:`write_report` by the file's suffix: ``.html`` embeds every plot as a base64 PNG ``data:`` URI
and links nothing, so it opens offline; ``.md`` writes the PNGs beside the file
(``<stem>-<n>.png``). Plots are drawn with matplotlib's object API (``matplotlib.figure.Figure``,
no pyplot), so no global backend or state is touched; PNG metadata is left out so the same figures
give the same bytes. HTML is written by hand: it is a few tags, and a template engine would be one
more dependency for them.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxq.errors import MissingExtraError, OptionError

SUFFIXES = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown"}
#: Per-layer rows shown in a compare report's table.
LAYER_ROWS = 30
#: Above this many layers the per-layer plot leaves out the node names.
MAX_TICK_LABELS = 60


@dataclasses.dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclasses.dataclass
class Figure:
    """A rendered plot: PNG bytes and the text that describes it."""

    png: bytes
    alt: str


@dataclasses.dataclass
class Section:
    title: str
    text: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[Figure] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Document:
    title: str
    sections: list[Section]
    #: The gate's one-line verdict, and whether it passed (``None``: no gate).
    verdict: str | None = None
    passed: bool | None = None


def check_report_path(path: str | os.PathLike[str]) -> str:
    """The report format of ``path`` (``html`` or ``markdown``), before any work is done.

    Raises:
        OptionError: Unknown suffix or missing folder.
    """
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise OptionError(f"--report {path}: expected a .html or .md file")
    if not path.parent.is_dir():
        raise OptionError(f"--report {path}: folder {path.parent} does not exist")
    return kind


def write_report(document: Document, path: str | os.PathLike[str]) -> Path:
    """Writes the document as HTML or Markdown (by suffix); returns the path."""
    path = Path(path)
    kind = check_report_path(path)
    if kind == "html":
        path.write_text(render_html(document), encoding="utf-8")
        return path
    names = []
    for i, fig in enumerate(f for s in document.sections for f in s.figures):
        name = f"{path.stem}-{i + 1}.png"
        (path.parent / name).write_bytes(fig.png)
        names.append(name)
    path.write_text(render_markdown(document, names), encoding="utf-8")
    return path


# --- rendering ---------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.pass { color: #05620b; font-weight: bold; } .fail { color: #a00; font-weight: bold; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
"""


def render_html(document: Document) -> str:
    """One self-contained page: inline CSS, plots as data URIs, no scripts, no links."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(document.title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(document.title)}</h1>"]
    if document.verdict is not None:
        css = "pass" if document.passed else "fail"
        out.append(f'<p class="{css}">{e(document.verdict)}</p>')
    for section in document.sections:
        out.append(f"<h2>{e(section.title)}</h2>")
        out.extend(f"<p>{e(line)}</p>" for line in section.text)
        for fig in section.figures:
            data = base64.b64encode(fig.png).decode("ascii")
            out.append(f'<img src="data:image/png;base64,{data}" alt="{e(fig.alt)}">')
        for table in section.tables:
            out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.headers) + "</tr></thead><tbody>")
            out.extend("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table.rows)
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_markdown(document: Document, image_names: Sequence[str] = ()) -> str:
    """Markdown; figure ``i`` (in document order) links to ``image_names[i]`` when given."""
    out = [f"# {document.title}", ""]
    if document.verdict is not None:
        out += [f"**{document.verdict}**", ""]
    names = iter(image_names)
    for section in document.sections:
        out += [f"## {section.title}", ""]
        for line in section.text:
            out += [line, ""]
        for fig in section.figures:
            name = next(names, None)
            if name is not None:
                out += [f"![{fig.alt}]({name})", ""]
        for table in section.tables:
            out.append("| " + " | ".join(_md(h) for h in table.headers) + " |")
            out.append("|" + "|".join("---" if i == 0 else "--:" for i in range(len(table.headers))) + "|")
            out.extend("| " + " | ".join(_md(c) for c in row) + " |" for row in table.rows)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --- plots -------------------------------------------------------------------------------
def _figure(width: float = 8.0, height: float = 4.0) -> Any:
    try:
        from matplotlib.figure import Figure as MplFigure
    except ImportError:
        raise MissingExtraError("reports need matplotlib: pip install 'onnxq[report]'") from None
    return MplFigure(figsize=(width, height), dpi=100)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    # NOTE: no Software/date metadata, so equal plots are equal bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def layer_plot(layers: Sequence[dict[str, Any]], *, floor_db: float, start: str | None = None) -> Figure:
    """Per-layer SQNR in graph order; the layer where the error starts in red."""
    ordered = sorted(layers, key=lambda layer: layer["position"])
    fig = _figure(max(6.0, min(16.0, 0.35 * len(ordered) + 2)), 4.0)
    ax = fig.add_subplot()
    values = [layer["sqnr_db"] if layer["sqnr_db"] is not None else 100.0 for layer in ordered]
    colors = ["#c62828" if layer["tensor"] == start else ("#ef6c00" if v < floor_db else "#1565c0")
              for layer, v in zip(ordered, values, strict=True)]
    ax.bar(range(len(ordered)), values, color=colors)
    ax.axhline(floor_db, color="#888", linestyle="--", linewidth=1, label=f"{floor_db:g} dB floor")
    if len(ordered) <= MAX_TICK_LABELS:
        ax.set_xticks(range(len(ordered)), [layer["node"] for layer in ordered], rotation=60, ha="right", fontsize=7)
    else:
        # NOTE: hundreds of names would print over each other; the table names the worst ones.
        ax.set_xlabel(f"{len(ordered)} layers in graph order (the table below names the worst)")
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Per-layer SQNR, graph order")
    ax.legend(loc="best", fontsize=8)
    return Figure(_png(fig), "per-layer SQNR in graph order")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x and y, higher is better), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_plot(names: Sequence[str], speedups: Sequence[float], accuracies: Sequence[float], *,
                reference: tuple[float, float] | None, min_accuracy: float | None, min_speedup: float | None,
                recommended: str | None, accuracy_label: str) -> Figure:
    """Accuracy against speedup, the Pareto frontier as a line, the acceptance region shaded."""
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    xs = list(speedups) + ([reference[0]] if reference else [])
    ys = list(accuracies) + ([reference[1]] if reference else [])
    x_lo, x_hi = min(xs + [1.0]), max(xs + [1.0])
    y_lo, y_hi = min(ys), max(ys)
    pad_x = max((x_hi - x_lo) * 0.15, 0.1)
    pad_y = max((y_hi - y_lo) * 0.15, 0.005 if y_hi <= 1.0 else 0.5)
    ax.set_xlim(x_lo - pad_x, x_hi + pad_x)
    ax.set_ylim(y_lo - pad_y, y_hi + pad_y)
    if min_accuracy is not None or min_speedup is not None:
        left = min_speedup if min_speedup is not None else x_lo - pad_x
        bottom = min_accuracy if min_accuracy is not None else y_lo - pad_y
        ax.axvspan(left, x_hi + pad_x, ymin=_frac(bottom, y_lo - pad_y, y_hi + pad_y), ymax=1.0,
                   color="#2e7d32", alpha=0.12, label="acceptance region")
    front = pareto_front(list(zip(speedups, accuracies, strict=True)))
    if front:
        ax.plot([speedups[i] for i in front], [accuracies[i] for i in front], color="#6a1b9a", linewidth=1.5,
                linestyle="-", marker="", label="Pareto frontier", zorder=2)
    for k, (name, x, y) in enumerate(zip(names, speedups, accuracies, strict=True)):
        star = name == recommended
        ax.scatter([x], [y], s=120 if star else 40, marker="*" if star else "o",
                   color="#c62828" if star else "#1565c0", zorder=3)
        ax.annotate(name + (" (recommended)" if star else ""), (x, y), textcoords="offset points",
                    xytext=(5, 5 + 10 * (k % 3)),
                    fontsize=8)
    if reference is not None:
        ax.scatter([reference[0]], [reference[1]], marker="s", color="#444", zorder=3, label="FP32 reference")
    ax.set_xlabel("speedup over FP32 (p50 latency ratio)")
    ax.set_ylabel(accuracy_label)
    ax.set_title("Accuracy vs speedup")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return Figure(_png(fig), "accuracy against speedup with the Pareto frontier and the acceptance region")


def _frac(value: float, lo: float, hi: float) -> float:
    return min(max((value - lo) / (hi - lo), 0.0), 1.0) if hi > lo else 0.0


def latency_plot(models: Sequence[dict[str, Any]]) -> Figure:
    """p50 latency per model (bars grouped by thread count and batch)."""
    fig = _figure(8.0, 4.0)
    ax = fig.add_subplot()
    settings = [(lat["threads"], lat["batch"]) for lat in models[0]["latency"]] if models else []
    width = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        values = [lat["p50_ms"] for lat in m["latency"]]
        ax.bar([k + i * width for k in range(len(values))], values, width, label=Path(m["path"]).name)
    ax.set_xticks([k + width * (len(models) - 1) / 2 for k in range(len(settings))],
                  [f"{t} thr, batch {b}" for t, b in settings])
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title("Latency")
    ax.legend(fontsize=8)
    return Figure(_png(fig), "p50 latency per model")


# --- documents ---------------------------------------------------------------------------
def _f(value: Any, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "exact"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return fmt.format(value)


def compare_document(report: Any, verdict: Any = None) -> Document:
    """From a :class:`~onnxq.validation.compare.CompareReport` and an optional verdict."""
    from onnxq.validation.self_check import LAYER_SQNR_FLOOR_DB

    doc = report.to_json()
    acc = doc["accuracy"]
    summary = Section("Summary", text=report.lines()[:2])
    summary.tables.append(Table(["output", "SQNR dB", "cosine", "max abs error", "mean abs error", "top-1 agreement"], [
        [o["name"], _f(o["sqnr_db"], "{:.1f}"), _f(o["cosine"], "{:.5f}"), _f(o["max_abs_error"]),
         _f(o["mean_abs_error"]), "" if o["top1_agreement"] is None else f"{o['top1_agreement']:.1%}"]
        for o in doc["outputs"]]))
    summary.tables.append(Table(["accuracy", "reference", "candidate", "drop"], [
        [acc["description"], _f(acc["reference"]), _f(acc["candidate"]), _f(acc["drop"])]]))
    sections = [summary]
    if doc["layers"]:
        start = doc["error_starts_at"]
        layers = Section("Per-layer SQNR (worst first)")
        if start is not None:
            layers.text.append(f"Error starts at {start['node']} ('{start['tensor']}', {start['sqnr_db']:.1f} dB): "
                               f"the first layer below {LAYER_SQNR_FLOOR_DB:g} dB in graph order.")
        layers.figures.append(layer_plot(doc["layers"], floor_db=LAYER_SQNR_FLOOR_DB,
                                         start=start["tensor"] if start else None))
        layers.tables.append(Table(["node", "tensor", "SQNR dB", "graph position"], [
            [layer["node"], layer["tensor"], _f(layer["sqnr_db"], "{:.1f}"), str(layer["position"])]
            for layer in doc["layers"][:LAYER_ROWS]]))
        sections.append(layers)
    if doc["notes"]:
        sections.append(Section("Notes", text=list(doc["notes"])))
    return Document(f"onnxq compare: {Path(doc['candidate']).name} vs {Path(doc['reference']).name}", sections,
                    None if verdict is None else verdict.line, None if verdict is None else verdict.passed)


def bench_document(report: Any, verdict: Any = None) -> Document:
    """From a :class:`~onnxq.validation.bench.BenchReport` and an optional verdict."""
    doc = report.to_json()
    models = Section("Models", text=report.lines()[:1])
    models.tables.append(Table(["model", "size MB", "size ratio", "peak memory MiB"], [
        [m["path"], f"{m['size_bytes'] / 1e6:.3f}", f"{m['size_ratio']:.2f}",
         "" if m["peak_memory_bytes"] is None else f"{m['peak_memory_bytes'] / 2**20:.1f}"] for m in doc["models"]]))
    latency = Section("Latency", figures=[latency_plot(doc["models"])] if doc["models"] else [])
    latency.tables.append(Table(["model", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "runs", "samples/s",
                                 "speedup"], [
        [m["path"], str(lat["threads"]), str(lat["batch"]), f"{lat['p50_ms']:.3f}", f"{lat['p90_ms']:.3f}",
         f"{lat['p99_ms']:.3f}", str(lat["runs"]), f"{lat['throughput']:,.1f}", f"{lat['speedup']:.2f}"]
        for m in doc["models"] for lat in m["latency"]]))
    return Document("onnxq bench", [models, latency], None if verdict is None else verdict.line,
                    None if verdict is None else verdict.passed)


def sweep_document(doc: dict[str, Any]) -> Document:
    """From a sweep's JSON document (:meth:`onnxq.validation.sweep.SweepReport.to_json`)."""
    rows = doc["strategies"]
    ok = [r for r in rows if r.get("error") is None]
    kind = doc["accuracy_kind"]
    label = "mean output SQNR (dB)" if kind == "sqnr" else f"accuracy ({doc['accuracy_description']})"
    summary = Section("Summary", text=[
        f"Model {doc['model']}; {len(rows)} strategies; accuracy: {doc['accuracy_description']}; "
        f"FP32 accuracy {_f(doc['reference_accuracy'])}, FP32 p50 {_f(doc['reference_p50_ms'], '{:.3f}')} ms.",
        f"Acceptance: {doc['acceptance']}.",
        f"Recommended: {doc['recommended'] or 'none (no strategy passes the gate)'}."])
    plot = pareto_plot([r["name"] for r in ok], [r["speedup"] for r in ok],
                       [r["accuracy"] if r["accuracy"] is not None else 200.0 for r in ok],
                       reference=None if doc["reference_accuracy"] is None else (1.0, doc["reference_accuracy"]),
                       min_accuracy=doc.get("min_accuracy"), min_speedup=doc.get("min_speedup"),
                       recommended=doc["recommended"], accuracy_label=label) if ok else None
    strategies = Section("Strategies", figures=[plot] if plot else [])
    strategies.tables.append(Table(
        ["strategy", "accuracy", "drop", "p50 ms", "speedup", "size MB", "passes", "Pareto", "recommended", "note"],
        [[r["name"], _f(r["accuracy"]), _f(r["accuracy_drop"]), _f(r["p50_ms"], "{:.3f}"), _f(r["speedup"], "{:.2f}"),
          _f(None if r["size_bytes"] is None else r["size_bytes"] / 1e6, "{:.3f}"),
          "yes" if r["passes"] else "no", "yes" if r["pareto"] else "", "yes" if r["recommended"] else "",
          r.get("error") or ("cached" if r.get("cached") else "")] for r in rows]))
    verdict = doc.get("gate")
    return Document(f"onnxq sweep: {Path(doc['model']).name}", [summary, strategies],
                    None if verdict is None else verdict["line"], None if verdict is None else verdict["passed"])
