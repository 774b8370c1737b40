"""bench/blind.py's report: the table and the margin calibration from recorded measurements (the bench itself takes minutes)."""

import json

from bench import blind


def _record(setting, image, right, gap, psnr):
    kernel = "gaussian:1.6" if setting.startswith("deblur") else "bicubic"
    rival = "box:5" if setting.startswith("deblur") else "area"
    return {
        "setting": setting,
        "image": image,
        "noise_error": 0.5,
        "kernel_est": kernel,
        "kernel_right": right,
        "unsure": None,
        "estimate": {"kernel": {"criteria": {kernel: 0.0, rival: gap}}},
        "auto": {"psnr": psnr, "stlpips": 0.2},
        "oracle": {"psnr": psnr - 0.1 * (image % 2), "stlpips": 0.21},
        "fixed": {"psnr": psnr - 2.0, "stlpips": 0.3 + 0.01 * image},
    }


def test_the_report_reads_the_json_and_prints_both_tables(tmp_path, capsys):
    records = [_record("deblur gaussian 1.6, noise 5", i, i % 3 != 0, 100.0 * i, 25.0 + i) for i in range(4)]
    records += [_record("sr4 bicubic, noise 0", i, i == 1, 5.0 * i, 23.0) for i in range(4)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"records": records}))
    assert blind.main(["--report", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| deblur gaussian 1.6, noise 5 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:6] == ["4", "0.50", "0.50", "0.00", "26.50"]
    assert cells[7].startswith("+2.00")  # auto - fixed PSNR, the same for every image
    assert "**sr4, all settings**" in out
    # Calibration: at margin 0 every estimate is sure; the blur gap per coefficient is 100 i / (96^2 - 1).
    assert "| blur | 0 | 1.00 | 0.50 | n/a |" in out
    assert "| SR kernel | 0 | 1.00 | 0.25 | n/a |" in out
