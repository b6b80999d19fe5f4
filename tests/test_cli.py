"""Command lines report a user's mistake as one line and exit status 1."""

import os
import subprocess
import sys

import pytest

from keras_tipsv2.utils.cli import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_user_error_is_one_line_and_status_1(capsys):
    def main(argv):
        raise FileNotFoundError(f"Image file not found: {argv[0]!r}")

    assert run(main, ["cat.png"]) == 1
    err = capsys.readouterr().err
    assert err == "error: Image file not found: 'cat.png'\n"


def test_a_bug_keeps_its_traceback():
    def main(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run(main, [])


def test_success_is_status_0():
    assert run(lambda argv: None, []) == 0


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "keras_tipsv2.visualize", "missing.png", "--preset", "tipsv2_tiny_shapes"],
        [sys.executable, os.path.join(ROOT, "recipes", "eval_shapes.py"), "--preset", "/no/such/preset"],
    ],
    ids=["visualize", "eval_shapes"],
)
def test_scripts_print_one_line_without_a_traceback(command, tmp_path):
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-2000:]
