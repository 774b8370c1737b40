"""Corpus listing: image ids and URIs from a folder or an id/URI list, cut into deterministic shards."""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fsspec.core import split_protocol

from adir_storage import is_local, is_utf8, join_url, open_fs, printable
from index_builder.content import folder_stamps, uri_stamps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LIST_EXTENSIONS = (".csv", ".tsv", ".txt")
# Column names we recognise in an id/URI list; Open Images' own CSVs call the id `ImageID`.
ID_COLUMNS = ("image_id", "imageid", "id")
URI_COLUMNS = ("uri", "url", "path")
NOT_UTF8 = "file name is not valid UTF-8; rename the file to UTF-8 (e.g. with convmv)"


@dataclass(frozen=True)
class Listing:
    """The corpus as sorted (image_id, uri) pairs, plus inputs that could not be listed."""

    image_ids: tuple[str, ...]
    uris: tuple[str, ...]
    # (image_id, uri, error) for entries dropped at listing time, e.g. a second file with an id already taken.
    rejected: tuple[tuple[str, str, str], ...] = ()
    # Each image's content stamp (index_builder.content), or () when the source gives none.
    stamps: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.image_ids)

    def limit(self, n: int | None) -> Listing:
        if n is None:
            return self
        if n < 0:
            raise ValueError(f"--limit must be >= 0; got {n}")
        return Listing(self.image_ids[:n], self.uris[:n], self.rejected, self.stamps[:n])


@dataclass(frozen=True)
class Shard:
    """A fixed slice of the sorted ids: shard `index` holds ids[index*size:(index+1)*size]."""

    index: int
    size: int
    image_ids: tuple[str, ...]
    uris: tuple[str, ...]
    stamps: tuple[str, ...] = ()  # content stamps, aligned with the ids (() when the source gives none)

    @property
    def name(self) -> str:
        # The size is part of the name so a rebuild with another --shard-size never mistakes
        # an old file for one of its own shards.
        return f"shard-{self.index:06d}-size{self.size}"

    @property
    def fingerprint(self) -> str:
        """sha256 of this shard's (id, uri, content stamp) triples: a committed file is reused only if it matches.

        The stamp makes a picture replaced under its old name a changed shard (issue 21).
        """
        digest = hashlib.sha256()
        stamps = self.stamps or ("",) * len(self.image_ids)
        for image_id, uri, stamp in zip(self.image_ids, self.uris, stamps):
            line = image_id.encode("utf-8", "surrogateescape") + b"\t" + uri.encode("utf-8", "surrogateescape")
            digest.update(line + (b"\t" + stamp.encode("utf-8") if stamp else b"") + b"\n")
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.image_ids)


def plan_shards(listing: Listing, shard_size: int) -> list[Shard]:
    """Cut sorted ids into shards of `shard_size` (the last may be short); same input, same shards."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1; got {shard_size}")
    return [
        Shard(
            i // shard_size,
            shard_size,
            listing.image_ids[i : i + shard_size],
            listing.uris[i : i + shard_size],
            listing.stamps[i : i + shard_size],
        )
        for i in range(0, len(listing), shard_size)
    ]


def _id_from_relative(rel: str) -> str:
    stem, ext = posixpath.splitext(rel)
    return stem if ext else rel


def _sorted_unique(pairs: Sequence[tuple[str, str]], stamps: Mapping[str, str | Exception] | None = None) -> Listing:
    """Sort by (id, uri); a repeated id keeps its first URI and rejects the rest, one row each.

    stamps: uri → content stamp, or the exception that rejects the entry (not a regular file).
    """
    ids: list[str] = []
    uris: list[str] = []
    kept: list[str] = []
    rejected: list[tuple[str, str, str]] = []
    for image_id, uri in sorted(pairs):
        stamp = (stamps or {}).get(uri, "")
        if not (is_utf8(image_id) and is_utf8(uri)):
            # Parquet strings are UTF-8: a file name with undecodable bytes cannot be an id or a URI.
            rejected.append((printable(image_id), printable(uri), NOT_UTF8))
            continue
        if isinstance(stamp, Exception):
            rejected.append((image_id, uri, str(stamp)))
            continue
        if ids and ids[-1] == image_id:
            rejected.append(
                (
                    image_id,
                    uri,
                    f"duplicate image id {image_id!r}: already taken by {uris[-1]}; rename one of the files",
                )
            )
            continue
        ids.append(image_id)
        uris.append(uri)
        kept.append(stamp)
    return Listing(tuple(ids), tuple(uris), tuple(rejected), tuple(kept) if stamps is not None else ())


def list_folder(url: str, storage_options: Mapping[str, Any] | None = None) -> Listing:
    """Every image file under a folder; its id is the path below the folder without extension.

    Each comes with its content stamp from the listing; entries that are not regular files
    (FIFOs, devices, links to them) become listing error rows, never opened.
    """
    fs, root = open_fs(url, storage_options)
    fs.invalidate_cache()  # a listing cached by an earlier run would hide new files
    if not fs.isdir(root):
        raise FileNotFoundError(
            f"source {url} is not a folder of images nor a {'/'.join(LIST_EXTENSIONS)} list; check the URL"
        )
    root = root.rstrip("/")
    local = is_local(url)
    infos = {p: i for p, i in fs.find(root, detail=True).items() if p.lower().endswith(IMAGE_EXTENSIONS)}
    by_path = folder_stamps(fs, infos, local)
    pairs, stamps = [], {}
    for path in infos:
        rel = path[len(root) + 1 :] if path.startswith(root + "/") else posixpath.basename(path)
        uri = path if local else fs.unstrip_protocol(path)
        pairs.append((_id_from_relative(rel), uri))
        stamps[uri] = by_path[path]
    return _sorted_unique(pairs, stamps)


def _read_items(url: str, storage_options: Mapping[str, Any] | None) -> list[tuple[str | None, str | None]]:
    """(id, uri) items of a CSV/TSV with a header, or of a text file with one id or URI per line."""
    fs, path = open_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"list {url} holds no image ids or URIs")
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    if path.lower().endswith(".txt"):
        return [_classify(line.strip()) for line in lines]
    rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
    header = [c.strip().lower() for c in rows[0]]
    id_col = next((header.index(c) for c in ID_COLUMNS if c in header), None)
    uri_col = next((header.index(c) for c in URI_COLUMNS if c in header), None)
    if id_col is None and uri_col is None:
        # No recognised header: the first column holds ids or URIs.
        return [_classify(row[0].strip()) for row in rows if row]
    items = []
    for row in rows[1:]:
        image_id = row[id_col].strip() if id_col is not None and id_col < len(row) else None
        uri = row[uri_col].strip() if uri_col is not None and uri_col < len(row) else None
        items.append((image_id or None, uri or None))
    return items


def _classify(item: str) -> tuple[str | None, str | None]:
    if "://" in item or item.startswith("/"):
        return None, item
    return item, None


def _id_from_uri(uri: str) -> str:
    name = posixpath.basename(split_protocol(uri)[1].rstrip("/"))
    return _id_from_relative(name)


def list_items(
    url: str,
    *,
    url_template: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Listing:
    """Images named by a list file: URIs as given (id = file stem), ids through `url_template`."""
    if url_template is not None and "{id}" not in url_template:
        raise ValueError(
            f"--url-template must contain '{{id}}', e.g. 's3://open-images-dataset/train/{{id}}.jpg'; got {url_template!r}"
        )
    pairs = []
    for image_id, uri in _read_items(url, storage_options):
        if uri is None:
            if url_template is None:
                raise ValueError(
                    f"list {url} names image ids (e.g. {image_id!r}) but no URL template was given; "
                    "pass --url-template 's3://bucket/prefix/{id}.jpg', or list full URIs"
                )
            uri = url_template.replace("{id}", image_id)
        pairs.append((image_id if image_id is not None else _id_from_uri(uri), uri))
    uris = [uri for _, uri in pairs]
    return _sorted_unique(pairs, dict(zip(uris, uri_stamps(uris, storage_options))))


def list_source(
    source: str,
    *,
    ids_file: str | None = None,
    url_template: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Listing:
    """The corpus named on the command line.

    SOURCE is a folder of images, or a .csv/.tsv/.txt list of ids or URIs. With --ids-file,
    ids come from that list and SOURCE is the folder they live in (`SOURCE/{id}.jpg`, the
    Open Images layout) unless --url-template says otherwise.
    """
    if ids_file is not None:
        template = url_template or join_url(source, "{id}.jpg")
        return list_items(ids_file, url_template=template, storage_options=storage_options)
    if source.lower().endswith(LIST_EXTENSIONS):
        return list_items(source, url_template=url_template, storage_options=storage_options)
    if url_template is not None:
        raise ValueError("--url-template applies to id lists; give SOURCE as a .csv/.txt list or pass --ids-file")
    return list_folder(source, storage_options)
