"""python -m keras_tipsv2.convert: official / Hugging Face checkpoints -> KerasHub preset.

    python -m keras_tipsv2.convert --vision V.npz --text T.npz \
        [--tokenizer tokenizer.model] --output DIR
    python -m keras_tipsv2.convert --hf HF_CHECKPOINT_DIR --output DIR
    python -m keras_tipsv2.convert --dpt DECODER.zip --task depth \
        --backbone PRESET --output DIR

The official layout (PyTorch or Scenic) is detected from the keys and the
variant is inferred from the shapes. A DPT decoder (official Flax .zip, or a
transformers Tipsv2Dpt checkpoint directory) becomes a task preset on top
of a backbone preset.
"""

import argparse
import os
import sys

from keras_tipsv2.convert.preset_loader import OFFICIAL_TOKENIZER_URL, TOKENIZER_FILE


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_tipsv2.convert", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vision", help="official *_vision.npz (PyTorch or Scenic layout)")
    source.add_argument("--hf", help="a transformers TIPSv2 checkpoint directory")
    source.add_argument(
        "--dpt", help="a DPT decoder: official Flax .zip or transformers Tipsv2Dpt directory"
    )
    parser.add_argument("--task", choices=("depth", "normals", "segmentation"), help="with --dpt")
    parser.add_argument("--backbone", help="with --dpt: the backbone preset the decoder was trained on")
    parser.add_argument("--text", help="official *_text.npz (with --vision)")
    parser.add_argument(
        "--tokenizer",
        help="SentencePiece tokenizer.model to ship as a preset asset (default: "
        "tokenizer.model beside the checkpoint)",
    )
    parser.add_argument("--output", required=True, help="preset directory to write")
    parser.add_argument("--num-heads", type=int, help="heads, for widths that are not published TIPS widths")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    args = parser.parse_args(argv)
    if args.vision and not args.text:
        parser.error("--vision needs --text")
    if args.dpt and not (args.task and args.backbone):
        parser.error("--dpt needs --task and --backbone")
    return args


def convert_dpt(args):
    import json

    from keras_tipsv2.convert import dpt
    from keras_tipsv2.convert.preset import write_task_preset
    from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone

    backbone = TIPSv2Backbone.from_preset(args.backbone)
    if os.path.isdir(args.dpt):
        from keras_tipsv2.convert.hf import open_safetensors

        with open(os.path.join(args.dpt, "config.json")) as f:
            config = json.load(f)
        weights = open_safetensors(args.dpt)
        # The image tower in these files duplicates the backbone preset's.
        state = {
            k: weights[k] for k in weights.keys()
            if not k.startswith(("vision_encoder.", "backbone."))
        }
        task = dpt.dense_task_from_hf(config, state, args.task, backbone)
    else:
        task = dpt.dense_task_from_flax_zip(args.dpt, args.task, backbone)
    path = write_task_preset(task, args.output, overwrite=args.overwrite)
    print(f"Wrote {path}: {args.task} DPT head on {args.backbone}.")
    return path


def found_tokenizer(args):
    """--tokenizer, else a tokenizer.model beside the checkpoint (for the
    npz pair also one folder up, where the official release keeps it)."""
    if args.tokenizer:
        return args.tokenizer
    if args.hf:
        places = [args.hf]
    else:
        here = os.path.dirname(os.path.abspath(args.vision))
        places = [here, os.path.dirname(here)]
    for place in places:
        candidate = os.path.join(place, TOKENIZER_FILE)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(
        f"No {TOKENIZER_FILE} in {' or '.join(places)}: pass --tokenizer "
        f"{TOKENIZER_FILE} (the official file: {OFFICIAL_TOKENIZER_URL})."
    )


def checked_tokenizer(path):
    """`path`, if it holds a SentencePiece model; else a ValueError naming it."""
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=path)
    except Exception as e:  # sentencepiece's errors name no file
        raise ValueError(f"{path} is not a SentencePiece tokenizer model: {e}") from e
    return path


def convert(args):
    if args.dpt:
        return convert_dpt(args)
    from keras_tipsv2.convert.hf import read_hf_dir
    from keras_tipsv2.convert.loading import backbone_from_checkpoint
    from keras_tipsv2.convert.official import load_npz, read_official
    from keras_tipsv2.convert.preset import write_preset
    from keras_tipsv2.convert.preset_loader import read_json

    if args.hf:
        checkpoint = read_hf_dir(args.hf)
        vision_config = read_json(os.path.join(args.hf, "config.json")).get("vision_config") or {}
        image_size = int(vision_config.get("image_size", 448))
    else:
        vision, text = load_npz(args.vision), load_npz(args.text)
        checkpoint = read_official(
            vision,
            text,
            source=f"{os.path.basename(args.vision)} / {os.path.basename(args.text)}",
            num_heads=args.num_heads,
        )
        # The position table covers the training resolution.
        image_size = checkpoint.config["vision_position_grid"][0] * checkpoint.config.get(
            "vision_patch_size", 14
        )
    tokenizer = checked_tokenizer(found_tokenizer(args))
    backbone = backbone_from_checkpoint(checkpoint)
    path = write_preset(
        backbone, args.output, tokenizer, image_size=image_size, overwrite=args.overwrite
    )
    print(
        f"Wrote {path}: {checkpoint.source}, {backbone.count_params():,} parameters, "
        f"vision {backbone.vision_num_layers}x{backbone.vision_hidden_dim} at "
        f"{image_size} px, text {backbone.text_num_layers}x{backbone.text_hidden_dim}, "
        f"tokenizer {tokenizer}."
    )
    return path


def main(argv=None):
    """Runs the conversion; returns the exit status (errors as one line)."""
    from keras_tipsv2.utils.cli import run

    return run(lambda a: convert(parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
