"""The cumulative TIPS -> TIPSv2 ablation (the shape of the paper's Table 4) on ShapesWorld.

At equal compute (same steps, same batch) and for several seeds:

    TIPS baseline        iBOT (masked patches only), full EMA teacher, alt-text only
    + iBOT++             the patch loss on every patch
    + multi-granularity  CLS_2 <-> a caption sampled per example
    + head-only EMA      = TIPSv2

Each run is `recipes/pretrain.py` (tiny config) followed by the held-out
ShapesWorld benchmark; the table gives mean ± sample standard deviation over
seeds of zero-shot segmentation mIoU per vocabulary (TIPS values protocol),
zero-shot classification accuracy (CLS_1), retrieval R@1 (image -> text,
CLS_2), seconds per step and trained + EMA parameters.

    python recipes/ablate.py --minutes-per-run 10 --seeds 3 --output runs/ablation   # 12 runs, ~2 h
    python recipes/ablate.py --quick --seeds 1                                        # smoke run
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pretrain  # noqa: E402

VARIANTS = (
    ("TIPS baseline", dict(patch_loss="ibot", ema="full", caption_sampling="alt_text_only")),
    ("+ iBOT++", dict(patch_loss="ibot++", ema="full", caption_sampling="alt_text_only")),
    ("+ multi-granularity captions", dict(patch_loss="ibot++", ema="full", caption_sampling="multi")),
    ("+ head-only EMA (TIPSv2)", dict(patch_loss="ibot++", ema="head", caption_sampling="multi")),
)
VOCABULARIES = ("colour", "shape", "colour_shape")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes-per-run", type=float, default=10.0,
                        help="plans the step count once (on the baseline) from a measured step; every run gets it")
    budget.add_argument("--steps", type=int, help="steps per run instead of a time budget")
    parser.add_argument("--quick", action="store_true", help="pretrain.py --quick runs (smoke test)")
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--output", default="runs/ablation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a pretrain.py config override for every run, e.g. --set world.empty_fraction=0")
    return parser.parse_args(argv)


def run_flags(variant, seed, args, steps, output):
    flags = [
        "--patch-loss", variant["patch_loss"], "--ema", variant["ema"],
        "--caption-sampling", variant["caption_sampling"], "--seed", str(seed),
        "--output", output, "--eval-images", str(args.eval_images), "--verbose", "0",
    ]
    if args.quick:
        flags.append("--quick")
    if steps is not None:
        flags += ["--steps", str(steps)]
    for assignment in args.set:
        flags += ["--set", assignment]
    return flags


def row_values(result):
    """The table's numbers for one run."""
    evaluation, train = result["evaluation"], result["train"]
    values = {f"mIoU {v}": evaluation["segmentation"][v]["values"] for v in VOCABULARIES}
    values["mIoU colour, no residual"] = evaluation["segmentation"]["colour"]["values_no_residual"]
    values["classification colour"] = evaluation["classification"]["colour"]["cls_1"]
    values["classification shape"] = evaluation["classification"]["shape"]["cls_1"]
    values["R@1 image->text"] = evaluation["retrieval"]["cls_2"]["image_to_text@1"]
    values["s/step"] = train["seconds_per_step"] or float("nan")
    counts = train["parameter_counts"]
    values["trained+EMA params"] = counts["trained"] + counts["ema"]
    return values


def mean_spread(key, values):
    """One table cell: mean ± sample std (percent for scores)."""
    values = np.asarray(values, "float64")
    if key == "trained+EMA params":  # the same for every seed
        return f"{int(values[0]):,}"
    if key != "s/step":
        values = 100.0 * values
    spread = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.1f} ± {spread:.1f}" if key != "s/step" else f"{values.mean():.2f} ± {spread:.2f}"


def markdown_table(rows, floors, command):
    """rows: [(name, [values per seed])]; floors: reference numbers."""
    keys = list(rows[0][1][0])
    lines = ["| variant | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, runs in rows:
        cells = [mean_spread(k, [r[k] for r in runs]) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = ", ".join(f"{k} {100 * v:.1f}" for k, v in floors.items())
    return (
        "\n".join(lines)
        + f"\n\nPercentages; mean ± sample std over {len(rows[0][1])} seed(s). "
        + f"Held-out references: {notes}.\n\nCommand: `{command}`\n"
    )


def main(argv=None):
    args = parse_args(argv)
    steps = args.steps
    rows = []
    for index, (name, variant) in enumerate(VARIANTS):
        runs = []
        for seed in range(args.seeds):
            output = os.path.join(args.output, f"variant{index}_seed{seed}")
            flags = run_flags(variant, seed, args, steps, output)
            if steps is None and not args.quick:
                flags += ["--minutes", str(args.minutes_per_run)]
            result = pretrain.main(flags)
            # Equal compute: every later run gets the first run's step count.
            steps = steps or result["train"]["steps"]
            runs.append(row_values(result))
        rows.append((name, runs))
        print(f"{name}: done ({args.seeds} seeds)")
    evaluation = result["evaluation"]["segmentation"]
    floors = {f"all-background {v}": evaluation[v]["background"] for v in VOCABULARIES}
    floors.update({f"patch oracle {v}": evaluation[v]["oracle"] for v in VOCABULARIES})
    command = "python recipes/ablate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown_table(rows, floors, command.strip())
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "ablation.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.output, "ablation.json"), "w") as f:
        json.dump({name: runs for name, runs in rows}, f, indent=2)
    print(table)
    return rows


if __name__ == "__main__":
    from keras_tipsv2.utils.cli import run

    sys.exit(run(main))
