"""The ADIR method in pure PyTorch: operators, priors, guided sampling, LoRA adaptation, embedding, quality.

    from adir_ops import ADIRPipeline, make_operator, get_embedder

Every name below is imported on first use, so `import adir_ops` stays cheap.
"""

from adir_ops.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    """
    pipeline: ADIRPipeline ADIRUpscalePipeline ADIRResult StageError pipeline_for
    sampling.config: SamplerConfig
    adaptation.training: adapt
    adaptation.config: AdaptConfig
    adaptation.adapter: Adapter
    priors.diffusion: DiffusionPrior
    priors.registry: PRIORS load_local_prior
    priors.denoiser: DenoiserPrior FFDNet
    physics.operators: OPERATORS Observation make_operator observe
    sampling.samplers: SAMPLERS adir_sample adir_sample_preconditioned ddnm_sample get_sampler default_sampler
    sampling.chain: sample
    sampling.regions: sample_in_regions
    retrieval.embedding: DEFAULT_EMBEDDER EMBEDDERS get_embedder
    retrieval.arms: RETRIEVERS Neighbours EncoderKNN RandomNeighbours PixelMSENeighbours NoNeighbours GivenNeighbours
    priors.tiling: TiledPrior TilingConfig
    metrics.quality: compute_metrics DEFAULT_REPORT_METRICS
    rng: generator_for image_streams
    physics.tasks: TASKS
    priors.weights: DEFAULT_PRIOR_NAME UNET64_DIR
    """,
)
