"""The evaluation's HTML report: per image its input, plain restoration, every arm and the ground truth, the retrieved neighbours, and the metrics tables.

The report is one folder: `report.html` and `report_files/`, which holds every picture the page
shows (copied or rebuilt here, never linked to the run folders), so it can be moved, zipped
or served as it is. File names come from `cluster.results.safe_name` of the redacted id, so no
image id can reach outside `report_files/` or put a URL's password in a name; every id and
label in the page is redacted and HTML-escaped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from adir_storage import FolderRefused, is_local, is_within, join_url, location, open_fs, redact_text
from cluster.results import safe_name
from pipelines.evaluation.config import MODE_TITLES, PLAIN
from pipelines.evaluation.evaluation import Evaluation
from pipelines.evaluation.report_tables import _e, headline_section, metrics_tables
from pipelines.evaluation.tables import first_line
from pipelines.evaluation.views import output_url

REPORT_NAME = "report.html"
FILES_DIR = "report_files"
DISPLAY_WIDTH = 192  # CSS pixels per picture: 96 px test images at 2x, 64 px at 3x
THUMBNAIL = 64  # neighbour thumbnails, pixels (centre square)
THUMBNAIL_DISPLAY = 48
CAPTION_METRICS = ("psnr", "ssim")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }
table.metrics td { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.images td { text-align: center; }
figure { margin: 0; }
figcaption { font-size: 0.8em; color: #444; font-variant-numeric: tabular-nums; }
img { image-rendering: pixelated; display: block; margin: auto; background: #eee; }
table.images td.neighbours { text-align: left; }
th { white-space: nowrap; }
.neighbours div { margin: 2px 0; }
.neighbours img { display: inline-block; margin: 1px; }
.neighbours span { display: inline-block; width: 9em; font-size: 0.8em; vertical-align: top; }
.missing { color: #a00; font-size: 0.8em; }
.id { font-family: monospace; word-break: break-all; max-width: 12em; }
.plots svg { margin: 0 1em 1em 0; border: 1px solid #ddd; }
"""


class _Files:
    """Writes report_files/… once each and returns the page-relative src.

    Names come from ids, labels and tasks through `name`: redacted first (an id may be a URL with a
    password in it) and made unique, so two ids that differ only in a secret never share a picture.
    A local write never goes through a link: the folder written into must resolve inside OUT.
    """

    def __init__(self, out: str, storage_options: Mapping[str, Any] | None):
        self.out, self.storage_options = out, storage_options
        self.written: set[str] = set()
        self.names: dict[tuple[str, str], str] = {}  # (kind, text) -> its file name in this report
        self.taken: set[tuple[str, str]] = set()

    def name(self, text: Any, kind: str) -> str:
        """A file name for `text` (an id, a label, a task: its `kind`) that carries no credential and is no
        other text's of that kind."""
        key = (kind, str(text))
        if key not in self.names:
            base = safe_name(redact_text(key[1]))
            name, number = base, 1
            while (kind, name.lower()) in self.taken:  # compared case-folded: some file systems fold case
                number += 1
                name = f"{base}-{number}"
            self.names[key] = name
            self.taken.add((kind, name.lower()))
        return self.names[key]

    def put(self, relative: str, data: bytes) -> str:
        if relative not in self.written:
            url = join_url(self.out, relative)
            if is_local(url):
                _check_inside(url, self.out)  # the file itself too: a link to a file outside is refused
                path = url.removeprefix("file://")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:  # no fsync per picture: a report is rewritten whole by a rerun
                    f.write(data)
            else:
                fs, path = open_fs(url, self.storage_options)
                fs.pipe_file(path, data)
            self.written.add(relative)
        return quote(relative)


def _check_inside(url: str, out: str) -> None:
    """Refuse a local write that resolves outside OUT (location resolves every link on the way, the file's own too)."""
    if not is_within(location(url), location(out)):
        raise FolderRefused(
            f"{os.path.dirname(url)} leads out of {out} through a symbolic link; a job never writes through a "
            "link inside its output folder. Remove the link or choose another --out"
        )


def _img(src: str, width: int, height: int, alt: str, title: str | None = None) -> str:
    hover = f' title="{_e(title)}"' if title is not None else ""
    return f'<img src="{_e(src)}" width="{width}" height="{height}" alt="{_e(alt)}"{hover}>'


def _display_size(shape: Sequence[int], width: int = DISPLAY_WIDTH) -> tuple[int, int]:
    h, w = int(shape[-2]), int(shape[-1])
    return width, max(1, round(width * h / w))


def _caption(values: Mapping[str, float]) -> str:
    parts = [f"{m} {values[m]:.4g}" for m in CAPTION_METRICS if m in values]
    return f"<figcaption>{_e(' · '.join(parts))}</figcaption>" if parts else ""


def _figure(img: str, caption: str = "") -> str:
    return f"<figure>{img}{caption}</figure>"


def _missing(text: str) -> str:
    return f'<span class="missing">{_e(text)}</span>'


# ---------------------------------------------------------------------- neighbours
class _Neighbours:
    """Thumbnails of corpus images by id, per index (its ids.parquet maps ids to URIs)."""

    def __init__(self, files: _Files, storage_options: Mapping[str, Any] | None):
        self.files, self.storage_options = files, storage_options
        self.uris: dict[str, dict[str, str] | Exception] = {}

    def _uris(self, index: str) -> dict[str, str]:
        if index not in self.uris:
            from cluster.retrieval import read_corpus_ids

            try:
                ids, uris = read_corpus_ids(index, self.storage_options)
                self.uris[index] = dict(zip(ids.tolist(), uris.tolist()))
            except Exception as exc:
                self.uris[index] = exc
        found = self.uris[index]
        if isinstance(found, Exception):
            raise found
        return found

    def html(self, index: str | None, ids: Sequence[str], limit: int) -> str:
        from adir_storage import read_bytes
        from cluster.images import decode_thumbnail, encode_png, to_tensor01

        if not ids or limit == 0:
            return ""
        if not index:
            return _missing("no index recorded in config.yaml")
        try:
            uris = self._uris(index)
        except Exception as exc:
            return _missing(f"index {index} unreadable: {type(exc).__name__}: {exc}")
        folder = f"{FILES_DIR}/neighbours/{self.files.name(index, 'index')}"
        cells = []
        for image_id in list(ids)[:limit]:
            relative = f"{folder}/{self.files.name(image_id, 'neighbour')}.png"
            try:
                if relative not in self.files.written:
                    thumbnail = decode_thumbnail(read_bytes(uris[image_id], self.storage_options), THUMBNAIL)
                    self.files.put(relative, encode_png(to_tensor01(thumbnail)))
                cells.append(_img(quote(relative), THUMBNAIL_DISPLAY, THUMBNAIL_DISPLAY, image_id, title=image_id))
            except Exception as exc:
                cells.append(_missing(f"{image_id}: {type(exc).__name__}"))
        more = f" … +{len(ids) - limit}" if len(ids) > limit else ""
        return "".join(cells) + _e(more)


# ---------------------------------------------------------------------- image rows
def _image_rows(ev: Evaluation, task: str, files: _Files, neighbours: _Neighbours) -> str:
    from adir_storage import read_bytes
    from cluster.images import encode_png

    arms = ev.arms_of(task)
    shown = [a for a in arms if a.mode != PLAIN]
    plain = [a for a in arms if a.mode == PLAIN]
    ids = sorted({i for a in shown for i in a.rows})
    if ev.config.report_images is not None:
        ids = ids[: ev.config.report_images]
    header = ["image", "input", *[f"{a.label}" for a in plain], *[a.label for a in shown], "ground truth"]
    titles = {a.label: MODE_TITLES.get(a.mode, a.mode) for a in arms}
    parts = [
        '<table class="images"><tr>'
        + "".join(f'<th title="{_e(titles.get(h, h))}">{_e(h)}</th>' for h in header)
        + "</tr>"
    ]
    for image_id in ids:
        folder = f"{FILES_DIR}/{files.name(task, 'task')}/{files.name(image_id, 'image')}"
        source = next(a for a in shown if image_id in a.rows)
        row, run = source.rows[image_id], source.runs[image_id]
        cells = [f'<td class="id">{_e(image_id)}</td>']
        try:
            view = ev.views.get(row, run)
        except Exception as exc:
            view = None
            reason = f"input unreadable: {type(exc).__name__}: {first_line(exc)}"
        size = _display_size(view.plain01.shape) if view is not None else (DISPLAY_WIDTH, DISPLAY_WIDTH)
        if view is None:
            cells.append(f"<td>{_missing(reason)}</td>")
        else:
            src = files.put(f"{folder}/input.png", encode_png(view.input01))
            cells.append(f"<td>{_figure(_img(src, *size, f'{image_id}: input'))}</td>")
        for arm in plain:
            if view is None or image_id not in arm.rows:
                cells.append(f"<td>{_missing('not available')}</td>")
                continue
            src = files.put(f"{folder}/plain-{files.name(arm.label, 'arm')}.png", encode_png(view.plain01))
            cells.append(
                f"<td>{_figure(_img(src, *size, f'{image_id}: {arm.label}'), _caption(arm.values.get(image_id, {})))}</td>"
            )
        for arm in shown:
            arow = arm.rows.get(image_id)
            if arow is None:
                cells.append(f"<td>{_missing('not in this arm')}</td>")
            elif arow.get("error") is not None:
                cells.append(
                    f"<td>{_missing('error [' + str(arow.get('stage')) + ']: ' + first_line(arow['error']))}</td>"
                )
            else:
                try:
                    data = read_bytes(output_url(arow, arm.runs[image_id]), ev.config.storage_options)
                    src = files.put(f"{folder}/{files.name(arm.label, 'arm')}.png", data)
                    cells.append(
                        f"<td>{_figure(_img(src, *size, f'{image_id}: {arm.label}'), _caption(arm.values.get(image_id, {})))}</td>"
                    )
                except Exception as exc:
                    cells.append(f"<td>{_missing(f'output unreadable: {type(exc).__name__}')}</td>")
        if view is not None and view.truth01 is not None:
            src = files.put(f"{folder}/truth.png", encode_png(view.truth01))
            cells.append(f"<td>{_figure(_img(src, *size, f'{image_id}: ground truth'))}</td>")
        else:
            cells.append(f"<td>{_missing('no ground truth')}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
        lines = []
        for arm in shown:
            arow = arm.rows.get(image_id)
            if arow and arow.get("neighbour_ids"):
                thumbs = neighbours.html(
                    arm.runs[image_id].config.get("index"), arow["neighbour_ids"], ev.config.report_neighbours
                )
                if thumbs:
                    lines.append(f"<div><span>{_e(arm.label)} neighbours</span>{thumbs}</div>")
        if lines:
            parts.append(f'<tr><td></td><td class="neighbours" colspan="{len(header) - 1}">{"".join(lines)}</td></tr>')
    parts.append("</table>")
    return "".join(parts)


def render(ev: Evaluation, files: _Files, progress: bool = False) -> str:
    """The page's HTML; writes the pictures it shows through `files`."""
    neighbours = _Neighbours(files, ev.config.storage_options)
    runs = "".join(f"<li><code>{_e(r.url)}</code></li>" for r in ev.runs)
    body = [
        "<h1>ADIR evaluation</h1>",
        f"<p>Runs:</p><ul>{runs}</ul>",
        "<p>Tables: mean ± sample std over images (n = images with a value); paired differences are over the images "
        "both arms have, with a Student-t interval. psnr and ssim are the job's own (float output); the other metrics "
        "were computed on the written PNGs. Captions under the pictures: psnr · ssim of that image.</p>",
        "<p>Tasks: "
        + ", ".join(f'<a href="#task-{_e(files.name(t, "task"))}">{_e(t)}</a>' for t in ev.tasks)
        + "</p>",
        headline_section(ev),
    ]
    tasks = ev.tasks
    for number, task in enumerate(tasks, 1):
        if progress:
            print(f"report: {task} ({number}/{len(tasks)})", file=sys.stderr)
        body.append(f'<h2 id="task-{_e(files.name(task, "task"))}">{_e(task)}</h2>')
        # Pictures first, at a size a person can judge; the long tables after them.
        body.append("<h3>Images</h3>" + _image_rows(ev, task, files, neighbours))
        body.append(metrics_tables(ev, task))
    if ev.unavailable or ev.notes:
        body.append("<h2>Notes</h2><ul>")
        body += [f"<li>{_e(m)}: unavailable here: {_e(r)}</li>" for m, r in ev.unavailable.items()]
        body += [f"<li>{_e(n)}</li>" for n in ev.notes]
        body.append("</ul>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>ADIR evaluation</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(ev: Evaluation, *, progress: bool = False) -> str:
    """Write OUT/report.html and OUT/report_files/; returns the page's URL."""
    out = ev.config.out
    files = _Files(out, ev.config.storage_options)
    page = render(ev, files, progress=progress)
    url = join_url(out, REPORT_NAME)
    files.written.discard(REPORT_NAME)
    files.put(REPORT_NAME, redact_text(page).encode("utf-8"))  # every id and message was redacted; this is the net
    return url
