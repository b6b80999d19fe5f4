"""The README stays true: its quick tour runs as written, and it stays short."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _tour():
    text = open(README, encoding="utf-8").read()
    section = text.split("## A quick tour", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_quick_tour_runs_as_written(capsys):
    exec(compile(_tour(), "README.md (A quick tour)", "exec"), {})
    printed = capsys.readouterr().out
    assert "(1, 2, 128) (1, 8, 8, 128)" in printed


def test_the_readme_stays_under_12_kb():
    assert os.path.getsize(README) <= 12 * 1024
