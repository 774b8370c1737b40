"""`adir reconstruct --degradation auto`: refused without --degraded in one line, recorded in config.yaml with it."""

import argparse

from pipelines import cli
from pipelines.reconstruct import resolve_config


def test_auto_without_degraded_is_refused_naming_the_fix(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["reconstruct", "--inputs", str(tmp_path), "--out", str(out), "--task", "deblur", "--mode", "baseline"]
    assert cli.main([*argv, "--degradation", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--degradation auto" in err and "add --degraded" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_auto_is_what_config_yaml_records_and_known_is_the_default(tmp_path):
    parser = cli.build_parser()
    base = [
        "reconstruct",
        "--inputs",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--task",
        "sr4",
        "--mode",
        "baseline",
    ]
    args = parser.parse_args([*base, "--degraded", "--degradation", "auto"])
    assert resolve_config(args).redacted()["degradation"] == "auto"
    assert resolve_config(parser.parse_args(base)).redacted()["degradation"] == "known"
    assert isinstance(args, argparse.Namespace)
    help_text = parser._subparsers._group_actions[0].choices["reconstruct"].format_help()
    assert "Not estimated" in help_text and "docs/blind.md" in help_text
