"""The results page of a pipeline run: one self-contained HTML file plus a markdown summary.

    write_report(out_dir, fids={...}, settings={...}, timings={...},
                 examples=[(masked, result, gt), ...], steps=(imga_strip, mask_strip))

writes out_dir/report.html (every image embedded as a base64 PNG, so the file can be
mailed or opened anywhere), out_dir/examples.png (the example grid) and
out_dir/results.md (the same figures as markdown tables, images linked relatively).
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

SCALE = 2  # 64x64 images are shown at 128x128, nearest-neighbour, so pixels stay visible
COLUMNS = ("masked input", "result", "ground truth")


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img_tag(path: Path | None, alt: str) -> str:
    if path is None:
        return "(none)"
    with Image.open(path) as im:
        w, h = im.size
        data = _png_b64(im.convert("RGB"))
    return (f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
            f'width="{w * SCALE}" height="{h * SCALE}">')


def format_value(value) -> str:
    """Numbers with 4 significant decimals, seconds as such, None as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # (H, W, 3)


def example_grid(examples: list[tuple[Path | None, ...]]) -> Image.Image:
    """One row per example, e.g. masked input | result | ground truth (grey if absent)."""
    rows = []
    for row in examples:
        images = [_read_rgb(p) if p else None for p in row]
        size = next(im.shape for im in images if im is not None)
        rows.append(np.concatenate([im if im is not None else np.full(size, 128, np.uint8)
                                    for im in images], axis=1))  # (H, columns*W, 3)
    return Image.fromarray(np.concatenate(rows, axis=0))  # (N*H, columns*W, 3)


def _table(rows: dict, header: tuple[str, str]) -> tuple[str, str]:
    """(HTML table, markdown table) of name -> value."""
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(format_value(v))}</td></tr>"
                    for k, v in rows.items())
    page = f"<table><tr><th>{header[0]}</th><th>{header[1]}</th></tr>{cells}</table>"
    md = f"| {header[0]} | {header[1]} |\n|---|---|\n" + "".join(
        f"| {k} | {format_value(v)} |\n" for k, v in rows.items())
    return page, md


def write_report(out_dir: str | Path, fids: dict[str, float | None], settings: dict,
                 timings: dict[str, float], examples: list[tuple[Path | None, ...]],
                 steps: tuple[Path, Path] | None = None,
                 title: str = "MaskGIT inpainting results", columns: tuple[str, ...] = COLUMNS) -> Path:
    """Write report.html, examples.png and results.md into `out_dir`; return the HTML path.

    fids: name -> FID (None when it could not be computed, e.g. no ground truth);
    timings: stage -> seconds; examples: one image path (or None) per column of `columns`,
    by default (masked, result, ground truth or None); steps: (decoded-images strip,
    token-mask strip) of one image, from
    inpainting's imga/ and mask_scheduling/ folders.
    """
    out_dir = Path(out_dir)
    fid_html, fid_md = _table(fids, ("metric", "FID (lower is better)"))
    set_html, set_md = _table(settings, ("setting", "value"))
    time_html, time_md = _table({k: f"{v:.1f} s" for k, v in timings.items()}, ("stage", "time"))

    grid_path = out_dir / "examples.png"
    if examples:
        example_grid(examples).save(grid_path)
    head = "".join(f"<th>{c}</th>" for c in ("#",) + tuple(columns))
    rows = "".join(f"<tr><td>{i}</td>" + "".join(f"<td>{_img_tag(p, c)}</td>"
                                                 for p, c in zip(row, columns)) + "</tr>"
                   for i, row in enumerate(examples))
    step_html = step_md = ""
    if steps is not None:
        imga, masks = steps
        step_html = ("<h2>Iterative decoding of one image</h2>"
                     "<p>Top: the masked input, then the image decoded after each step. "
                     "Bottom: the token mask after each step (white = decided).</p>"
                     f"<p>{_img_tag(imga, 'decoded image per step')}</p>"
                     f"<p>{_img_tag(masks, 'token mask per step')}</p>")
        rel = lambda p: Path(os.path.relpath(p, out_dir)).as_posix()
        step_md = (f"\n## Iterative decoding of one image\n\n![decoded per step]({rel(imga)})\n\n"
                   f"![token mask per step]({rel(masks)})\n")

    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
img {{ image-rendering: pixelated; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Figures</h2>{fid_html}
<h2>Settings</h2>{set_html}
<h2>Timings</h2>{time_html}
<h2>Examples</h2><table><tr>{head}</tr>{rows}</table>
{step_html}
</body></html>
"""
    html_path = out_dir / "report.html"
    html_path.write_text(page)
    grid_md = f"\n## Examples\n\n{' | '.join(columns)}\n\n![examples](examples.png)\n" if examples else ""
    (out_dir / "results.md").write_text(f"# {title}\n\n## Figures\n\n{fid_md}\n## Settings\n\n"
                                        f"{set_md}\n## Timings\n\n{time_md}{grid_md}{step_md}")
    return html_path
