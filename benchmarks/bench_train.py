"""TIPSv2Pretrainer train-step speed and peak memory, head-only vs full EMA.

Each (config, ema) case runs in its own process so that peak memory (the
process's maximum resident set size) belongs to that case alone. Reports
examples/s (batch / median step time, after the compiling first step), the
first step's time, peak RSS and the parameters trained and held as EMA.

Usage (from the repository root):
    KERAS_BACKEND=jax python benchmarks/bench_train.py --json train_jax.json
    KERAS_BACKEND=jax python benchmarks/bench_train.py --quick
"""

import argparse
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

# Head shapes: those of recipes/pretrain.py's b14 config, a small one for tiny.
HEADS = {
    "tiny": dict(head_hidden_dim=64, head_bottleneck_dim=32, num_prototypes=256),
    "b14": dict(head_hidden_dim=2048, head_bottleneck_dim=256, num_prototypes=32768),
}


def backbone_kwargs(name):
    s = c.TINY if name == "tiny" else c.B14
    return dict(
        vision_patch_size=s["patch"], vision_hidden_dim=s["hidden"], vision_num_layers=s["layers"],
        vision_num_heads=s["heads"], vision_intermediate_dim=s["mlp"],
        vision_position_grid=(4, 4) if name == "tiny" else (32, 32),
        text_vocabulary_size=s["vocab"], text_hidden_dim=s["hidden"], text_num_layers=s["layers"],
        text_num_heads=s["heads"], text_intermediate_dim=s["mlp"], text_max_sequence_length=s["seq"],
    )


def make_batch(name, batch, size, crops, seq):
    import numpy as np

    rng = np.random.default_rng(0)
    vocab = c.TINY["vocab"] if name == "tiny" else c.B14["vocab"]

    def text():
        ids = rng.integers(1, vocab, (batch, seq)).astype("int32")
        mask = (np.arange(seq)[None] < rng.integers(4, seq + 1, (batch, 1))).astype("int32")
        return {"token_ids": ids * mask, "padding_mask": mask}

    out = {"images": rng.random((batch, size, size, 3)).astype("float32"), "alt_text": text(), "caption": text()}
    if crops:
        side = max(14, (size * 3 // 7) // 14 * 14)  # 98 px at 224, as 224 : 98 in DINOv2
        out["local_crops"] = rng.random((batch, crops, side, side, 3)).astype("float32")
    return out


def run_case(args):
    """One case in this process; prints one JSON line."""
    import keras

    from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
    from keras_tipsv2.training import TIPSv2Pretrainer

    keras.utils.set_random_seed(0)
    backbone = TIPSv2Backbone(**backbone_kwargs(args.config))
    model = TIPSv2Pretrainer(backbone, ema=args.ema, seed=0, **HEADS[args.config])
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.05))
    batch = make_batch(args.config, args.batch, args.size, args.crops, args.seq)
    first, median, times = c.timed(lambda: model.train_on_batch(batch, return_dict=True), args.repeats)
    counts = model.parameter_counts()
    # ru_maxrss is in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = dict(
        config=args.config, ema=args.ema, backend=c.machine()["backend"], batch=args.batch, size=args.size,
        crops=args.crops, first_s=first, median_s=median, runs=len(times), examples_per_s=args.batch / median,
        peak_rss_mib=peak, params_trained=counts["trained"], params_ema=counts["ema"],
    )
    print("ROW " + json.dumps(row), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config only, seconds")
    parser.add_argument("--configs", nargs="+", default=["tiny", "b14"], choices=["tiny", "b14"])
    parser.add_argument("--emas", nargs="+", default=["head", "full"], choices=["head", "full"])
    parser.add_argument("--batch", type=int, default=None, help="default: 8 tiny, 2 B/14")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--case", nargs=2, metavar=("CONFIG", "EMA"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--crops", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        args.config, args.ema = args.case
        return run_case(args)
    if args.quick:
        args.configs, args.repeats = ["tiny"], 2
    rows = []
    for config in args.configs:
        # B/14 at 224 px with 2 local crops of 98 px; tiny at 28 px, 2 crops of 14.
        size, crops, seq = (28, 2, 16) if config == "tiny" else (224, 2, 64)
        batch = args.batch or (8 if config == "tiny" else 2)
        for ema in args.emas:
            cmd = [sys.executable, os.path.abspath(__file__), "--case", config, ema, "--batch", str(batch),
                   "--size", str(size), "--crops", str(crops), "--seq", str(seq), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("ROW ")]
            if out.returncode or not lines:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"case {config}/{ema} failed (exit {out.returncode})")
            row = json.loads(lines[-1][4:])
            print(f"  {config:<5} ema={ema:<5} first {row['first_s']:.2f}s  median {row['median_s']:.3f}s  "
                  f"peak {row['peak_rss_mib']:.0f} MiB", flush=True)
            rows.append(row)
    for row in rows:
        full = next((r for r in rows if r["config"] == row["config"] and r["ema"] == "full"), None)
        if row["ema"] == "head" and full:
            row["x_speed_vs_full"] = full["median_s"] / row["median_s"]
            row["ema_params_vs_full"] = row["params_ema"] / full["params_ema"]
    print()
    c.print_table(rows, ["config", "ema", "backend", "batch", "size", "first_s", "median_s", "examples_per_s",
                         "peak_rss_mib", "params_trained", "params_ema", "x_speed_vs_full", "ema_params_vs_full"])
    c.write_json(args.json, dict(machine=c.machine(), args=vars(args), rows=rows))


if __name__ == "__main__":
    main()
