"""The reconstruct progress line's figures: output MP/s and the job's time left, from the images done so far."""

from pipelines.progress import JobProgress, duration, rate_and_eta


def test_duration_reads_as_a_countdown():
    assert [duration(s) for s in (0, 42.4, 200, 7500, 3 * 86400 + 4 * 3600 + 59)] == [
        "0s",
        "42s",
        "3m20s",
        "2h05m",
        "3d04h",
    ]


def test_rate_is_output_megapixels_per_second_and_eta_scales_with_the_images_left():
    # Two DIV2K outputs (2.77 MP each) in 100 s: 0.0553 MP/s; 98 more of that size take 98 x 50 s.
    assert rate_and_eta(2 * 2.76624, 2, 2, 100.0, 98) == "0.0553 MP/s, ETA 1h21m"
    assert rate_and_eta(12.0, 1, 1, 60.0, 3) == "0.2 MP/s, ETA 3m00s"  # a 12 MP photo a minute
    assert rate_and_eta(12.0, 1, 1, 60.0, 0).endswith("ETA 0s")


def test_error_rows_cost_time_but_not_size():
    # One 4 MP image and one error row in 40 s: the rate counts both seconds, the size only the image.
    assert rate_and_eta(4.0, 2, 1, 40.0, 2) == "0.1 MP/s, ETA 1m20s"
    assert rate_and_eta(0.0, 2, 0, 10.0, 4) == "0 MP/s, ETA 20s"  # only error rows yet: seconds per image


def test_nothing_done_yet_has_no_estimate():
    assert rate_and_eta(0.0, 0, 0, 0.0, 10) == "ETA ?"


def test_rates_read_without_exponents():
    assert rate_and_eta(1.0, 1, 1, 1e-4, 1).startswith("10000 MP/s")
    assert rate_and_eta(1e-4, 1, 1, 1.0, 1).startswith("<0.001 MP/s")


def test_the_line_shows_rate_eta_stage_means_and_errors(capsys):
    progress = JobProgress(total=3, done=0, enabled=True)  # writes to sys.stderr, as the job's bar does
    progress.start()
    progress({"error": None, "width": 2040, "height": 1356, "sampling_s": 3.0})
    progress({"error": "x.png: DecodeError", "width": None, "height": None})
    progress.close()
    last = capsys.readouterr().err.strip().split("\r")[-1]
    assert "2/3" in last and " MP/s, ETA " in last
    assert "sampl 1.50s" in last and "errors 1" in last
    assert progress.megapixels == 2040 * 1356 / 1e6 and progress.sized == 1
