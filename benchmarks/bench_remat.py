"""Peak memory of a B/14 TIPSv2Pretrainer train step with and without
rematerialised image-tower blocks (`TIPSv2Backbone(vision_remat=True)`).

Each case (remat off, on) runs in its own process: it builds the B/14
pretrainer (the recipe's heads, head-only EMA, AdamW with its state built
up front), runs `--steps` train steps on one batch (224 px images, 2 local
crops of 98 px, 64-token texts) and reports:

* step_peak_mib: what the measured steps (all but the first, which
  compiles and allocates the gradients) add at their peak to the memory
  resident before them: the kernel's high-water mark (VmHWM, reset through
  /proc/self/clear_refs before the steps) minus VmRSS before them. Weights,
  optimizer state and gradients are resident before, so this is the
  activations and temporaries of forward and backward, what remat cuts.
  (Without building the optimizer first, the process's peak comes at the
  first step's update, where AdamW allocates its moments after the
  activations are gone, and hides the saving.)
* peak_rss_mib: the process's peak resident set size (`ru_maxrss`) over
  building and all steps. The cases run with glibc's mmap threshold fixed
  at 64 KiB (`MALLOC_MMAP_THRESHOLD_`): by default glibc raises the
  threshold after large blocks are freed and then serves large blocks from
  its heap, which keeps freed memory resident, so the peak RSS would count
  memory no longer in use. With the threshold fixed, every block above
  64 KiB is its own mapping, returned to the system when freed, and the
  peak RSS follows the memory in use (this slows the steps: the step times
  are for the comparison within a run only).
* grad_peak_mib (torch only): the same high-water mark over one forward
  and backward pass without the optimizer update, run after the steps:
  the activations and gradients, the part remat acts on. (AdamW's update
  needs temporaries of the size of the weights; where those are larger
  than the activations, they set the step's peak with or without remat.)
* built_rss_mib: the peak RSS before the first step (libraries, weights,
  optimizer state).
* xla_temp_mib (JAX only): the temporaries XLA's buffer assignment gives
  the compiled train step (`memory_analysis().temp_size_in_bytes`): what
  the step needs beyond weights, optimizer state and batch, the figure
  that decides whether a step fits an accelerator. On JAX the steps run
  that compiled step (compiled as `fit` compiles it, before the first
  step, so the peak RSS includes compiling); on torch and TensorFlow they
  run `train_on_batch`.
* xla_grad_temp_mib (JAX only): the same for the gradient alone (forward
  and backward, no optimizer update), the analogue of grad_peak_mib.

Usage (from the repository root):
    KERAS_BACKEND=torch python benchmarks/bench_remat.py --json remat_torch.json
    KERAS_BACKEND=jax python benchmarks/bench_remat.py --batch 4 --steps 2
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402
from bench_train import HEADS  # noqa: E402
from bench_train import backbone_kwargs  # noqa: E402
from bench_train import make_batch  # noqa: E402

MMAP_THRESHOLD = 64 * 1024


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_mib(field):
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak():
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def jax_step(model, batch):
    """(run_one_step, MiB of XLA temporaries): the JAX train step compiled
    as `fit` compiles it (state donated), and what XLA's buffer assignment
    gives it for temporaries."""
    import jax

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    compiled = jax.jit(model.train_step, donate_argnums=0).lower(state, batch).compile()

    def run_one_step():
        nonlocal state
        logs, state = compiled(state, batch)
        return jax.block_until_ready(logs)  # JAX dispatches asynchronously

    return run_one_step, compiled.memory_analysis().temp_size_in_bytes / 2**20


def xla_gradient_temp_mib(model, batch):
    """XLA's temporaries for one forward and backward pass (JAX), the train
    step without the optimizer update: the analogue of grad_peak_mib."""
    import jax

    def loss(trainable, non_trainable):
        (total, _), _, _ = model._stateless(
            trainable, non_trainable, lambda: model.compute_losses(batch, training=True)
        )
        return total

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    compiled = jax.jit(jax.grad(loss)).lower(trainable, non_trainable).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def torch_gradient_peak_mib(model, batch):
    """What one forward and backward pass (the train step without the
    optimizer update) adds at its peak to the memory resident before it
    (torch): the part of the step that remat changes. The update comes
    after the activations are freed, so when its own temporaries are the
    larger, the whole step's peak hides the saving."""
    model.zero_grad()  # frees the last step's gradients
    before = status_mib("VmRSS")
    reset_peak()
    total, _ = model.compute_losses(batch, training=True)
    total.backward()
    peak = status_mib("VmHWM") - before
    model.zero_grad()
    return peak


def run_case(args):
    """One case in this process; prints one ROW line of JSON."""
    import keras

    from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
    from keras_tipsv2.training import TIPSv2Pretrainer

    keras.utils.set_random_seed(0)
    backbone = TIPSv2Backbone(**backbone_kwargs("b14"), vision_remat=args.remat)
    model = TIPSv2Pretrainer(backbone, ema="head", seed=0, **HEADS["b14"])
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.05))
    batch = make_batch("b14", args.batch, 224, 2, 64)
    model.optimizer.build(model.trainable_variables)
    built = peak_rss_mib()
    row = dict(remat=args.remat, backend=keras.backend.backend(), batch=args.batch)
    if keras.backend.backend() == "jax":
        run_one_step, row["xla_temp_mib"] = jax_step(model, batch)
    else:
        run_one_step = lambda: model.train_on_batch(batch, return_dict=True)  # noqa: E731
    times = []
    for step in range(args.steps):
        if step == 1:
            before = status_mib("VmRSS")
            reset_peak()
        start = time.perf_counter()
        logs = run_one_step()
        times.append(time.perf_counter() - start)
    row.update(
        built_rss_mib=built, peak_rss_mib=peak_rss_mib(), step_peak_mib=status_mib("VmHWM") - before,
        first_s=times[0], last_s=times[-1], loss=float(logs["loss"]),
    )  # fmt: skip
    if keras.backend.backend() == "torch":
        row["grad_peak_mib"] = torch_gradient_peak_mib(model, batch)
    if keras.backend.backend() == "jax":
        row["xla_grad_temp_mib"] = xla_gradient_temp_mib(model, batch)
    print("ROW " + json.dumps(row), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--case", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is not measured")
    if args.case:
        args.remat = args.case == "on"
        return run_case(args)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    rows = []
    for case in ("off", "on"):
        cmd = [sys.executable, os.path.abspath(__file__), "--case", case,
               "--batch", str(args.batch), "--steps", str(args.steps)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in out.stdout.splitlines() if line.startswith("ROW ")]
        if out.returncode or not lines:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"case remat={case} failed (exit {out.returncode})")
        rows.append(json.loads(lines[-1][4:]))
        print(f"  remat={case:<3} peak {rows[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    off, on = rows
    for key in ("peak_rss_mib", "step_peak_mib", "grad_peak_mib", "xla_temp_mib", "xla_grad_temp_mib"):
        if key in off:
            on[key.replace("_mib", "_saved_mib")] = off[key] - on[key]
    print()
    c.print_table(rows, ["remat", "backend", "batch", "built_rss_mib", "peak_rss_mib", "step_peak_mib",
                         "step_peak_saved_mib", "grad_peak_mib", "grad_peak_saved_mib", "xla_temp_mib",
                         "xla_temp_saved_mib", "xla_grad_temp_mib", "xla_grad_temp_saved_mib", "first_s",
                         "last_s", "loss"])  # fmt: skip
    c.write_json(args.json, dict(machine=c.machine(), args=vars(args), rows=rows))


if __name__ == "__main__":
    main()
