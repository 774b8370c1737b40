"""The retrieval benchmark's printed report: one line per row, the table, the KD-tree ratios and the notes."""

from __future__ import annotations

from bench.retrieval_config import BenchConfig, Row

MIB = 1024 * 1024


def _fmt_peak(peak: int | None) -> str:
    return "n/a" if peak is None else f"{peak / MIB:.0f}"


def format_table(rows: list[Row], config: BenchConfig) -> str:
    """The results as fixed-width text, extrapolated columns marked as such."""
    header = (
        f"{'dataset':<10} {'method':<44} {'build s':>8} {'cpu s':>7} {'query ms':>9} {'runs':>4} "
        f"{'recall@' + str(config.k):>9} {'index MiB':>9} {'peak RSS+':>9} "
        f"{'~q ms @' + _short(config.extrapolate_to):>11} {'~MiB @' + _short(config.extrapolate_to):>10}"
        f" {'vs KD-tree':>10}"
    )
    return "\n".join([header, "-" * len(header)] + [format_row(row, rows, config) for row in rows])


def speed_ratio(row: Row, rows: list[Row]) -> float | None:
    """cKDTree batch query time over this row's, on the same dataset (None without a KD-tree row)."""
    kdtree = [r for r in rows if r.dataset == row.dataset and r.method.startswith("scipy cKDTree")]
    return kdtree[0].query_s / row.query_s if kdtree and row.query_s > 0 else None


def format_row(row: Row, rows: list[Row], config: BenchConfig) -> str:
    """One table line; `rows` supplies the KD-tree row its ratio is taken against."""
    scale = config.extrapolate_to / config.n
    query_ms = row.query_s * 1000
    extrapolated_query = f"{query_ms * scale:.0f}" if row.exact else "-"
    ratio = speed_ratio(row, rows)
    return (
        f"{row.dataset:<10} {row.method:<44} {row.build_s:>8.2f} {row.build_cpu_s:>7.1f} "
        f"{query_ms:>9.1f} {row.query_runs:>4} "
        f"{row.recall:>9.3f} {row.index_bytes / MIB:>9.1f} {_fmt_peak(row.peak_rss_bytes):>9} "
        f"{extrapolated_query:>11} {row.index_bytes / MIB * scale:>10.0f}"
        f" {'-' if ratio is None else f'{ratio:.1f}x':>10}"
    )


def _short(count: int) -> str:
    return f"{count / 1e6:g}M" if count >= 1_000_000 else f"{count / 1e3:g}k"


def format_ratios(rows: list[Row]) -> str:
    """cKDTree batch query time over every other row's, per dataset."""
    lines = []
    for row in rows:
        ratio = speed_ratio(row, rows)
        if ratio is not None and not row.method.startswith("scipy cKDTree"):
            lines.append(f"  {row.dataset}: cKDTree / {row.method} = {ratio:.1f}x (recall@k {row.recall:.3f})")
    return "\n".join(lines)


def format_notes(config: BenchConfig) -> str:
    """What each column means, and which figures are extrapolations."""
    at = _short(config.extrapolate_to)
    scale = config.extrapolate_to / config.n
    notes = [
        (
            f"query ms: wall time for all {config.queries} queries in one call (k={config.k}), best of 'runs';"
            " a method is rerun only while its runs so far took < 1 s."
        ),
        ("build s: wall time of the build (IVF-PQ: sample + train + add); cpu s: its process CPU time, all threads."),
        "recall@k: overlap with the top-k of Flat at faiss's default setting (exact, the ground truth).",
        (
            "index MiB: length of the file faiss.write_index writes; cKDTree: its float64 copy of the data"
            " plus its index permutation (tree nodes not counted)."
        ),
        (
            f"cKDTree: timed on the first {config.kdtree_queries} queries only (it costs the same per query),"
            f" scaled to the batch of {config.queries}; its recall is over those queries."
        ),
        (
            "vs KD-tree: cKDTree's batch query time over the row's (speed ratio). Rows named by a factory spec"
            " ('FACTORY|settings') are built and searched as index_builder builds them."
        ),
        (
            "peak RSS+: process peak resident memory above its level before that index was built, over build"
            " and queries; the IVF-PQ re-rank rows include the IVF-PQ index they wrap."
        ),
        (
            f"~q ms and ~MiB @ {at}: an EXTRAPOLATION, not a measurement: linear in N (x{scale:.2f})."
            " Query time is extrapolated only for the exact scans (Flat, cKDTree), whose cost per query"
            " grows with N; the approximate indexes' query time is not ('-')."
        ),
        "cKDTree is Euclidean; on unit vectors |a-b|^2 = 2 - 2<a,b>, so Euclidean kNN = inner-product kNN.",
        (
            f"clustered: {config.clusters} unit centres, noise of norm {config.spread} around each, then"
            " normalised; the queries are fresh draws from the same mixture."
        ),
        (
            "iid: uniform on the unit sphere, where all points are nearly equidistant: the hard case for"
            " every approximate index."
        ),
    ]
    return "Notes:\n" + "\n".join("  " + note for note in notes)
