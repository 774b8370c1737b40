"""`adir evaluate`: the command's handler; the evaluation itself is the package pipelines.evaluation."""

from __future__ import annotations

import argparse

from adir_storage import redact_text
from pipelines.errors import JobFailed, UsageError
from pipelines.evaluation import REPORT, EvaluateConfig, evaluate, headline, write
from pipelines.evaluation.outputs import claim


def _one_line(text: str) -> str:
    """An error as the one line `adir` prints: URL credentials redacted, line breaks folded."""
    return " ".join(redact_text(text).split())


def main(args: argparse.Namespace) -> int:
    """`adir evaluate RUN_DIR...`: evaluate the runs, write the tables and report, print the headline."""
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics is not None else (REPORT,)
    try:
        config = EvaluateConfig(
            runs=tuple(args.runs),
            out=args.out,
            baseline_mode=args.baseline_mode,
            metrics=metrics,
            confidence=args.confidence,
            report=not args.no_report,
            report_images=args.report_images,
            report_neighbours=args.report_neighbours,
            threads=args.threads,
        )
        claim(config)  # before any metric is computed: a --out holding the user's files is refused now
        ev = evaluate(config, progress=not args.no_progress)
        written = write(ev, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:  # an option, a --out, a run folder or its files: fix and rerun
        raise UsageError(_one_line(str(exc))) from exc
    except Exception as exc:  # a backend's message may quote a URL with its password
        raise JobFailed(_one_line(f"{type(exc).__name__}: {exc}")) from exc
    text = headline(ev)
    if text:
        print(text)
    print("wrote " + ", ".join(redact_text(url) for url in written.values()))
    return 0
