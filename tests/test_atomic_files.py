"""Crash-safe writes: `keras_tipsv2.utils.atomic_files`."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from keras_tipsv2.utils import atomic_files

MODULE = atomic_files.__file__


def dead_pid():
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_atomic_open_replaces_the_file_only_when_the_block_completes(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_files.atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["plan.json"]
    atomic_files.write_json(path, {"epochs": 3})
    assert path.read_text() == '{\n  "epochs": 3\n}\n'


def test_atomic_path_keeps_a_suffix_writers_check(tmp_path):
    with atomic_files.atomic_path(tmp_path / "latest.weights.h5") as temporary:
        assert temporary.endswith(".latest.weights.h5")
        assert os.path.dirname(temporary) == str(tmp_path)
        open(temporary, "w").close()
    assert os.listdir(tmp_path) == ["latest.weights.h5"]


def test_leftovers_of_a_dead_writer_are_removed_by_the_next_write(tmp_path):
    leftover = tmp_path / f".tmp-{dead_pid()}-0123abcd.results.json"
    leftover.write_text('{"half": ')
    atomic_files.write_text(tmp_path / "results.json", "{}")
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_temporaries_of_a_live_writer_are_left_alone(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".tmp-{writer.pid}-0123abcd.results.json"
        live.write_text("in progress")
        atomic_files.write_text(tmp_path / "results.json", "{}")
        assert live.read_text() == "in progress"
    finally:
        writer.kill()
        writer.wait()


def test_replace_directory_puts_the_new_folder_in_and_removes_the_old(tmp_path):
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "old.txt").write_text("old")

    def build(folder):
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write("{}")

    assert atomic_files.replace_directory(tmp_path / "preset", build) == str(tmp_path / "preset")
    assert os.listdir(tmp_path / "preset") == ["config.json"]
    assert os.listdir(tmp_path) == ["preset"]


def test_a_failed_build_leaves_the_old_folder_untouched(tmp_path):
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "config.json").write_text("old")

    def build(folder):
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write("new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_files.replace_directory(tmp_path / "preset", build)
    assert (tmp_path / "preset" / "config.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["preset"]


def test_new_folders_and_files_are_readable_by_others(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_files.replace_directory(
            tmp_path / "preset", lambda folder: open(os.path.join(folder, "a.json"), "w").close()
        )
        atomic_files.write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "preset").st_mode & 0o777 == 0o755
    assert os.stat(tmp_path / "preset" / "a.json").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "results.json").st_mode & 0o777 == 0o644


def test_a_folder_set_aside_by_a_killed_writer_is_put_back(tmp_path):
    aside = tmp_path / f".old-{dead_pid()}-0123abcd.preset"
    aside.mkdir()
    (aside / "config.json").write_text("old")
    atomic_files.recover(tmp_path / "preset")
    assert (tmp_path / "preset" / "config.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["preset"]


def test_an_old_folder_left_after_the_swap_is_removed(tmp_path):
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "config.json").write_text("new")
    aside = tmp_path / f".old-{dead_pid()}-0123abcd.preset"
    aside.mkdir()
    atomic_files.recover(tmp_path / "preset")
    assert os.listdir(tmp_path) == ["preset"]
    assert (tmp_path / "preset" / "config.json").read_text() == "new"


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_writer_killed_between_its_two_renames_loses_no_preset(tmp_path):
    """A real process, stopped right after it set the old preset aside and
    killed there: the name is empty, and the next writer puts the old one back."""
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "config.json").write_text("old")
    marker = tmp_path / "paused"
    child = textwrap.dedent(
        f"""
        import importlib.util, os, time
        spec = importlib.util.spec_from_file_location("atomic_files", {MODULE!r})
        atomic_files = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(atomic_files)
        rename = os.rename

        def pausing_rename(source, target):
            rename(source, target)
            if os.path.basename(target).startswith(".old-"):
                open({str(marker)!r}, "w").close()
                time.sleep(60)

        os.rename = pausing_rename
        def build(folder):
            with open(os.path.join(folder, "config.json"), "w") as f:
                f.write("new")
        atomic_files.replace_directory({str(tmp_path / "preset")!r}, build)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child], start_new_session=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    marker.unlink()
    assert not (tmp_path / "preset").exists()  # killed inside the window
    atomic_files.recover(tmp_path / "preset")
    assert (tmp_path / "preset" / "config.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["preset"]  # the new one's staging removed too


def test_remove_directory_leaves_no_trace(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "plan.json").write_text("{}")
    atomic_files.remove_directory(tmp_path / "checkpoint")
    atomic_files.remove_directory(tmp_path / "missing")
    assert os.listdir(tmp_path) == []
