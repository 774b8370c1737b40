"""The cluster definitions parse, have what Ray / KubeRay need, and their `adir` commands match the real CLI."""

import os
import re
import shlex

import pytest
import yaml

from pipelines import cli, reconstruct

CLUSTER = os.path.join(os.path.dirname(__file__), "..", "..", "cluster")


def _load(name):
    with open(os.path.join(CLUSTER, "configs", name)) as f:
        return yaml.safe_load(f)


def _check_reconstruct_command(command: str):
    argv = shlex.split(command)
    assert argv[0] == "adir", command
    args = cli.build_parser().parse_args(argv[1:])  # exits (SystemExit 2) on any unknown flag
    assert args.command == "reconstruct" and args.func.target == "pipelines.reconstruct:main"
    config = reconstruct.resolve_config(args)  # the job config accepts the combination too
    for required in ("inputs", "out", "task"):
        assert getattr(config, required)
    return config


def test_ray_cluster_launcher_has_gpu_workers_and_installs_the_package():
    spec = _load("ray-cluster.yaml")
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in spec, key
    assert spec["provider"]["type"] and spec["docker"]["image"].startswith("rayproject/ray:")
    nodes = spec["available_node_types"]
    assert spec["head_node_type"] in nodes
    workers = [n for name, n in nodes.items() if name != spec["head_node_type"]]
    assert any(n["resources"].get("GPU", 0) >= 1 and n["max_workers"] >= 1 for n in workers)
    assert all("InstanceType" in n["node_config"] for n in nodes.values())
    assert any("pip install" in c and "/home/ray/adir" in c for c in spec["setup_commands"])
    assert "/home/ray/adir" in spec["file_mounts"]
    assert any("ray start --head" in c for c in spec["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in spec["worker_start_ray_commands"])


def test_rayjob_runs_adir_reconstruct_on_one_gpu_per_worker():
    spec = _load("rayjob.yaml")
    assert spec["apiVersion"] == "ray.io/v1" and spec["kind"] == "RayJob" and spec["metadata"]["name"]
    job = spec["spec"]
    config = _check_reconstruct_command(job["entrypoint"])
    assert config.degraded and config.task == "sr4" and config.mode == "adir" and config.out.startswith("s3://")
    cluster = job["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    [group] = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert head["image"] == worker["image"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert cluster["rayVersion"] in _load("ray-cluster.yaml")["docker"]["image"]


def test_every_adir_command_in_the_cluster_readme_parses():
    with open(os.path.join(CLUSTER, "README.md")) as f:
        commands = [line.strip() for line in f if line.strip().startswith("adir reconstruct")]
    assert len(commands) >= 2
    for command in commands:
        _check_reconstruct_command(command)


def test_the_image_ray_version_matches_the_installed_ray():
    with open(os.path.join(CLUSTER, "Dockerfile")) as f:
        ray_version = re.search(r"rayproject/ray:([\d.]+)", f.read()).group(1)
    from importlib.metadata import version

    assert ray_version == version("ray")
    assert ray_version == _load("rayjob.yaml")["spec"]["rayClusterSpec"]["rayVersion"]


@pytest.mark.parametrize("bad", ["--task sr3", "--no-such-flag 1"])
def test_a_drifted_command_would_be_caught(bad):
    with pytest.raises(SystemExit):
        _check_reconstruct_command(f"adir reconstruct --inputs a --out b --index i {bad}")
