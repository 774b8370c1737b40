"""The pieces of pipelines.evaluation on hand-made numbers and rows: statistics, arms, views' refusals, cells, config."""

from __future__ import annotations

import math

import pytest

from pipelines.evaluation.arms import Arm, Run, comparisons, group_arms
from pipelines.evaluation.config import EvaluateConfig
from pipelines.evaluation.statistics import Paired, Summary, metric_column, paired_difference, summarize
from pipelines.evaluation.tables import fmt, paired_cell, summary_cell
from pipelines.evaluation.views import input_uri, output_url

# Student's t quantiles with 2 degrees of freedom, from a printed table.
T_975_2 = 4.302652729911275
T_95_2 = 2.919985580355516


def _arm(values: dict[str, dict[str, float]], errors: tuple[str, ...] = ()) -> Arm:
    arm = Arm("sr4", "adir", {})
    for image_id in [*values, *errors]:
        arm.rows[image_id] = {"image_id": image_id, "error": "boom" if image_id in errors else None}
    arm.values = {k: dict(v) for k, v in values.items()}
    return arm


# ---------------------------------------------------------------------- statistics
def test_paired_difference_of_three_pairs_by_hand():
    # d = 2, 3, 2: mean 7/3, sample std sqrt(1/3), standard error 1/3, t = 7.
    p = paired_difference({"x": 3.0, "y": 5.0, "z": 4.0, "only-a": 0.0}, {"x": 1.0, "y": 2.0, "z": 2.0, "only-b": 9.0})
    assert (p.n, p.confidence) == (3, 0.95)
    assert p.mean == pytest.approx(7 / 3) and p.std == pytest.approx(math.sqrt(1 / 3))
    assert (p.low, p.high) == (pytest.approx(7 / 3 - T_975_2 / 3), pytest.approx(7 / 3 + T_975_2 / 3))
    # With 2 degrees of freedom the t distribution's tail is closed-form: P(|T| > t) = 1 - t / sqrt(2 + t^2).
    assert p.p_value == pytest.approx(1 - 7 / math.sqrt(51))
    narrower = paired_difference({"x": 3.0, "y": 5.0, "z": 4.0}, {"x": 1.0, "y": 2.0, "z": 2.0}, confidence=0.90)
    assert narrower.high - narrower.low == pytest.approx(2 * T_95_2 / 3)


def test_paired_difference_edge_cases_give_none_never_nan():
    assert paired_difference({}, {"a": 1.0}) == Paired(0, None, None, None, None, None, 0.95)
    assert paired_difference({"a": 3.0}, {"a": 1.0}) == Paired(1, 2.0, None, None, None, None, 0.95)
    # Identical differences: a zero-width interval, p 0 (or 1 when they are all 0).
    assert paired_difference({"a": 2.0, "b": 3.0}, {"a": 1.0, "b": 2.0}) == Paired(2, 1.0, 0.0, 1.0, 1.0, 0.0, 0.95)
    assert paired_difference({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}).p_value == 1.0


def test_summarize_counts_good_images_and_skips_missing_values():
    arm = _arm({"a": {"psnr": 20.0, "ssim": 0.5}, "b": {"psnr": 22.0}, "c": {"psnr": 27.0}}, errors=("e",))
    assert summarize(arm, "psnr") == Summary(n=3, images=3, mean=pytest.approx(23.0), std=pytest.approx(math.sqrt(13)))
    assert summarize(arm, "ssim") == Summary(n=1, images=3, mean=0.5, std=None)
    assert summarize(arm, "niqe") == Summary(n=0, images=3, mean=None, std=None)
    assert metric_column(arm, "ssim") == {"a": 0.5}


# ---------------------------------------------------------------------- arms
def _rows(task: str, mode: str, ids: str, seed: int = 0) -> list[dict]:
    return [{"image_id": i, "task": task, "mode": mode, "seed": seed, "k": 4, "error": None} for i in ids]


def _config(mode: str, **options) -> dict:
    return {
        "task": "sr4",
        "mode": mode,
        "seed": 0,
        "steps": 10,
        "lora_steps": 5,
        "k": 4,
        "inputs": "/in",
        "out": "/o",
        **options,
    }


def test_arms_are_grouped_by_the_settings_their_mode_uses_and_labelled_by_what_differs():
    runs = [
        Run("/b1", _config("baseline"), _rows("sr4", "baseline", "ab")),
        Run("/b2", _config("baseline", lora_steps=50, out="/o2"), _rows("sr4", "baseline", "c")),  # lora_steps unused
        Run("/a1", _config("adir"), _rows("sr4", "adir", "ab")),
        Run("/a2", _config("adir", lora_steps=50), _rows("sr4", "adir", "ab")),
        Run("/r", _config("random-nn"), _rows("sr4", "random-nn", "ab")),
    ]
    arms = group_arms(runs)
    assert [a.label for a in arms] == ["plain", "baseline", "adir lora_steps=5", "adir lora_steps=50", "random-nn"]
    assert sorted(arms[1].rows) == ["a", "b", "c"]  # one split dataset over two folders
    assert sorted(arms[0].rows) == ["a", "b", "c"] and arms[0].settings == {
        "seed": 0,
        "noise_sigma_255": None,
        "degraded": None,
    }
    assert "out" not in arms[2].settings and arms[2].settings["lora_steps"] == 5

    pairs, notes = comparisons(arms)
    assert [c.title for c in pairs] == [
        "adir lora_steps=5 − baseline",
        "adir lora_steps=5 − random-nn",
        "adir lora_steps=50 − baseline",
        "random-nn − baseline",
    ]
    assert notes == ["sr4: no random-nn arm has the settings of 'adir lora_steps=50'; that comparison is left out"]


def test_a_failed_row_counts_in_its_arm_but_not_in_the_plain_one():
    rows = _rows("sr4", "adir", "ab") + [{"image_id": "c", "task": "sr4", "mode": "adir", "seed": 0, "error": "boom"}]
    plain, adir = group_arms([Run("/a", _config("adir"), rows)])
    assert (plain.mode, sorted(plain.rows)) == ("plain", ["a", "b"])
    assert adir.good == ["a", "b"] and [r["image_id"] for r in adir.errors] == ["c"]


def test_without_config_yaml_the_settings_are_what_the_row_records():
    arms = group_arms(
        [Run("/a", {}, _rows("sr4", "adir", "a", seed=1)), Run("/b", {}, _rows("sr4", "adir", "b", seed=2))]
    )
    assert [a.label for a in arms] == ["plain seed=1", "plain seed=2", "adir seed=1", "adir seed=2"]
    assert arms[2].settings == {"k": 4, "seed": 1}


def test_an_arm_matching_two_references_is_refused():
    runs = [
        Run("/b1", _config("baseline"), _rows("sr4", "baseline", "a")),
        Run("/b2", _config("baseline", steps=20), _rows("sr4", "baseline", "a")),
        Run("/a", {}, _rows("sr4", "adir", "a")),  # records only seed and k: both baselines match it
    ]
    with pytest.raises(ValueError, match="matches several baseline arms"):
        comparisons(group_arms(runs))


# ---------------------------------------------------------------------- views: a run folder is untrusted
@pytest.mark.parametrize(
    "output, reason",
    [
        (None, "names no output PNG"),
        ("", "names no output PNG"),
        ("../../etc/passwd", "outside its images/ folder"),
        ("images/../../secret.png", "outside its images/ folder"),
        ("images/./a.png", "outside its images/ folder"),
        ("images/sub/a.png", "outside its images/ folder"),
        ("/abs/images/a.png", "outside its images/ folder"),
        ("file:///run/images/a.png", "outside its images/ folder"),
        ("images\\a.png", "outside its images/ folder"),
        ("a.png", "outside its images/ folder"),
    ],
)
def test_output_url_refuses_anything_but_a_png_in_images(tmp_path, output, reason):
    run = Run(str(tmp_path), {}, [])
    with pytest.raises(ValueError, match=reason):
        output_url({"image_id": "a", "output": output}, run)


def test_output_url_refuses_a_link_out_of_the_run_and_accepts_its_own_png(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (tmp_path / "images" / "b.png").symlink_to(tmp_path / "secret.txt")
    run = Run(str(tmp_path), {}, [])
    assert output_url({"image_id": "a", "output": "images/a.png"}, run) == f"{tmp_path}/images/a.png"
    with pytest.raises(ValueError, match="is a link out of the run folder"):
        output_url({"image_id": "b", "output": "images/b.png"}, run)


def test_input_uri_must_lie_in_the_runs_inputs(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    run = Run("/run", {"inputs": str(inputs), "reference": str(tmp_path / "truth")}, [])
    assert input_uri({"uri": f"{inputs}/a.png"}, run) == f"{inputs}/a.png"
    with pytest.raises(ValueError, match="outside the run's --inputs"):
        input_uri({"image_id": "a", "uri": f"{inputs}/../secret.png"}, run)
    with pytest.raises(ValueError, match="outside the run's --inputs"):
        input_uri({"image_id": "a", "uri": f"{inputs}-evil/a.png"}, run)  # a sibling with the same prefix
    assert input_uri({"reference_uri": f"{tmp_path}/truth/a.png"}, run, key="reference_uri", folder="reference")
    with pytest.raises(ValueError, match="no config.yaml naming its --inputs"):
        input_uri({"uri": f"{inputs}/a.png"}, Run("/run", {}, []))
    with pytest.raises(ValueError, match="is not trusted"):
        input_uri({"uri": None}, run)


def test_input_uri_of_a_list_file_run_is_any_image_the_list_names(tmp_path):
    """Issue 21 case 12: a run made from a .txt list read images outside the list's folder; they are its inputs."""
    (tmp_path / "pictures").mkdir()
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_text(f"{tmp_path}/pictures/a.png\n{tmp_path}/pictures/b.png\n")
    run = Run("/run", {"inputs": str(listing)}, [])
    assert input_uri({"uri": f"{tmp_path}/pictures/a.png"}, run) == f"{tmp_path}/pictures/a.png"
    with pytest.raises(ValueError, match="list .* does not name"):
        input_uri({"image_id": "c", "uri": f"{tmp_path}/pictures/c.png"}, run)
    gone = Run("/run", {"inputs": str(tmp_path / "gone.txt")}, [])
    with pytest.raises(ValueError, match="cannot be read now"):
        input_uri({"uri": f"{tmp_path}/pictures/a.png"}, gone)


# ---------------------------------------------------------------------- cells and config
def test_cells_say_n_and_never_print_nan():
    assert fmt(None, "psnr") == "–"
    assert (fmt(21.456, "psnr"), fmt(1.23456, "psnr", difference=True), fmt(0.5, "ssim")) == (
        "21.46",
        "+1.235",
        "0.5000",
    )
    assert summary_cell(Summary(3, 3, 21.0, 1.0), "psnr") == "21.00 ± 1.00 (n=3)"
    assert summary_cell(Summary(1, 3, 0.5, None), "ssim") == "0.5000 (n=1 of 3)"
    assert summary_cell(Summary(0, 3, None, None), "ssim") == "no value (0 of 3)"
    assert paired_cell(Paired(0, None, None, None, None, None, 0.95), "psnr") == "no common images"
    assert paired_cell(Paired(1, 0.5, None, None, None, None, 0.95), "psnr") == "+0.500 (n=1: no interval)"
    assert paired_cell(Paired(4, 2.5, 1.3, 0.4457, 4.5543, 0.01, 0.95), "psnr") == "+2.500 [+0.446, +4.554] (n=4)"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"runs": ()}, "at least one RUN_DIR"),
        ({"baseline_mode": "nope"}, "--baseline-mode 'nope' is not a mode"),
        ({"confidence": 1.0}, "--confidence must be in"),
        ({"report_images": -1}, "--report-images"),
        ({"report_neighbours": -1}, "--report-neighbours"),
        ({"threads": 0}, "--threads"),
    ],
)
def test_config_refuses_bad_options_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        EvaluateConfig(**{"runs": ("/run",), **options})


def test_metric_names_put_the_stored_ones_first_each_once():
    assert EvaluateConfig(runs=["/run"], metrics=["niqe", "psnr", "niqe"]).metric_names() == ("psnr", "ssim", "niqe")
    assert EvaluateConfig(runs=["/run"], metrics=()).metric_names() == ("psnr", "ssim")


def test_csv_text_cells_never_start_a_formula_nor_carry_a_password():
    """Issue 21 cases 5 and 6: ids are written raw into per_image.csv; a spreadsheet runs `=...` as a formula."""
    import csv
    import io

    from pipelines.evaluation.csv_cells import csv_bytes, spreadsheet_cell

    for text in ("=1+1", "+SUM(A1)", "-2+3", "@SUM(1)", "\tx", "\rx"):
        assert spreadsheet_cell(text) == "'" + text
    assert [spreadsheet_cell(v) for v in ("a=b", "", -1.5, 3, True, None)] == ["a=b", "", -1.5, 3, True, None]
    data = csv_bytes(["id", "value"], [["=HYPERLINK(1)", -1.5], ["http://u:pw@h/a\rb", None]])
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows == [["id", "value"], ["'=HYPERLINK(1)", "-1.5"], ["http://***@h/a\rb", ""]]


def test_a_long_reason_keeps_its_end():
    # The reason and the fix close our messages; a deep run folder must not cut them off.
    from pipelines.evaluation.metrics import _first_line

    exc = ValueError("row 'b' of /" + "d/" * 200 + "run names input 'x', outside the run's --inputs /in; refused")
    line = _first_line(exc)
    assert len(line) <= 300 and line.startswith("ValueError: row 'b'")
    assert line.endswith("outside the run's --inputs /in; refused")
