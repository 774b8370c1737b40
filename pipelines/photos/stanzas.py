"""Reading the credits that ship with the photos: Debian copyright-style stanzas and licence names."""

from __future__ import annotations

import re
from urllib.parse import unquote

from pipelines.photos.catalogue import LICENCE_NAMES


def licence_id(text: str) -> str:
    key = " ".join(text.strip().lower().split())
    return LICENCE_NAMES.get(key, text.strip())


_STANZA_KEYS = {
    "copyright": "copyright",
    "license": "license",
    "licence": "license",
    "source": "source",
    "files": "files",
    "file": "files",
    "comment": "comment",
    "comments": "comment",
}


def parse_credit_stanzas(text: str) -> list[dict[str, str | list[str]]]:
    """gcompris' README format: blank-line separated stanzas of `Key: value` lines; indented or
    bare lines continue the previous key; `Files:` lists one path per line (or one inline)."""
    stanzas, current, key = [], {}, None
    for raw in text.splitlines() + [""]:
        line = raw.rstrip()
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
            continue
        m = re.match(r"^([A-Za-z][A-Za-z-]*):\s*(.*)$", line)
        field = m.group(1).lower() if m else ""
        if m and not raw[:1].isspace() and field in _STANZA_KEYS:
            key = _STANZA_KEYS[field]
            current.setdefault(key, [])
            if m.group(2).strip():
                current[key].append(m.group(2).strip())
        elif key != "files" and re.fullmatch(r"[\w./@+-]+\.(webp|svgz?|png|jpe?g|gif|ogg|wav)", line.strip()):
            # Some stanzas list their files with no `Files:` line.
            current.setdefault("files", []).append(line.strip())
        elif key is not None:
            current[key].append(line.strip())
    return [{k: (v if k == "files" else " ".join(v)) for k, v in s.items()} for s in stanzas]


def canonical_url(url: str) -> str:
    url = unquote(url.strip()).replace(" ", "_").lower()
    return re.sub(r"^https?://(www\.)?", "", url).rstrip("/")
