"""The paper's ablations at toy scale, on ShapesWorld, over seeds.

Three studies (`--study`), each a table of mean ± sample standard deviation
over seeds of the held-out ShapesWorld benchmark: zero-shot segmentation mIoU
per vocabulary (TIPS values protocol, and colour without the residual),
zero-shot classification accuracy (CLS_1), retrieval R@1 (image -> text,
CLS_2), seconds per step and a parameter count.

cumulative (default): the TIPS -> TIPSv2 ablation (the shape of the paper's
Table 4), each run `recipes/pretrain.py` (tiny config) at equal compute:

    TIPS baseline        iBOT (masked patches only), full EMA teacher, alt-text only
    + iBOT++             the patch loss on every patch
    + multi-granularity  CLS_2 <-> a caption sampled per example
    + head-only EMA      = TIPSv2

distillation: the paper's motivating finding (its Tables 1 and 2), a
randomly initialised student distilled from a frozen teacher (the shipped
`tipsv2_tiny_shapes` preset, or a pretraining run's folder) with
`recipes/distill.py`, students of the teacher's architecture and at half its
width. `--supervisions` picks among: "all", the patch loss on every token of
the unmasked image (the TIPSv2 recipe); "masked", 75 % of the student's
patches masked and only those supervised (iBOT-style); "visible", the same
masked images with only the visible tokens supervised; "all-mask", every
token of the same masked images (masking then changes the student's input
for every loss, not which tokens are supervised); "none", a control without
the patch loss (CLS and contrastive losses only). The teacher is scored on
the same held-out images; the table says by how much each student beats it.

patch-loss: iBOT against iBOT++ in TIPSv2 pretraining (head-only EMA,
multi-granularity captions), with the patch loss weight swept: iBOT (masked
tokens), iBOT++ as the paper writes it (uniform mean over all tokens) and,
with `--visible-weight W`, iBOT++ with masked and visible tokens averaged
separately (mean_masked + W * mean_visible). Same seed = same
initialisation and batches, so the table adds each variant's paired
difference to iBOT at the same weight.

    python recipes/ablate.py --minutes-per-run 10 --seeds 3 --output runs/ablation   # 12 runs, ~2 h
    python recipes/ablate.py --study distillation --steps 500 --seeds 3
    python recipes/ablate.py --study patch-loss --steps 3000 --patch-weights 0.2 1 2 \\
        --visible-weight 1 --set steps_per_epoch=250 --set train_samples=16384
    python recipes/ablate.py --quick --seeds 1                                        # smoke run

Every run writes its own folder under --output. Runs go seed by seed (every
variant at seed 0 first), and after each seed the study rewrites
ablation.md (the table and the command) and ablation.json (every run's
numbers); started again, it reads the runs that finished instead of
repeating them.
"""

import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import distill  # noqa: E402
import pretrain  # noqa: E402

STUDIES = ("cumulative", "distillation", "patch-loss")
VARIANTS = (
    ("TIPS baseline", dict(patch_loss="ibot", ema="full", caption_sampling="alt_text_only")),
    ("+ iBOT++", dict(patch_loss="ibot++", ema="full", caption_sampling="alt_text_only")),
    ("+ multi-granularity captions", dict(patch_loss="ibot++", ema="full", caption_sampling="multi")),
    ("+ head-only EMA (TIPSv2)", dict(patch_loss="ibot++", ema="head", caption_sampling="multi")),
)
# Distillation supervision: (student mask ratio, patch tokens trained,
# patch loss weight). "none" is the control: CLS and contrastive losses only.
SUPERVISIONS = {
    "all": (0.0, "all", 2.0),
    "masked": (0.75, "masked", 2.0),
    "visible": (0.75, "visible", 2.0),
    "all-mask": (0.75, "all", 2.0),
    "none": (0.0, "all", 0.0),
}
SUPERVISION_NAMES = {
    "all": "all tokens, no masking",
    "masked": "masked tokens only (mask 0.75)",
    "visible": "visible tokens only (mask 0.75)",
    "all-mask": "all tokens (mask 0.75)",
    "none": "no patch loss (control)",
}
VOCABULARIES = ("colour", "shape", "colour_shape")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", choices=STUDIES, default="cumulative")
    parser.add_argument("--seeds", type=int, default=3)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes-per-run", type=float, default=10.0,
                        help="pretraining studies: plans the step count once (on the first run) from a "
                        "measured step; every run gets it")
    budget.add_argument("--steps", type=int, help="steps per run instead of a time budget (distillation: "
                        "default its recipe's schedule)")
    parser.add_argument("--quick", action="store_true", help="--quick runs (smoke test)")
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--output", default="runs/ablation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="pretraining studies: a pretrain.py config override for every run, "
                        "e.g. --set world.empty_fraction=0")
    parser.add_argument("--pipeline", choices=["tf.data", "python"], default="tf.data",
                        help="pretraining studies: pretrain.py's input pipeline ('python' needs no TensorFlow)")
    distillation = parser.add_argument_group("--study distillation")
    distillation.add_argument("--teacher", default="tipsv2_tiny_shapes",
                              help="teacher preset (name or folder), or a pretrain.py run folder")
    distillation.add_argument("--students", nargs="+", choices=distill.TEACHER_SHAPED,
                              default=list(distill.TEACHER_SHAPED))
    distillation.add_argument("--supervisions", nargs="+", choices=list(SUPERVISIONS),
                              default=["all", "masked"])
    patch = parser.add_argument_group("--study patch-loss")
    patch.add_argument("--patch-weights", type=float, nargs="+", default=[0.2, 1.0, 2.0],
                       help="patch loss weights swept (the tiny config's is 0.2, the paper's 2)")
    patch.add_argument("--visible-weight", type=float,
                       help="also run iBOT++ with masked and visible tokens averaged separately")
    return parser.parse_args(argv)


# --- Runs ------------------------------------------------------------------


def run_flags(variant, seed, args, steps, output):
    """pretrain.py flags of one pretraining run."""
    flags = [
        "--patch-loss", variant["patch_loss"], "--ema", variant["ema"],
        "--caption-sampling", variant["caption_sampling"], "--seed", str(seed),
        "--output", output, "--eval-images", str(args.eval_images), "--verbose", "0",
        "--pipeline", args.pipeline,
    ]  # fmt: skip
    if args.quick:
        flags.append("--quick")
    if steps is not None:
        flags += ["--steps", str(steps)]
    for assignment in list(variant.get("set", ())) + args.set:
        flags += ["--set", assignment]
    return flags


def teacher_preset(teacher):
    """A pretraining run's folder means its preset; anything else is one."""
    run_preset = os.path.join(teacher, "preset")
    if os.path.isdir(teacher) and os.path.isfile(os.path.join(run_preset, "config.json")):
        return run_preset
    return teacher


def distill_flags(student, supervision, seed, args, output):
    """distill.py flags of one distillation run."""
    mask_ratio, tokens, weight = SUPERVISIONS[supervision]
    flags = [
        "--teacher", teacher_preset(args.teacher), "--student-config", student,
        "--mask-ratio", str(mask_ratio), "--patch-supervision", tokens,
        "--patch-weight", str(weight), "--seed", str(seed),
        "--output", output, "--eval-images", str(args.eval_images), "--verbose", "0",
    ]  # fmt: skip
    if args.quick:
        flags.append("--quick")
    if args.steps is not None:
        flags += ["--steps", str(args.steps)]
    return flags


def patch_loss_variants(args):
    """[(name, weight, pretraining variant)]: per weight, iBOT, iBOT++ and
    (with --visible-weight) separately normalised iBOT++."""
    variants = []
    for weight in args.patch_weights:
        common = dict(ema="head", caption_sampling="multi")
        weight_set = [f"pretrainer.patch_weight={weight:g}"]
        for label, loss in (("iBOT", "ibot"), ("iBOT++", "ibot++")):
            variant = dict(common, patch_loss=loss, set=weight_set)
            variants.append((f"{label}, weight {weight:g}", weight, variant))
        if args.visible_weight is not None:
            separate = weight_set + [f"pretrainer.patch_visible_weight={args.visible_weight:g}"]
            name = f"iBOT++ masked + {args.visible_weight:g} x visible, weight {weight:g}"
            variants.append((name, weight, dict(common, patch_loss="ibot++", set=separate)))
    return variants


# --- Table -----------------------------------------------------------------


def score_values(evaluation):
    """The table's scores of one held-out evaluation."""
    values = {f"mIoU {v}": evaluation["segmentation"][v]["values"] for v in VOCABULARIES}
    values["mIoU colour, no residual"] = evaluation["segmentation"]["colour"]["values_no_residual"]
    values["classification colour"] = evaluation["classification"]["colour"]["cls_1"]
    values["classification shape"] = evaluation["classification"]["shape"]["cls_1"]
    values["R@1 image->text"] = evaluation["retrieval"]["cls_2"]["image_to_text@1"]
    return values


def pretraining_values(result):
    values = score_values(result["evaluation"])
    train = result["train"]
    values["s/step"] = train["seconds_per_step"] or float("nan")
    counts = train["parameter_counts"]
    values["trained+EMA params"] = counts["trained"] + counts["ema"]
    return values


def distillation_values(result, teacher):
    values = score_values(result["evaluation"]["student"])
    for vocabulary in ("colour", "shape"):
        values[f"student − teacher, mIoU {vocabulary}"] = (
            values[f"mIoU {vocabulary}"] - teacher[f"mIoU {vocabulary}"]
        )
    values["s/step"] = result["train"]["seconds_per_step"] or float("nan")
    values["image-tower params"] = result["train"]["vision_parameters"]["student"]
    return values


COUNTS = ("trained+EMA params", "image-tower params")


def mean_spread(key, values):
    """One table cell: mean ± sample std (percent for scores)."""
    values = np.asarray(values, "float64")
    if key in COUNTS:  # the same for every seed
        return f"{int(values[0]):,}"
    if key != "s/step":
        values = 100.0 * values
    spread = values.std(ddof=1) if len(values) > 1 else float("nan")
    digits = 2 if key == "s/step" else 1
    return f"{values.mean():.{digits}f} ± {spread:.{digits}f}"


def markdown_table(rows, floors, command, fixed_rows=()):
    """rows: [(name, [values per seed])]; fixed_rows: [(name, values)] of
    runs without seeds (a frozen teacher), blank where a key is missing;
    floors: reference numbers."""
    keys = list(rows[0][1][0])
    lines = ["| variant | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, values in fixed_rows:
        cells = [
            "" if k not in values else f"{int(values[k]):,}" if k in COUNTS else f"{100 * values[k]:.1f}"
            for k in keys
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, runs in rows:
        cells = [mean_spread(k, [r[k] for r in runs]) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = ", ".join(f"{k} {100 * v:.1f}" for k, v in floors.items())
    return (
        "\n".join(lines)
        + f"\n\nPercentages; mean ± sample std over {len(rows[0][1])} seed(s). "
        + f"Held-out references: {notes}.\n\nCommand: `{command}`\n"
    )


def paired_differences(rows, reference_prefix="iBOT, "):
    """Markdown lines: each variant's per-seed difference to the iBOT run of
    the same weight and seed (colour and shape mIoU), mean ± sample std."""
    by_name = dict(rows)
    lines = []
    for name, runs in rows:
        if name.startswith(reference_prefix):
            continue
        reference = by_name[reference_prefix + name.rsplit(", ", 1)[1]]
        cells = []
        for key in ("mIoU colour", "mIoU colour, no residual", "mIoU shape"):
            differences = [100 * (r[key] - b[key]) for r, b in zip(runs, reference)]
            spread = np.std(differences, ddof=1) if len(differences) > 1 else float("nan")
            cells.append(f"{key} {np.mean(differences):+.1f} ± {spread:.1f}")
        lines.append(f"- {name} − iBOT (same seeds): " + ", ".join(cells))
    return "\n".join(lines) + "\n"


def floors_of(evaluation):
    floors = {f"all-background {v}": evaluation["segmentation"][v]["background"] for v in VOCABULARIES}
    floors.update({f"patch oracle {v}": evaluation["segmentation"][v]["oracle"] for v in VOCABULARIES})
    return floors


# --- Studies -----------------------------------------------------------------


def finished_result(output, steps):
    """A run folder's results if the run finished and was scored (with
    `steps` steps, when given), else None: a stopped study started again
    reads its finished runs instead of repeating them."""
    path = os.path.join(output, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    if not result.get("evaluation") or (steps is not None and result["train"]["steps"] != steps):
        return None
    return result


def seed_by_seed(names, seeds, run, write):
    """Runs `run(index, seed)` for every variant at seed 0, then at seed 1,
    ...: a study stopped early still compares every variant on the same
    seeds. Calls `write(rows)` after each seed, rows [(name, [values])]."""
    runs = {name: [] for name in names}
    for seed in range(seeds):
        for index, name in enumerate(names):
            runs[name].append(run(index, seed))
        write([(name, list(runs[name])) for name in names])
        print(f"seed {seed}: every variant done")
    return [(name, runs[name]) for name in names]


def run_folder(name, seed):
    """A run's folder, named after its variant: a study given more variants
    later (another weight, `--visible-weight`) reads each finished run under
    the variant that made it, whatever its place in the list."""
    return re.sub(r"[^a-z0-9.+]+", "_", name.lower()).strip("_") + f"_seed{seed}"


def pretraining_study(variants, args, write):
    """One pretraining run per variant and seed, every run with the first
    run's step count; `write(rows, evaluation)` after each seed."""
    state = {"steps": args.steps, "evaluation": None}

    def run(index, seed):
        name, variant = variants[index]
        output = os.path.join(args.output, run_folder(name, seed))
        result = finished_result(output, state["steps"])
        if result is None:
            flags = run_flags(variant, seed, args, state["steps"], output)
            if state["steps"] is None and not args.quick:
                flags += ["--minutes", str(args.minutes_per_run)]
            result = pretrain.main(flags)
        # Equal compute: every later run gets the first run's step count.
        state["steps"] = state["steps"] or result["train"]["steps"]
        state["evaluation"] = result["evaluation"]
        return pretraining_values(result)

    names = [name for name, _ in variants]
    return seed_by_seed(names, args.seeds, run, lambda rows: write(rows, state["evaluation"]))


def distillation_study(args, write):
    """One distillation run per student, supervision and seed;
    `write(rows, evaluation, teacher values)` after each seed."""
    variants = [(s, v) for s in args.students for v in args.supervisions]
    state = {}

    def run(index, seed):
        student, supervision = variants[index]
        output = os.path.join(args.output, f"{student}_{supervision}_seed{seed}")
        result = finished_result(output, args.steps)
        if result is None:
            result = distill.main(distill_flags(student, supervision, seed, args, output))
        teacher = score_values(result["evaluation"]["teacher"])
        teacher["image-tower params"] = result["train"]["vision_parameters"]["teacher"]
        state.update(evaluation=result["evaluation"]["student"], teacher=teacher)
        return distillation_values(result, teacher)

    names = [f"{s} student, {SUPERVISION_NAMES[v]}" for s, v in variants]
    return seed_by_seed(
        names, args.seeds, run, lambda rows: write(rows, state["evaluation"], state["teacher"])
    )


def main(argv=None):
    args = parse_args(argv)
    command = "python recipes/ablate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    os.makedirs(args.output, exist_ok=True)

    def write(rows, evaluation, teacher=None):
        fixed_rows = [(f"teacher ({args.teacher}, frozen)", teacher)] if teacher else ()
        table = markdown_table(rows, floors_of(evaluation), command.strip(), fixed_rows)
        if args.study == "patch-loss":
            table += "\n" + paired_differences(rows)
        with open(os.path.join(args.output, "ablation.md"), "w") as f:
            f.write(table)
        with open(os.path.join(args.output, "ablation.json"), "w") as f:
            json.dump({name: runs for name, runs in rows}, f, indent=2)
        print(table)

    if args.study == "distillation":
        return distillation_study(args, write)
    if args.study == "patch-loss":
        variants = [(name, variant) for name, _, variant in patch_loss_variants(args)]
        return pretraining_study(variants, args, write)
    return pretraining_study(VARIANTS, args, write)


if __name__ == "__main__":
    from keras_tipsv2.utils.cli import run

    sys.exit(run(main))
