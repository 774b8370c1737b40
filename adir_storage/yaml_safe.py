"""YAML that a hostile file cannot turn into a hang: aliases bounded, nesting bounded, one-line errors.

A job config, a run's config.yaml and an edit's --config are read from files anyone may have
written. PyYAML's safe loader shares an aliased node rather than copying it, so a "billion
laughs" file (`b: [*a, *a, ...]` nine levels deep) loads in microseconds as a small graph of
shared lists; but anything that walks the value (a type check's repr, a secret scrubber, a
comparison) sees 9^9 leaves and runs for minutes before a MemoryError. `load_yaml` measures the
document as it would be walked — every alias counted as a full copy — and refuses it past
`MAX_YAML_NODES`, before any object is built. Real configs are a few dozen values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

MAX_YAML_NODES = 100_000  # values once every alias is expanded; a job config holds about 50
MAX_YAML_BYTES = 16 * 2**20  # a config file larger than this is not a config
MAX_YAML_DEPTH = 100  # nesting; PyYAML recurses per level, and a deep file would exhaust the stack


class _CountingLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document whose expanded size or depth passes the bounds."""

    def construct_document(self, node):
        _check_size(node)
        return super().construct_document(node)


def _check_size(root) -> None:
    """Count the nodes of `root` as a walk would meet them (shared ones counted at every use), iteratively."""
    sizes: dict[int, int] = {}  # id(node) -> expanded size, once known
    open_nodes: set[int] = set()  # on the current path: meeting one again is a recursive alias
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack[-1]
        if depth > MAX_YAML_DEPTH:
            raise ValueError(f"is nested more than {MAX_YAML_DEPTH} levels deep; a config is flat")
        children = _children(node)
        pending = [c for c in children if id(c) not in sizes]
        if id(node) not in open_nodes and pending:
            open_nodes.add(id(node))
            for child in pending:
                if id(child) in open_nodes:
                    raise ValueError(
                        "has an alias inside the value it names (a recursive alias); write the values out plainly"
                    )
                stack.append((child, depth + 1))
            continue
        stack.pop()
        open_nodes.discard(id(node))
        if id(node) in sizes:
            continue
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 0) for c in children)
        if sizes[id(node)] > MAX_YAML_NODES:
            raise ValueError(
                f"expands to more than {MAX_YAML_NODES:,} values through its aliases (&anchor / *alias); "
                "a config holds a few dozen: write the values out plainly"
            )


def _children(node) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str | bytes, source: str) -> Any:
    """The value of a YAML document, or ValueError in one line naming `source` (a path or URL shown to the user)."""
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(f"{source} is larger than {MAX_YAML_BYTES // 2**20} MiB; a config file is a few lines")
    try:
        return yaml.load(text, Loader=_CountingLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        problem = " ".join(p for p in parts if p) or str(exc).splitlines()[0]
        raise ValueError(f"{source} is not valid YAML{where}: {problem}; fix the file") from None
    except RecursionError:
        raise ValueError(f"{source} is nested too deeply to be a config; fix the file") from None
    except ValueError as exc:
        raise ValueError(f"{source} {exc}") from None


def read_yaml(url: str, storage_options: Mapping[str, Any] | None = None, *, what: str = "config") -> Any:
    """load_yaml of the file at `url` (any fsspec URL): only a regular file, at most MAX_YAML_BYTES read.

    Raises FileNotFoundError or ValueError, each one line naming `what` and the URL (credentials redacted).
    """
    from adir_storage import NotAFile, read_bytes, redact_url

    source = f"{what} {redact_url(url)}"
    try:
        data = read_bytes(url, storage_options, max_bytes=MAX_YAML_BYTES)
    except NotAFile as exc:  # a FIFO would block forever, a link to /dev/zero never end
        reason = str(exc).split(";")[0].split(", the cap")[0]
        raise ValueError(f"{what} {reason}; pass a YAML file") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{source} not found") from None
    except IsADirectoryError:
        raise ValueError(f"{source} is a folder, not a YAML file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{source} is not UTF-8 text; save it as UTF-8") from None
    return load_yaml(text, source)
