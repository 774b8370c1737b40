"""`adir edit` and `adir demo` write only into a folder that is new, empty or already theirs (issue 21 §1-2).

On 4447955 `adir edit --image D/edited.png --out D` overwrote the input with the result, and edit and
demo wrote into any folder, replacing the user's config.yaml or polluting a reconstruct's inputs.
"""

from __future__ import annotations

import os

import pytest

from pipelines.cli import main
from tests.cluster.helpers import write_pictures

pytestmark = pytest.mark.timeout(300)
PROMPT = "a red barn in a field"
TINY = ["--pipeline", "tiny", "--mode", "baseline", "--steps", "2", "--crop-size", "32"]


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _edit(image, out, *extra):
    return main(["edit", "--image", str(image), "--prompt", PROMPT, "--out", str(out), *TINY, *extra])


def test_edit_never_writes_over_its_own_input_image(tmp_path, capsys):
    [image] = write_pictures(str(tmp_path / "D"), [("edited", 3)])
    before = _snapshot(tmp_path / "D")
    assert _edit(image, tmp_path / "D") == 2
    assert "--out" in (err := capsys.readouterr().err) and "contains --image" in err and "Traceback" not in err
    assert _edit(image, tmp_path / "D" / "edited.png" / "x") == 2  # inside the image's own path
    mask = tmp_path / "masks" / "m.png"
    write_pictures(str(mask.parent), [("m", 1)])
    assert _edit(image, tmp_path / "masks", "--mask", str(mask)) == 2  # the mask's folder
    assert "contains --mask" in capsys.readouterr().err
    assert _snapshot(tmp_path / "D") == before


def test_edit_refuses_a_folder_holding_the_users_files(tmp_path, capsys):
    [image] = write_pictures(str(tmp_path / "in"), [("photo", 4)])
    users = tmp_path / "mine"
    users.mkdir()
    (users / "config.yaml").write_text("my: settings\n")
    assert _edit(image, users) == 2
    assert "is not empty (config.yaml)" in capsys.readouterr().err
    inputs = tmp_path / "later-inputs"  # the inputs folder of a later reconstruct
    write_pictures(str(inputs), [("a", 1), ("b", 2)])
    before = _snapshot(inputs)
    assert _edit(image, inputs) == 2
    assert _snapshot(users) == {"config.yaml": b"my: settings\n"} and _snapshot(inputs) == before


def test_edit_reruns_into_its_own_folder_and_one_from_before_markers(tmp_path):
    [image] = write_pictures(str(tmp_path / "in"), [("photo", 5)])
    out = tmp_path / "out"
    assert _edit(image, out) == 0
    assert sorted(os.listdir(out)) == ["adir-job.json", "config.yaml", "edited.png"]
    (out / "adir-job.json").unlink()  # an edit's folder from an older version: its config.yaml says so
    assert _edit(image, out) == 0 and (out / "adir-job.json").is_file()


def test_demo_refuses_a_folder_holding_the_users_files(tmp_path, capsys):
    users = tmp_path / "docs"
    users.mkdir()
    (users / "results.md").write_text("my results")
    assert main(["demo", "--quick", "--out", str(users), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not empty (results.md)" in err and "adir demo" in err and "Traceback" not in err
    assert _snapshot(users) == {"results.md": b"my results"}
