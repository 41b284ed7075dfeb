"""Aggregating per-image scores, and writing results: JSON, CSV, image grids, the fidelity/editability plot."""

import csv
import json
import math
import os
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont

from ..utils import get_logger
from .images import ImageInput, load_image
from .metrics import overall_score

logger = get_logger(__name__)

#: Metric columns, in the order they are written.
METRIC_NAMES = ("clip_t", "clip_score", "clip_i_masked", "clip_i", "dino", "overall")

#: Human-readable names, for plots and tables.
METRIC_LABELS = {
    "clip_t": "CLIP text alignment",
    "clip_score": "CLIPScore",
    "clip_i_masked": "masked CLIP image alignment",
    "clip_i": "CLIP image alignment",
    "dino": "DINO similarity",
    "overall": "overall (geometric mean)",
}


def aggregate(
    records: Sequence[Dict[str, Any]], group_by: Sequence[str], image_metric: str = "clip_i_masked"
) -> List[Dict[str, Any]]:
    """Average per-image records by group.

    Each output row has the ``group_by`` keys, ``n`` (images), the mean of every metric present, and ``overall`` =
    sqrt(mean ``clip_t`` * mean ``image_metric``): the geometric mean of the averages, as in the paper's Table 1 (not
    the mean of per-image overalls). Groups keep the order in which they first appear.
    """
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record.get(k) for k in group_by), []).append(record)
    rows = []
    for key, members in groups.items():
        row: Dict[str, Any] = dict(zip(group_by, key))
        row["n"] = len(members)
        for metric in METRIC_NAMES:
            if metric == "overall":
                continue
            values = [m[metric] for m in members if m.get(metric) is not None]
            if values:
                row[metric] = sum(values) / len(values)
        if "clip_t" in row and image_metric in row:
            row["overall"] = overall_score(row["clip_t"], row[image_metric])
        rows.append(row)
    return rows


def write_json(path: Union[str, os.PathLike], data: Any) -> str:
    """Write ``data`` as indented JSON (NaN written as null). Returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    with open(path, "w", encoding="utf-8") as f:
        json.dump(clean(data), f, indent=2)
    return path


def write_csv(
    path: Union[str, os.PathLike], rows: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None
) -> str:
    """Write dict rows as CSV; columns default to the union of the rows' keys in first-seen order."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return path


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> List[str]:
    char_width = max(draw.textlength("M", font=font), 1)
    lines = textwrap.wrap(text, width=max(int(width / char_width * 1.4), 4)) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(len(lines[-1]) - 1, 0)] + "…"
    return lines


def make_grid(
    rows: Sequence[Tuple[str, Sequence[Optional[ImageInput]]]],
    column_labels: Optional[Sequence[str]] = None,
    cell_size: int = 128,
    label_width: int = 150,
    header_lines: int = 3,
) -> Image.Image:
    """A labelled image grid: one row per ``(label, images)`` (``None`` leaves a cell blank), optional column
    labels (e.g. prompts) above."""
    font = _font()
    columns = max((len(images) for _, images in rows), default=0)
    columns = max(columns, len(column_labels or []), 1)
    line_height = 12
    header = (header_lines * line_height + 6) if column_labels else 0
    grid = Image.new("RGB", (label_width + columns * cell_size, header + len(rows) * cell_size), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(column_labels or []):
        for i, line in enumerate(_wrap(draw, label, font, cell_size - 4, header_lines)):
            draw.text((label_width + c * cell_size + 2, 2 + i * line_height), line, fill="black", font=font)
    for r, (label, images) in enumerate(rows):
        top = header + r * cell_size
        for i, line in enumerate(_wrap(draw, label, font, label_width - 6, max(cell_size // line_height - 1, 1))):
            draw.text((4, top + 4 + i * line_height), line, fill="black", font=font)
        for c, image in enumerate(images):
            if image is None:
                continue
            cell = load_image(image)
            fit = (cell_size - 2) / max(cell.width, cell.height)  # fit the cell, up or down
            cell = cell.resize((max(round(cell.width * fit), 1), max(round(cell.height * fit), 1)), Image.LANCZOS)
            grid.paste(
                cell,
                (label_width + c * cell_size + (cell_size - cell.width) // 2, top + (cell_size - cell.height) // 2),
            )
    return grid


def plot_tradeoff(
    points: Sequence[Dict[str, Any]],
    path: Union[str, os.PathLike],
    image_metrics: Sequence[str] = ("clip_i_masked", "clip_i", "dino"),
    title: Optional[str] = None,
) -> Optional[str]:
    """Text alignment (x) against image alignment (y), one point per row of ``points`` (one panel per image metric
    present); rows of the same ``method`` with a ``scale`` are joined by a line in scale order (a strength sweep:
    the fidelity/editability trade-off, like Perfusion's Pareto front). Returns the path, or ``None`` if
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install matplotlib): the trade-off plot is not drawn.")
        return None
    metrics = [m for m in image_metrics if any(p.get(m) is not None for p in points)]
    if not metrics or not any(p.get("clip_t") is not None for p in points):
        logger.warning("No text and image alignment to plot.")
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.4), squeeze=False)
    methods = list(dict.fromkeys(str(p.get("method")) for p in points))
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for ax, metric in zip(axes[0], metrics):
        for m_index, method in enumerate(methods):
            rows = [p for p in points if str(p.get("method")) == method and p.get(metric) is not None]
            rows.sort(key=lambda p: (p.get("scale") is None, p.get("scale") or 0.0))
            if not rows:
                continue
            xs, ys = [p["clip_t"] for p in rows], [p[metric] for p in rows]
            colour = colours[m_index % len(colours)]
            sweep = len(rows) > 1
            ax.plot(xs, ys, "-o" if sweep else "*", markersize=6 if sweep else 12, color=colour, label=method)
            for p, x, y in zip(rows, xs, ys):
                if p.get("scale") is not None and len(rows) > 1:
                    ax.annotate(f"{p['scale']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(METRIC_LABELS["clip_t"] + " (editability)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric) + " (fidelity)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
