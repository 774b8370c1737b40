"""`adir evaluate`: the command's handler; the evaluation itself is the package pipelines.evaluation.

Its public names are re-exported here, so `from pipelines.evaluate import evaluate, write` keeps working.
"""

from __future__ import annotations

import argparse

from pipelines import evaluation
from pipelines.evaluation import *  # noqa: F403  (re-exported: the old import path keeps working)
from pipelines.evaluation import REPORT, EvaluateConfig, evaluate, headline, write

__all__ = [*evaluation.__all__, "main"]


def main(args: argparse.Namespace) -> int:
    """`adir evaluate RUN_DIR...`: evaluate the runs, write the tables and report, print the headline."""
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics is not None else (REPORT,)
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
    ev = evaluate(config, progress=not args.no_progress)
    written = write(ev, progress=not args.no_progress)
    text = headline(ev)
    if text:
        print(text)
    print("wrote " + ", ".join(written.values()))
    return 0
