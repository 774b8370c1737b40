"""Read a run folder as untrusted input: results.parquet and config.yaml checked, each problem one line naming the file and the fix.

A run folder may be anything a user points evaluate at: a half-written copy, another tool's
Parquet file, a hand-edited config.yaml. Every check here turns what would be a traceback
deep in the grouping (`KeyError: 'task'`, pyarrow's "magic bytes not found") into a
UsageError that names the file, says what is wrong with it and how to get a good one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

from adir_storage import NotAFile, is_local, join_url, open_fs, read_bytes, redact_url
from adir_storage.yaml_safe import load_yaml
from cluster.results import CONFIG_NAME, RESULTS_NAME
from pipelines.errors import UsageError
from pipelines.evaluation.arms import Run

# Columns every row of `adir reconstruct` has, and that evaluate cannot do without.
REQUIRED = ("image_id", "uri", "task", "mode", "seed")
# The kind of every column evaluate reads; another type means the file is not reconstruct's.
KINDS = {
    "image_id": "text",
    "uri": "text",
    "task": "text",
    "mode": "text",
    "output": "text",
    "stage": "text",
    "error": "text",
    "seed": "integer",
    "psnr": "number",
    "ssim": "number",
    "naive_psnr": "number",
    "neighbour_ids": "list of text",
}
MAX_CONFIG_BYTES = 2**20  # config.yaml is about 50 lines; a bigger one is not ours
MAX_DETAIL = 160  # characters of a parser's own message quoted in ours


def _first_line(text: str) -> str:
    line = (str(text).strip().splitlines() or [""])[0]
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 3] + "..."


def _is_kind(dtype, kind: str) -> bool:
    import pyarrow as pa

    if pa.types.is_null(dtype):  # a column with no value in any row: as good as absent
        return True
    if kind == "text":
        return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    if kind == "integer":
        return pa.types.is_integer(dtype)
    if kind == "number":
        return pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return _is_kind(dtype.value_type, "text")
    return False


def _not_regular(url: str) -> str | None:
    """What a local path is when it is not a regular file (reading a FIFO would block forever)."""
    if not is_local(url):
        return None
    mode = os.stat(open_fs(url)[1]).st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a folder" if stat.S_ISDIR(mode) else "a device or socket"


def read_results(url: str, storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of RUN/results.parquet; UsageError naming the file when it is not a reconstruct table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = join_url(url, RESULTS_NAME)
    shown, run = redact_url(file), redact_url(url)
    fs, path = open_fs(file, storage_options)
    fs.invalidate_cache()
    if not fs.exists(path):
        raise FileNotFoundError(f"{run} has no {RESULTS_NAME}; pass folders written by `adir reconstruct --out`")
    rebuild = f"rerun `adir reconstruct` into {run} to rebuild it"
    kind = _not_regular(file)
    if kind is not None:
        raise UsageError(f"{shown} is {kind}, not a regular file; {rebuild}")
    try:
        table = pq.read_table(pa.BufferReader(read_bytes(file, storage_options, max_bytes=None)))
    except (pa.ArrowException, OSError, ValueError) as exc:
        detail = _first_line(str(exc).replace("Could not open Parquet input source '<Buffer>': ", ""))
        raise UsageError(f"{shown} is not a Parquet file ({detail}); {rebuild}") from None
    not_ours = f"it is not from `adir reconstruct` ({rebuild})"
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise UsageError(f"{shown} lacks columns {', '.join(missing)}; {not_ours}")
    for name, kind in KINDS.items():
        if name in table.column_names and not _is_kind(table.schema.field(name).type, kind):
            raise UsageError(f"{shown}: column {name} is {table.schema.field(name).type}, not {kind}; {not_ours}")
    rows = table.to_pylist()
    for number, row in enumerate(rows, 1):
        for name in REQUIRED:
            if row[name] is None:
                raise UsageError(f"{shown}: row {number} has no {name}; {not_ours}")
    return rows


def read_config(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """RUN/config.yaml as a mapping of option names ({} when absent); UsageError naming the file otherwise."""
    file = join_url(url, CONFIG_NAME)
    shown = redact_url(file)
    fs, path = open_fs(file, storage_options)
    if not fs.exists(path):
        return {}
    fix = "fix or remove it (without it evaluate groups the run by what its rows record); `adir reconstruct` writes it"
    kind = _not_regular(file)
    if kind is not None:
        raise UsageError(f"{shown} is {kind}, not a regular file; {fix}")
    try:
        text = read_bytes(file, storage_options, max_bytes=MAX_CONFIG_BYTES).decode("utf-8")
        config = load_yaml(text, shown)  # bounded: a YAML bomb is refused before it is built
    except NotAFile:
        raise UsageError(f"{shown} is larger than {MAX_CONFIG_BYTES // 2**10} KiB; {fix}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{shown} is not UTF-8 text; {fix}") from None
    except ValueError as exc:  # the YAML's own error, already one line naming the file
        raise UsageError(f"{str(exc).removesuffix('; fix the file')}; {fix}") from None
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise UsageError(f"{shown} is not a mapping of option names (it holds a {type(config).__name__}); {fix}")
    odd = next((k for k in config if not isinstance(k, str)), None)
    if odd is not None:
        raise UsageError(f"{shown} is not a mapping of option names (key {_first_line(repr(odd))}); {fix}")
    return dict(config)


def read_run(url: str, storage_options: Mapping[str, Any] | None = None) -> Run:
    """A run folder's rows and options, checked."""
    rows = read_results(url, storage_options)
    config = read_config(url, storage_options)
    if is_local(url):
        url = url.removeprefix("file://")
    return Run(url=url, config=config, rows=rows)
