"""The ablation studies' runs and tables (recipes/ablate.py), without training."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

import ablate  # noqa: E402
import distill  # noqa: E402
import pretrain  # noqa: E402


def test_patch_loss_study_sweeps_the_weight_for_each_loss_form():
    args = ablate.parse_args(
        ["--study", "patch-loss", "--steps", "5", "--patch-weights", "0.5", "2",
         "--visible-weight", "1", "--set", "world.empty_fraction=0", "--pipeline", "python"]
    )  # fmt: skip
    configs = {}
    for name, weight, variant in ablate.patch_loss_variants(args):
        flags = ablate.run_flags(variant, 0, args, 5, "out")
        assert pretrain.parse_args(flags).pipeline == "python"
        configs[name] = pretrain.run_config(pretrain.parse_args(flags))
        assert configs[name]["pretrainer"]["patch_weight"] == weight, name
        assert configs[name]["world"]["empty_fraction"] == 0, name
    assert len(configs) == 6
    separate = configs["iBOT++ masked + 1 x visible, weight 2"]["pretrainer"]
    assert separate["patch_loss"] == "ibot++" and separate["patch_visible_weight"] == 1
    assert configs["iBOT, weight 0.5"]["pretrainer"]["patch_loss"] == "ibot"
    assert "patch_visible_weight" not in configs["iBOT++, weight 0.5"]["pretrainer"]
    # Every variant keeps TIPSv2's other choices.
    assert {c["pretrainer"]["ema"] for c in configs.values()} == {"head"}


@pytest.mark.parametrize(
    "supervision, mask_ratio, tokens, weight",
    [("all", 0.0, "all", 2.0), ("masked", 0.75, "masked", 2.0),
     ("visible", 0.75, "visible", 2.0), ("all-mask", 0.75, "all", 2.0),
     ("none", 0.0, "all", 0.0)],
)  # fmt: skip
def test_distillation_study_masks_the_student_only_for_token_subsets(
    supervision, mask_ratio, tokens, weight
):
    args = ablate.parse_args(["--study", "distillation", "--steps", "7", "--teacher", "T"])
    flags = ablate.distill_flags("half-width", supervision, 2, args, "out")
    parsed = distill.parse_args(flags)
    assert parsed.mask_ratio == mask_ratio and parsed.patch_supervision == tokens
    assert parsed.patch_weight == weight
    assert parsed.student_config == "half-width" and parsed.seed == 2 and parsed.steps == 7
    assert parsed.teacher == "T"


def test_a_pretraining_run_folder_stands_for_its_preset(tmp_path):
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "config.json").write_text("{}")
    assert ablate.teacher_preset(str(tmp_path)) == str(tmp_path / "preset")
    assert ablate.teacher_preset("tipsv2_tiny_shapes") == "tipsv2_tiny_shapes"


def test_table_puts_the_teacher_first_and_gives_mean_and_sample_spread():
    runs = [
        {"mIoU colour": 0.50, "s/step": 1.0, "image-tower params": 1234},
        {"mIoU colour": 0.60, "s/step": 3.0, "image-tower params": 1234},
    ]
    table = ablate.markdown_table(
        [("student", runs)], {"floor": 0.1}, "cmd",
        fixed_rows=[("teacher", {"mIoU colour": 0.555, "image-tower params": 5678})],
    )  # fmt: skip
    lines = table.splitlines()
    assert lines[2] == "| teacher | 55.5 |  | 5,678 |"
    assert lines[3] == "| student | 55.0 ± 7.1 | 2.00 ± 1.41 | 1,234 |"
    assert "floor 10.0" in table and "`cmd`" in table


def test_paired_differences_compare_each_variant_with_ibot_of_its_weight_and_seed():
    def run(colour, shape):
        return {"mIoU colour": colour, "mIoU colour, no residual": 0.0, "mIoU shape": shape}

    rows = [
        ("iBOT, weight 2", [run(0.5, 0.1), run(0.7, 0.2)]),
        ("iBOT++, weight 2", [run(0.6, 0.1), run(0.9, 0.2)]),
    ]
    text = ablate.paired_differences(rows)
    # Differences 10 and 20 points: mean 15, sample std 7.1.
    assert "iBOT++, weight 2 − iBOT (same seeds): mIoU colour +15.0 ± 7.1" in text
    assert "mIoU shape +0.0 ± 0.0" in text
    assert text.count("\n") == 1


def test_runs_go_seed_by_seed_and_the_table_is_rewritten_after_each_seed():
    calls, written = [], []

    def run(index, seed):
        calls.append((index, seed))
        return {"mIoU colour": index + seed}

    rows = ablate.seed_by_seed(["a", "b"], 2, run, lambda rows: written.append(rows))
    assert calls == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [len(r[0][1]) for r in written] == [1, 2]
    assert rows == [("a", [{"mIoU colour": 0}, {"mIoU colour": 1}]),
                    ("b", [{"mIoU colour": 1}, {"mIoU colour": 2}])]  # fmt: skip


def test_a_finished_and_scored_run_is_read_not_repeated(tmp_path):
    import json

    assert ablate.finished_result(str(tmp_path), 100) is None
    result = {"train": {"steps": 100}, "evaluation": None}
    (tmp_path / "results.json").write_text(json.dumps(result))
    assert ablate.finished_result(str(tmp_path), 100) is None  # trained, not scored
    result["evaluation"] = {"segmentation": {}}
    (tmp_path / "results.json").write_text(json.dumps(result))
    assert ablate.finished_result(str(tmp_path), 100) == result
    assert ablate.finished_result(str(tmp_path), None) == result
    assert ablate.finished_result(str(tmp_path), 200) is None  # another schedule


def test_run_folders_are_named_after_their_variant_not_its_place():
    args = ablate.parse_args(["--study", "patch-loss", "--patch-weights", "0.2", "2"])
    folders = [ablate.run_folder(n, 1) for n, _, _ in ablate.patch_loss_variants(args)]
    assert folders == ["ibot_weight_0.2_seed1", "ibot++_weight_0.2_seed1",
                       "ibot_weight_2_seed1", "ibot++_weight_2_seed1"]  # fmt: skip
    args = ablate.parse_args(
        ["--study", "patch-loss", "--patch-weights", "0.2", "2", "--visible-weight", "1"]
    )
    wider = [ablate.run_folder(n, 1) for n, _, _ in ablate.patch_loss_variants(args)]
    assert set(folders) < set(wider) and len(set(wider)) == 6
    assert ablate.run_folder("+ head-only EMA (TIPSv2)", 0) == "+_head_only_ema_tipsv2_seed0"
