"""Ray runtime for dataset-scale reconstruction: GPU-pinned worker actors, the job config, results, run folder, leases.

Names are imported on first use: `import cluster` loads neither torch nor Ray.
"""

from adir_ops.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    """
    config: ReconstructConfig MODES
    worker: ReconstructionWorker load_prior
    pool: WorkerPool
    results: RESULTS_SCHEMA finished_names merge_results safe_name
    run_folder: check_previous_run finished_work
    lease: Lease LeaseHeld
    retrieval: make_retriever
    """,
)
