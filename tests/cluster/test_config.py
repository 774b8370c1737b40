"""The job config refuses what cannot run, keeps credentials out of config.yaml, and sizes the actor pool."""

import pytest

from cluster.config import ReconstructConfig
from cluster.pool import actor_plan, actor_threads


def _config(**kw):
    base = dict(inputs="in", out="out", task="sr4", index="idx")
    base.update(kw)
    return ReconstructConfig(**base)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"task": "sr3"}, "unknown task 'sr3'"),
        ({"mode": "knn"}, "unknown mode 'knn'"),
        ({"index": None}, "needs --index"),
        ({"task": "inpaint", "degraded": True}, "mask"),
        ({"reference": "hr"}, "only applies with --degraded"),
        ({"k": 0}, "--k must be"),
        ({"steps": 0}, "--steps must be"),
        ({"metrics": ["lpips"]}, "not results columns"),
        ({"out": ""}, "needs --out"),
        ({"prior": "tiny:big"}, "integer resolution"),  # --prior is read by the loaders' own grammar
        ({"prior": "clip:ViT-B-32"}, "unknown prior spec"),
        ({"prior": "gd256:"}, "names no weights"),
    ],
)
def test_bad_options_are_refused_with_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        _config(**options)


def test_baseline_needs_no_index_and_unknown_yaml_keys_are_refused():
    assert _config(mode="baseline", index=None).index is None
    with pytest.raises(ValueError, match="unknown reconstruct option"):
        ReconstructConfig.from_dict({"inputs": "in", "out": "out", "task": "sr4", "index": "i", "kk": 3})


def test_credentials_never_reach_config_yaml_and_runtime_options_may_change_on_resume():
    config = _config(
        storage_options={
            "key": "AKIA",
            "secret": "s3cr3t",
            "client_kwargs": {"endpoint_url": "http://h:1", "aws_session_token": "T0KEN-VALUE"},
        }
    )
    redacted = config.redacted()
    assert "AKIA" not in str(redacted) and "s3cr3t" not in str(redacted) and "T0KEN-VALUE" not in str(redacted)
    assert redacted["storage_options"]["client_kwargs"]["endpoint_url"] == "http://h:1"
    assert ReconstructConfig.from_dict(config.to_dict()) == config
    assert _config(num_actors=1).result_fields() == _config(num_actors=4).result_fields()
    assert _config(seed=1).result_fields() != _config(seed=2).result_fields()


def test_pool_size_follows_the_cluster():
    assert actor_plan({"CPU": 16.0, "GPU": 4.0}) == (4, {"num_gpus": 1.0, "num_cpus": 1.0})
    # CPU-only: one actor per core, half a CPU each so Ray Data and the driver keep CPUs.
    assert actor_plan({"CPU": 2.0}) == (2, {"num_cpus": 0.5})
    assert actor_plan({"CPU": 2.0}, num_actors=1, cpus_per_actor=1.0) == (1, {"num_cpus": 1.0})
    assert actor_plan({"CPU": 8.0, "GPU": 2.0}, gpus_per_actor=0) == (8, {"num_cpus": 0.5})
    # No more actors than images (each one loads the prior), unless the user asks for a count.
    assert actor_plan({"CPU": 16.0, "GPU": 4.0}, work=1) == (1, {"num_gpus": 1.0, "num_cpus": 1.0})
    assert actor_plan({"CPU": 2.0}, work=1)[0] == 1 and actor_plan({"CPU": 2.0}, work=0)[0] == 1
    assert actor_plan({"CPU": 2.0}, work=1, num_actors=2)[0] == 2


def test_steps_left_out_resolve_to_the_measured_default_and_the_config_records_the_number():
    from adir_ops.sampling.defaults import default_steps

    config = _config(task="sr4", prior="default")
    assert config.steps == default_steps("sr4", "default") and config.to_dict()["steps"] == config.steps
    # A run folder's config.yaml carries the number, so a later default cannot change what it resumes.
    assert ReconstructConfig.from_dict(config.to_dict()).steps == config.steps
    assert _config(task="sr4", prior="tiny").steps == 100
    assert _config(task="sr4", prior="default", steps=7).steps == 7


def test_fewer_cpu_actors_than_cores_share_the_cores_as_threads():
    # One large image on a 2-core node: its one actor computes on both cores, not one.
    count, options = actor_plan({"CPU": 2.0}, work=1)
    assert actor_threads({"CPU": 2.0}, options, count, node_cpus=2.0, environ={}) == 2
    # As many actors as cores: Ray's one thread each stays.
    count, options = actor_plan({"CPU": 2.0}, work=5)
    assert actor_threads({"CPU": 2.0}, options, count, node_cpus=2.0, environ={}) is None
    # Never more threads than one node has, however large the cluster.
    assert actor_threads({"CPU": 64.0}, {"num_cpus": 0.5}, 2, node_cpus=16.0, environ={}) == 16
    # The user's choices win: OMP_NUM_THREADS, --cpus-per-actor, GPU actors.
    assert actor_threads({"CPU": 2.0}, {"num_cpus": 0.5}, 1, environ={"OMP_NUM_THREADS": "1"}) is None
    assert actor_threads({"CPU": 2.0}, {"num_cpus": 1.0}, 1, environ={}) is None
    assert actor_threads({"CPU": 16.0, "GPU": 1.0}, {"num_gpus": 1.0, "num_cpus": 1.0}, 1, environ={}) is None


def test_the_lora_settings_are_one_nested_adapt_config_and_flat_names_still_read():

    from adir_ops.adaptation.config import AdaptConfig

    base = {"inputs": "i", "out": "o", "task": "sr4", "mode": "baseline"}
    nested = ReconstructConfig.from_dict({**base, "lora": {"steps": 50, "learning_rate": 3e-4}})
    flat = ReconstructConfig.from_dict({**base, "lora_steps": 50, "lora_learning_rate": 3e-4})
    assert nested == flat and nested.lora == AdaptConfig(steps=50, learning_rate=3e-4)
    assert nested.to_dict()["lora"]["steps"] == 50 and "lora_steps" not in nested.to_dict()  # config.yaml nests it
    assert ReconstructConfig.from_dict(nested.to_dict()) == nested  # and reads it back
    with pytest.raises(ValueError, match="AdaptConfig.steps must be an integer"):
        ReconstructConfig.from_dict({**base, "lora": {"steps": "many"}})
    with pytest.raises(ValueError, match="unknown AdaptConfig field"):
        ReconstructConfig.from_dict({**base, "lora": {"stepz": 3}})


def test_a_lora_flag_overrides_the_job_files_nested_value(tmp_path):
    import yaml

    from pipelines import cli, reconstruct

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"lora": {"steps": 10, "batch_size": 2}}))
    argv = [
        "reconstruct",
        "--inputs",
        "i",
        "--out",
        "o",
        "--task",
        "sr4",
        "--index",
        "x",
        "--config",
        str(job),
        "--lora-steps",
        "5",
    ]
    config = reconstruct.resolve_config(cli.build_parser().parse_args(argv))
    assert (config.lora.steps, config.lora.batch_size) == (5, 2)


@pytest.mark.parametrize(
    "prior, made",
    [
        ("ffdnet:w/f.pth", "ffdnet:{}/w/f.pth"),  # a local target becomes absolute and keeps its kind
        ("gd256:w/f.pth", "gd256:{}/w/f.pth"),
        ("w/f.pth", "{}/w/f.pth"),
        ("gd256:s3://b/gd.pt", "gd256:s3://b/gd.pt"),  # a URL is where it is
        ("tiny:16", "tiny:16"),  # no path to make absolute
    ],
)
def test_resolve_config_makes_a_local_prior_absolute_and_keeps_its_kind(tmp_path, monkeypatch, prior, made):
    from pipelines import cli, reconstruct

    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f.pth").write_bytes(b"")
    argv = ["reconstruct", "--inputs", "i", "--out", "o", "--task", "sr4", "--mode", "baseline", "--prior", prior]
    assert reconstruct.resolve_config(cli.build_parser().parse_args(argv)).prior == made.format(tmp_path)
