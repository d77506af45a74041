"""The CLI contract: subcommands, --help with examples, --version, one-line user errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autoft import __version__
from autoft.cli import SUBCOMMANDS, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"autoft {__version__}"


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("run", "advise", "estimate", "probe", "tui"):
        assert f"\n    {name} " in out, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_help_shows_real_examples(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    examples = out.split("examples:", 1)[1]
    assert f"autoft {name}" in examples


def test_unknown_subcommand_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _run(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "autoft", *args], capture_output=True, text=True, env=env)


def test_user_error_is_one_line_exit_2_no_traceback():
    r = _run("estimate", "--model", "no/such-model-anywhere", "--technique", "lora", "--batch-size", "1",
             "--seq-len", "128", env_extra={"HF_HUB_OFFLINE": "1", "AUTOFT_DEBUG": ""})
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("autoft: error: "), r.stderr
    assert "Traceback" not in r.stderr


def test_debug_env_shows_traceback():
    r = _run("estimate", "--model", "no/such-model-anywhere", "--technique", "lora", "--batch-size", "1",
             "--seq-len", "128", env_extra={"HF_HUB_OFFLINE": "1", "AUTOFT_DEBUG": "1"})
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "AutoftError" in r.stderr


def test_autoft_error_message_is_one_line():
    from autoft.errors import AutoftError

    err = AutoftError("the file\n data.csv is missing.", "pass --data with\nan existing path.")
    assert str(err) == "the file data.csv is missing; pass --data with an existing path."
    assert err.exit_code == 2
