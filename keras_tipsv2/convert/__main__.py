"""python -m keras_tipsv2.convert: official / Hugging Face checkpoints -> KerasHub preset.

    python -m keras_tipsv2.convert --vision V.npz --text T.npz \
        [--tokenizer tokenizer.model] --output DIR
    python -m keras_tipsv2.convert --hf HF_CHECKPOINT_DIR --output DIR

The official layout (PyTorch or Scenic) is detected from the keys and the
variant is inferred from the shapes.
"""

import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_tipsv2.convert", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vision", help="official *_vision.npz (PyTorch or Scenic layout)")
    source.add_argument("--hf", help="a transformers TIPSv2 checkpoint directory")
    parser.add_argument("--text", help="official *_text.npz (with --vision)")
    parser.add_argument("--tokenizer", help="SentencePiece tokenizer.model to ship as a preset asset")
    parser.add_argument("--output", required=True, help="preset directory to write")
    parser.add_argument("--num-heads", type=int, help="heads, for widths that are not published TIPS widths")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    args = parser.parse_args(argv)
    if args.vision and not args.text:
        parser.error("--vision needs --text")
    return args


def convert(args):
    from keras_tipsv2.convert.hf import read_hf_dir
    from keras_tipsv2.convert.loading import backbone_from_checkpoint
    from keras_tipsv2.convert.official import load_npz, read_official
    from keras_tipsv2.convert.preset import write_preset

    tokenizer = args.tokenizer
    if args.hf:
        checkpoint = read_hf_dir(args.hf)
        bundled = os.path.join(args.hf, "tokenizer.model")
        if tokenizer is None and os.path.exists(bundled):
            tokenizer = bundled
    else:
        vision, text = load_npz(args.vision), load_npz(args.text)
        checkpoint = read_official(
            vision, text, source=os.path.basename(args.vision), num_heads=args.num_heads
        )
    backbone = backbone_from_checkpoint(checkpoint)
    path = write_preset(backbone, args.output, tokenizer, overwrite=args.overwrite)
    print(
        f"Wrote {path}: {checkpoint.source}, {backbone.count_params():,} parameters, "
        f"vision {backbone.vision_num_layers}x{backbone.vision_hidden_dim}, "
        f"text {backbone.text_num_layers}x{backbone.text_hidden_dim}."
    )
    return path


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
