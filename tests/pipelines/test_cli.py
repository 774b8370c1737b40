"""The `adir` entry point: help works and stays off the heavy imports."""

import subprocess
import sys


def test_help_lists_commands_without_importing_torch():
    # A fresh interpreter, so nothing imported by other tests can hide a heavy import.
    code = (
        "import sys, contextlib, io\n"
        "from pipelines import cli\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'faiss', 'open_clip', 'diffusers', 'pyiqa') if m in sys.modules)\n"
        "assert not heavy, f'adir --help imported {heavy}'\n"
        "print(buf.getvalue())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("index", "reconstruct", "example"):
        assert command in out.stdout


def test_index_without_subcommand_prints_its_help(capsys):
    from pipelines import cli

    assert cli.main(["index"]) == 2
    assert "build" in capsys.readouterr().out


def test_unknown_option_is_rejected(capsys):
    from pipelines import cli

    try:
        cli.main(["index", "build", "src", "out", "--no-such-option"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("an unknown option must be refused, not ignored")
    assert "--no-such-option" in capsys.readouterr().err
