"""The ADIR method in pure PyTorch: operators, priors, guided sampling, LoRA adaptation, embedding, quality.

    from adir_ops import ADIRPipeline, make_operator, get_embedder

Every name below is imported on first use, so `import adir_ops` stays cheap.
"""

from adir_ops.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    """
    pipeline: ADIRPipeline ADIRResult SamplerConfig StageError image_streams
    adaptation: AdaptConfig Adapter adapt
    priors: DiffusionPrior PRIORS load_local_prior
    denoiser_prior: DenoiserPrior FFDNet
    operators: OPERATORS Observation make_operator observe
    sampling: SAMPLERS adir_sample adir_sample_preconditioned ddnm_sample get_sampler default_sampler sample
    embedding: DEFAULT_EMBEDDER EMBEDDERS get_embedder
    retrieval: RETRIEVERS Neighbours EncoderKNN RandomNeighbours PixelMSENeighbours NoNeighbours GivenNeighbours
    tiling: TiledPrior TilingConfig
    quality: compute_metrics DEFAULT_REPORT_METRICS
    rng: generator_for
    tasks: TASKS
    weights: DEFAULT_PRIOR_NAME UNET64_DIR
    """,
)
