"""Where the torch backend's image-tower time goes, op by op, beside transformers'.

Runs the B/14 image tower of keras_tipsv2 (torch backend, eager, no_grad) and
transformers' Tipsv2Model vision tower on the same random weights and
images under `torch.profiler`, and prints each one's costliest aten ops
(self CPU time), so a gap between the two totals can be read off as ops.

Usage (from the repository root; KERAS_BACKEND is set to torch here):
    python benchmarks/profile_torch.py --size 224 --threads 1
    python benchmarks/profile_torch.py --quick      # tiny shapes, seconds

The machine is shared and noisy: compare ops within one run.
"""

import argparse
import os
import sys

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity  # noqa: E402
from torch.profiler import profile  # noqa: E402


def op_table(fn, top):
    """(total self seconds, [(op, calls, self seconds)]) of one profiled call."""
    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return total, [(e.key, e.count, e.self_cpu_time_total / 1e6) for e in ranked]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--top", type=int, default=10, help="ops listed per implementation")
    parser.add_argument("--quick", action="store_true", help="tiny shapes; runs in seconds")
    args = parser.parse_args()
    shape = c.TINY if args.quick else c.B14
    if args.quick:
        args.size, args.batch = 56, 2
    torch.set_num_threads(args.threads)
    hf = c.hf_model(shape).eval()
    ours = c.backbone_from(hf)
    images = np.random.default_rng(0).random((args.batch, args.size, args.size, 3)).astype("float32")
    channels_last = torch.from_numpy(images)
    pixels = channels_last.permute(0, 3, 1, 2).contiguous()

    def run_ours():
        with torch.no_grad():
            return ours.vision_encoder(channels_last)

    def run_hf():
        with torch.no_grad():
            return hf.vision_model(pixel_values=pixels).last_hidden_state

    print(f"B/14-shaped image tower, {args.size} px, batch {args.batch}, {args.threads} thread(s)")
    for name, fn in (("keras_tipsv2", run_ours), ("transformers", run_hf)):
        total, rows = op_table(fn, args.top)
        print(f"\n{name}: {total:.3f} s of op self time")
        for op, calls, seconds in rows:
            print(f"  {op:<52} {calls:5d} calls {seconds * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
