"""What users run: build an index, reconstruct a dataset, evaluate, the demo, and the `adir` CLI.

Names are imported on first use, so the command line starts instantly.
"""

from adir_ops.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    """
    reconstruct: run_reconstruct=run resolve_config
    evaluation: EvaluateConfig evaluate write
    demo: DemoConfig run_demo=run
    default_assets: DefaultAssetsConfig build_default_assets=build
    errors: UsageError JobFailed
    """,
)
