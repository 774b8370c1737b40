"""Rebuild the committed photo set (pipelines/photos/data/) from four Debian packages: `python -m pipelines.photos.derive`.

    python -m pipelines.photos.derive [--out pipelines/photos/data] [--work /tmp/photos-work]

It runs `apt-get download` (no root needed) for the packages in PACKAGES, unpacks them with
`dpkg-deb -x` into WORK, picks the photographs listed below, resizes each to at most
MAX_SIDE pixels on its long side (Lanczos, never upscaled), and writes OUT/<name>.jpg (JPEG
quality 90), OUT/CREDITS.tsv (one row per photo: where it came from, its author, licence and
content class) and OUT/manifest.json (sha256 of every output, the package versions used).

What is kept, and why:
- gcompris-qt-data: the photographs of its activities, read out of its Qt `.rcc` bundles
  (pipelines.photos.rcc). Each resource folder has a README of `Copyright:/License:/Source:/
  Files:` stanzas; a photo without a stanza naming it is dropped. Left out by looking at contact
  sheets: paintings (paintings/, details/ backgrounds of paintings, babyshapes/), drawn word
  cards (lang/), drawn fish (clickgame/), rendered planets (solar_system/, gravity/), drawings and
  charts (chronos/, louis-braille's portrait, chart and night printing), generated textures.
  The same Wikimedia original used by two activities (e.g. the Colosseum) is kept once, the
  largest copy, so one scene can never sit on both sides of a split.
- opencv-doc examples/data: the natural photographs, one file per scene (stereo and
  stitching pairs share a scene: aloeL/aloeR, aero1/aero3, leuvenA/B, rubberwhale1/2,
  basketball1/2, box/box_in_scene). Left out: renders (Blender_Suzanne, HappyFish), paintings
  and graffiti (starry_night, graf*), calibration chessboards (left*/right*), synthetic
  figures, text images, deliberately blurred images, and messi5.jpg (a press photo of a
  person whose provenance the package does not state). Licence: the package's `Files: *`
  stanza (Apache-2.0 AND BSD-3-Clause); Debian removed lena for licence reasons and kept these.
- plasma-workspace-wallpapers: the wallpapers that are photographs (licence and author from each
  wallpaper's metadata.json); the rendered/drawn ones are left out.
- palapeli-data: the five puzzle photos (author, source and licence from their .desktop files).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.photos.catalogue import (  # the tables of what is a photo
    CREDIT_COLUMNS,
    GCOMPRIS_CLASS,
    GCOMPRIS_FOLDERS,
    GCOMPRIS_ONLY,
    OPENCV_DATA,
    OPENCV_LICENCE,
    OPENCV_PHOTOS,
    PACKAGES,
    PALAPELI_DIR,
    PALAPELI_PHOTOS,
    PLASMA_DIR,
    PLASMA_PHOTOS,
    REDISTRIBUTABLE,
)
from pipelines.photos.stanzas import canonical_url, licence_id, parse_credit_stanzas

DATA_DIR = Path(__file__).resolve().parent / "data"
CREDITS = "CREDITS.tsv"
MANIFEST = "manifest.json"
MAX_SIDE = 512
JPEG_QUALITY = 90


@dataclass
class Candidate:
    """One photo to write: its pixels (encoded bytes) and its credit row."""

    name: str
    klass: str
    package: str
    source_path: str
    author: str
    licence: str
    source_url: str
    title: str
    notes: str
    blob: bytes


def _safe(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def download(work: Path) -> dict[str, tuple[Path, str]]:
    """apt-get download + dpkg-deb -x of each package into WORK; {package: (root, version)}."""
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for package, expected in PACKAGES.items():
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", package], cwd=work, check=True)
            debs = sorted(work.glob(f"{package}_*.deb"))
        deb = debs[-1]
        version = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if version != expected:
            print(
                f"note: {package} is {version} here, the set was made from {expected}; check the photo list",
                file=sys.stderr,
            )
        root = work / f"root-{package}"
        if not root.exists():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        out[package] = (root, version)
    return out


def gcompris_candidates(root: Path) -> list[Candidate]:
    from .rcc import RccFile

    prefix = "/gcompris/src/activities/"
    files: dict[str, bytes] = {}
    bundle_of: dict[str, str] = {}
    for bundle in sorted((root / "usr/share/gcompris-qt/rcc").glob("*.rcc")):
        rcc = RccFile.open(bundle)
        for path in rcc.paths():
            if path.startswith(prefix) and path.endswith((".webp", "/README")) and path not in files:
                files[path] = rcc.read(path)
                bundle_of[path] = str(bundle.relative_to(root))
    # README stanzas, keyed by the full path of each file they name.
    credit: dict[str, dict] = {}
    for path, blob in files.items():
        if path.endswith("/README"):
            folder = path.rsplit("/", 1)[0]
            for stanza in parse_credit_stanzas(blob.decode("utf-8", "replace")):
                for name in stanza.get("files", []):
                    credit[f"{folder}/{name.strip()}"] = stanza
    out = []
    for path, blob in sorted(files.items()):
        if not path.endswith(".webp"):
            continue
        folder, filename = path[len(prefix) :].rsplit("/", 1)
        stem = filename[: -len(".webp")]
        if folder not in GCOMPRIS_FOLDERS or (folder in GCOMPRIS_ONLY and stem not in GCOMPRIS_ONLY[folder]):
            continue
        short, klass = GCOMPRIS_FOLDERS[folder]
        stanza = credit.get(path)
        if stanza is None:
            print(f"skip {path}: no credit stanza names it", file=sys.stderr)
            continue
        comment = stanza.get("comment", "")
        url = stanza.get("source", "") or (re.findall(r"https?://\S+", comment) or [""])[0]
        # "braille.webp is based on a photo by ..., source at URL": that URL is that file's only.
        named = re.findall(r"([\w.-]+\.webp) is based on", comment)
        if named and filename not in named:
            url, comment = "", ""
        out.append(
            Candidate(
                name=f"gcompris-{short}-{_safe(stem.removesuffix('_background'))}",
                klass=GCOMPRIS_CLASS.get((short, stem), klass),
                package="gcompris-qt-data",
                source_path=f"{bundle_of[path]}:{path}",
                author=stanza.get("copyright", ""),
                licence=licence_id(stanza.get("license", "")),
                source_url=url.rstrip(".,"),
                title=stem.removesuffix("_background"),
                notes=comment,
                blob=blob,
            )
        )
    return out


def opencv_candidates(root: Path) -> list[Candidate]:
    return [
        Candidate(
            f"opencv-{_safe(Path(f).stem)}",
            klass,
            "opencv-doc",
            f"{OPENCV_DATA}/{f}",
            "OpenCV contributors",
            OPENCV_LICENCE,
            "",
            title,
            notes + ("; " if notes else "") + "licence: Debian copyright, Files: *",
            (root / OPENCV_DATA / f).read_bytes(),
        )
        for f, (klass, title, notes) in OPENCV_PHOTOS.items()
    ]


def plasma_candidates(root: Path) -> list[Candidate]:
    out = []
    for folder, klass in PLASMA_PHOTOS.items():
        base = root / PLASMA_DIR / folder
        meta = json.loads((base / "metadata.json").read_text())["KPlugin"]
        # The largest landscape rendering: it is downscaled to MAX_SIDE anyway.
        images = sorted((base / "contents/images").glob("*x*.*"), key=lambda p: [int(v) for v in p.stem.split("x")])
        image = [p for p in images if int(p.stem.split("x")[0]) >= int(p.stem.split("x")[1])][-1]
        out.append(
            Candidate(
                f"plasma-{_safe(folder)}",
                klass,
                "plasma-workspace-wallpapers",
                str(image.relative_to(root)),
                ", ".join(a.get("Name", "") for a in meta.get("Authors", [])),
                licence_id(meta.get("License", "")),
                "",
                meta.get("Name", folder),
                "licence and author from metadata.json",
                image.read_bytes(),
            )
        )
    return out


def palapeli_candidates(root: Path) -> list[Candidate]:
    out = []
    for stem, klass in PALAPELI_PHOTOS.items():
        desktop = (root / PALAPELI_DIR / f"{stem}.desktop").read_text()
        field = {k: v for k, v in re.findall(r"^([A-Za-z-]+)=(.*)$", desktop, re.MULTILINE)}
        out.append(
            Candidate(
                f"palapeli-{stem}",
                klass,
                "palapeli-data",
                f"{PALAPELI_DIR}/{stem}.jpg",
                field.get("X-KDE-PluginInfo-Author", ""),
                licence_id(field.get("X-KDE-PluginInfo-License", "")),
                field.get("X-KDE-PluginInfo-Website", ""),
                field.get("Name", stem),
                (field.get("Comment", "") + "; " if field.get("Comment") else "") + "credit from the .desktop file",
                (root / PALAPELI_DIR / f"{stem}.jpg").read_bytes(),
            )
        )
    return out


def _pixels(blob: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            flat = Image.new("RGB", im.size, (255, 255, 255))
            flat.paste(im, mask=im.getchannel("A"))
            return flat
        return im.convert("RGB")


def dedupe(candidates: list[Candidate]) -> list[Candidate]:
    """One file per original photo: the largest copy of each source URL."""
    best: dict[str, Candidate] = {}
    order = []
    for c in candidates:
        key = canonical_url(c.source_url) if c.source_url else f"name:{c.name}"
        if key not in best:
            order.append(key)
            best[key] = c
            continue
        keep = max((best[key], c), key=lambda x: (_pixels(x.blob).size[0] * _pixels(x.blob).size[1], x.name))
        other = c if keep is best[key] else best[key]
        print(f"same original {c.source_url}: keeping {keep.name}, dropping {other.name}", file=sys.stderr)
        best[key] = keep
    return [best[k] for k in order]


def write(candidates: list[Candidate], out: Path, versions: dict[str, str]) -> dict:
    """Resize, encode and write every photo, CREDITS.tsv and manifest.json; returns the manifest."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate output names: {sorted({n for n in names if names.count(n) > 1})}")
    bad = [(c.name, c.licence) for c in candidates if c.licence not in REDISTRIBUTABLE]
    if bad:
        raise ValueError(f"photos with a licence not known to allow redistribution: {bad}")
    if (out / MANIFEST).is_file():  # photos a previous run wrote and this one does not
        for stale in json.loads((out / MANIFEST).read_text()).get("files", {}):
            if Path(stale).stem not in set(names) and (out / stale).is_file():
                (out / stale).unlink()
    files = {}
    rows = []
    for c in sorted(candidates, key=lambda c: c.name):
        image = _pixels(c.blob)
        scale = MAX_SIDE / max(image.size)
        if scale < 1:
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
            )
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        filename = f"{c.name}.jpg"
        (out / filename).write_bytes(buf.getvalue())
        files[filename] = {
            "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
            "bytes": len(buf.getvalue()),
            "width": image.width,
            "height": image.height,
        }
        rows.append(
            {
                "file": filename,
                "class": c.klass,
                "source_package": c.package,
                "source_path": c.source_path,
                "author": c.author,
                "licence": c.licence,
                "source_url": c.source_url,
                "title": c.title,
                "notes": c.notes,
            }
        )
    with open(out / CREDITS, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=CREDIT_COLUMNS, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({k: " ".join(str(v).split()) for k, v in row.items()})
    credits_blob = (out / CREDITS).read_bytes()
    manifest = {
        "about": "photos derived by pipelines/photos/derive.py; each file's credit is in CREDITS.tsv",
        "max_side": MAX_SIDE,
        "jpeg_quality": JPEG_QUALITY,
        "packages": versions,
        "credits_sha256": hashlib.sha256(credits_blob).hexdigest(),
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def derive(out: Path = DATA_DIR, work: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="adir-photos-") as tmp:
        roots = download(Path(work) if work else Path(tmp))
        candidates = (
            gcompris_candidates(roots["gcompris-qt-data"][0])
            + opencv_candidates(roots["opencv-doc"][0])
            + plasma_candidates(roots["plasma-workspace-wallpapers"][0])
            + palapeli_candidates(roots["palapeli-data"][0])
        )
        candidates = dedupe(candidates)
        return write(candidates, Path(out), {p: v for p, (_, v) in roots.items()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=str(DATA_DIR), help="output folder (default: the package's data folder)")
    p.add_argument(
        "--work", default=None, help="keep the downloaded .deb files and their contents here (default: a temp dir)"
    )
    args = p.parse_args(argv)
    manifest = derive(Path(args.out), Path(args.work) if args.work else None)
    print(f"{len(manifest['files'])} photos, {manifest['total_bytes'] / 1e6:.1f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
