"""Pretrain a TIPSv2 model (contrastive + DINO + iBOT++, head-only EMA) with `model.fit`.

With no arguments: the tiny config on ShapesWorld, about ten minutes on a
2-core CPU, then the held-out ShapesWorld benchmark; everything lands in
runs/pretrain_tiny (preset, report, pictures, CSV + TensorBoard logs,
checkpoint). Kill it at any time and run the same command again: it resumes
at the step it reached and ends with the weights an uninterrupted run would
have; a folder made with other flags is refused (pass --fresh or another
--output).

    python recipes/pretrain.py                          # tiny, ShapesWorld, ~10 min
    python recipes/pretrain.py --quick                  # seconds, into runs/pretrain_tiny_quick
    python recipes/pretrain.py --steps 2000             # a fixed step count instead
    python recipes/pretrain.py --manifest data.jsonl --config b14 --output runs/b14
    python recipes/pretrain.py --coco captions.json --coco-images train2017/ --config b14
    python recipes/pretrain.py --init-from tipsv2_b14 --manifest data.jsonl --config b14

Configs are code (`CONFIGS` below): "tiny" for CPUs, "b14" and "l14" for
accelerators (on JAX, `--data-parallel` / `--model-parallel N` spread them
over devices with `keras.distribution`).

Why the tiny config looks the way it does (small studies on ShapesWorld): patch-text alignment of object identity only emerges when an object
covers several patches, so 64 px images with patch 8 and objects of radius
20-40 % of the side (1.6-3.2 patches). The world names the background in
its short captions and alt-text (`describe_background`): otherwise the
"background" prompt of every vocabulary is never trained and the model never
predicts it (600 steps on a GPU: colour mIoU 11.6 -> 19.5). But a word that
every caption carries is weak evidence for a contrastive loss, so 30 % of
the training images are empty textured backgrounds captioned "an empty
striped background" (`empty_fraction`; the held-out benchmark keeps its
images with objects). Over three seeds of 950 CPU steps this moved colour
mIoU 13.9 +- 3.1 -> 17.9 +- 1.1 (values) and 12.3 +- 2.4 -> 16.8 +- 2.0 (no
residual). What still held it back: after four layers every patch token
was the image's mean (cosine 0.997 between a background and an object
patch of one image), so background patches took the object's colour. The
image tower therefore starts its LayerScale gammas at 1e-5 (DINOv2's init;
TIPSv2's own towers have none): each token begins as its own patch
embedding and the blocks mix only as much as the losses ask for. That
alone lifted colour mIoU without the residual from 16.8 to 35.5 over three
seeds, but not the TIPS protocol (17.5), which keeps the last block's
residual: after 750 steps the gammas were still ~0.01, so the residual,
which no loss aligns with text, outweighed the value path. So the last
block starts at 1.0 (`vision_layer_scale_init=[1e-5, 1e-5, 1e-5, 1.0]`):
near-identity early blocks hand it almost raw patch embeddings, and its
full-strength value path is what the contrastive loss trains (benchmarks/RESULTS.md:
colour ~6x the all-background floor on both protocols).
The contrastive loss does most of the work in ten minutes, while DINO / iBOT++ start from
random prototypes and pay off later, so their weights are cut to 0.1 and 0.2
(the recipe's 1:2 ratio kept; 600 steps, colour 19.5 against 13.7 with 0.25 /
0.5), the teacher temperature warms up over the first third of training and
the prototypes stay frozen for the first epoch; the head is small (512
hidden, 128 bottleneck, 1024 prototypes) because on a CPU the head's logits
over B x 64 patches cost as much as the tower.

`--pipeline python` swaps tf.data for `ShapesWorldBatches` (NumPy + PIL), for
machines without TensorFlow; `--set key=value` overrides any config entry.
"""

import argparse
import json
import os
import sys
import time

import keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# common.py beside this script, also when it is imported from elsewhere.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras_tipsv2  # noqa: E402,F401  (registers the classes for from_preset)
from keras_tipsv2.shapes import ShapesWorld  # noqa: E402
from keras_tipsv2.shapes import ShapesWorldBatches  # noqa: E402
from keras_tipsv2.shapes.tokenizer import train_shapes_tokenizer  # noqa: E402
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone  # noqa: E402
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer  # noqa: E402
from keras_tipsv2.training import TIPSv2Pretrainer  # noqa: E402
from keras_tipsv2.training import resumable_fit  # noqa: E402
from keras_tipsv2.utils import atomic_files  # noqa: E402

import common  # noqa: E402  (recipes/common.py, beside this script)


def _vit(width, depth, heads, text_depth, patch, grid, vocabulary, text_length):
    return dict(
        vision_patch_size=patch,
        vision_hidden_dim=width,
        vision_num_layers=depth,
        vision_num_heads=heads,
        vision_intermediate_dim=4 * width,
        vision_position_grid=(grid, grid),
        text_vocabulary_size=vocabulary,
        text_hidden_dim=width,
        text_num_layers=text_depth,
        text_num_heads=heads,
        text_intermediate_dim=4 * width,
        text_max_sequence_length=text_length,
    )


CONFIGS = {
    # A 2-core CPU, ~10 minutes (see the module docstring for the numbers).
    "tiny": dict(
        # LayerScale from 1e-5 (DINOv2's init) except the last block, which
        # starts at 1.0 (the module docstring says why).
        backbone=dict(
            _vit(128, 4, 4, 2, patch=8, grid=8, vocabulary=256, text_length=48),
            vision_layer_scale=True,
            vision_layer_scale_init=[1e-5, 1e-5, 1e-5, 1.0],
        ),
        image_size=64,
        world=dict(
            radius_range=(0.2, 0.4), num_objects=(1, 3), describe_background=True, empty_fraction=0.3
        ),
        train_samples=4096,
        batch_size=64,
        steps_per_epoch=50,
        epochs=12,
        learning_rate=2e-3,
        weight_decay=0.05,
        warmup_fraction=0.1,
        num_local_crops=0,
        local_crop_size=32,
        crop_scale=(0.6, 1.0),
        pretrainer=dict(
            head_hidden_dim=512,
            head_bottleneck_dim=128,
            num_prototypes=1024,
            ema_momentum=0.99,
            contrastive_weight=1.0,
            dino_weight=0.1,
            patch_weight=0.2,
            warmup_teacher_temperature=0.04,
            teacher_temperature=0.07,
        ),
        teacher_warmup_fraction=1 / 3,
        freeze_last_layer_epochs=1,
        tokenizer_vocabulary=256,
    ),
    # ViT-B/14 (the released TIPSv2-B/14: 768 wide, 12 layers; 12-layer text tower).
    "b14": dict(
        backbone=_vit(768, 12, 12, 12, patch=14, grid=16, vocabulary=32000, text_length=64),
        image_size=224,
        world=dict(radius_range=(0.15, 0.35), num_objects=(1, 4)),
        train_samples=65536,
        batch_size=1024,
        steps_per_epoch=1250,
        epochs=100,
        learning_rate=1e-3,
        weight_decay=0.05,
        warmup_fraction=0.1,
        num_local_crops=8,
        local_crop_size=98,
        crop_scale=(0.4, 1.0),
        pretrainer=dict(
            head_hidden_dim=2048,
            head_bottleneck_dim=256,
            num_prototypes=32768,
            ema_momentum=0.996,
        ),
        teacher_warmup_fraction=0.3,
        freeze_last_layer_epochs=1,
        tokenizer_vocabulary=750,
    ),
}

# ViT-L/14: 1024 wide, 24 layers, 16 heads; 12-layer text tower; the B/14
# schedule at half the learning rate.
CONFIGS["l14"] = dict(
    CONFIGS["b14"],
    backbone=_vit(1024, 24, 16, 12, patch=14, grid=16, vocabulary=32000, text_length=64),
    learning_rate=5e-4,
)

# --quick: an end-to-end smoke run in seconds (tests, CI).
QUICK = dict(
    backbone=dict(
        _vit(32, 2, 4, 1, patch=8, grid=4, vocabulary=128, text_length=64),
        vision_layer_scale=True,
        vision_layer_scale_init=[1e-5, 1.0],
    ),
    image_size=32,
    train_samples=64,
    batch_size=8,
    steps_per_epoch=2,
    epochs=2,
    pretrainer=dict(head_hidden_dim=32, head_bottleneck_dim=16, num_prototypes=64),
    tokenizer_vocabulary=128,
    tokenizer_samples=200,
    eval_images=4,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--output", default=None,
                        help="run folder (default runs/pretrain_CONFIG, runs/pretrain_CONFIG_quick with --quick)")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder's checkpoint and start over")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None,
                        help="time budget: measure a step, then plan whole epochs to fit (default 10 for tiny)")
    budget.add_argument("--steps", type=int, default=None, help="train this many steps (rounded up to whole epochs)")
    common.add_data_arguments(parser)
    parser.add_argument("--init-from", help="continue from a preset's backbone and tokenizer (new heads), or "
                        "from a finished run's folder (its heads too), with a new schedule")
    parser.add_argument("--image-size", type=int, help="override the config's training resolution")
    parser.add_argument("--batch-size", type=int, help="override the config's global batch size")
    parser.add_argument("--patch-loss", choices=["ibot++", "ibot"], default="ibot++")
    parser.add_argument("--ema", choices=["head", "full"], default="head")
    parser.add_argument("--caption-sampling", choices=["multi", "alt_text_only"], default="multi")
    parser.add_argument("--pipeline", choices=["tf.data", "python"], default="tf.data",
                        help="input pipeline; 'python' (ShapesWorld only) needs no TensorFlow")
    parser.add_argument("--workers", type=int, default=2, help="threads of the python pipeline")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set pretrainer.dino_weight=0.5 "
                             "--set world.describe_background=true (VALUE is JSON, else a string)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="compute in bfloat16 with float32 variables (keras mixed_bfloat16): TPUs, "
                        "GPUs and CPUs with bfloat16 units; the preset is written and scored in float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-images", type=int, default=200, help="held-out ShapesWorld images to score")
    parser.add_argument("--no-eval", action="store_true", help="skip the ShapesWorld benchmark")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 1/2 epoch)")
    parser.add_argument("--data-parallel", action="store_true", help="JAX: data parallelism over all devices")
    parser.add_argument("--model-parallel", type=int, default=0,
                        help="JAX: shard the towers over this many devices (model axis)")
    parser.add_argument("--verbose", type=int, default=1, help="fit's verbosity (1: progress bar)")
    args = parser.parse_args(argv)
    common.check_data_arguments(parser, args)
    if args.pipeline == "python" and not common.uses_shapes(args):
        parser.error("--pipeline python reads ShapesWorld only; use tf.data for your data")
    return args


def run_config(args):
    """The config dict of this run: the named config, --quick and overrides."""
    config = json.loads(json.dumps(CONFIGS[args.config]))  # a deep copy
    if args.quick:
        quick = json.loads(json.dumps(QUICK))
        config["pretrainer"].update(quick.pop("pretrainer"))
        config.update(quick)
    if args.image_size:
        config["image_size"] = args.image_size
    if args.batch_size:
        config["batch_size"] = args.batch_size
    config["pretrainer"].update(
        patch_loss=args.patch_loss, ema=args.ema, caption_sampling=args.caption_sampling
    )
    for assignment in args.set:
        apply_override(config, assignment)
    return config


def apply_override(config, assignment):
    """Sets `config[a][b] = value` from "a.b=value" (value parsed as JSON)."""
    key, separator, text = assignment.partition("=")
    if not separator:
        raise ValueError(f"--set expects KEY=VALUE; got {assignment!r}.")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
        if not isinstance(node.get(parent), dict):
            raise ValueError(f"--set {assignment!r}: {parent!r} is not a config section.")
        node = node[parent]
    node[leaf] = value


# --- Data and tokenizer ------------------------------------------------------


def shapes_world(config, split, seed=0):
    world = _tuples(config["world"])
    if split == "validation":
        # Empty images are a training aid; the benchmark scores images with
        # objects, the same held-out images as every earlier result.
        world.pop("empty_fraction", None)
    return ShapesWorld(image_size=config["image_size"], split=split, seed=seed, **world)


def _tuples(world):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in world.items()}


def tokenizer_proto(args, config, world, init_preset):
    """SentencePiece bytes: --tokenizer, the --init-from preset's, or one
    trained on ShapesWorld text."""
    if args.tokenizer:
        return common.read_bytes(args.tokenizer)
    if init_preset:
        return common.preset_tokenizer_proto(init_preset)
    return train_shapes_tokenizer(
        world,
        num_samples=config.get("tokenizer_samples", 2000),
        vocab_size=config["tokenizer_vocabulary"],
    )


def epoch_datasets(source, tokenizer, config, seed, shapes, skip_counter=None):
    """`epoch -> dataset`: the batches of epoch e depend only on (seed, e)."""

    from keras_tipsv2.data import make_pretraining_dataset

    def epoch_dataset(epoch):
        return make_pretraining_dataset(
            source,
            tokenizer,
            batch_size=config["batch_size"],
            image_size=config["image_size"],
            num_local_crops=config["num_local_crops"],
            local_crop_size=config["local_crop_size"],
            caption_mode=config["pretrainer"]["caption_sampling"],
            seed=resumable_fit.epoch_seed(seed, epoch),
            crop_scale=tuple(config["crop_scale"]),
            # ShapesWorld's captions name colours and left / right.
            horizontal_flip=not shapes,
            colour_jitter=not shapes,
            repeat=True,
            shuffle_buffer=4096,
            skip_counter=skip_counter,
        )

    return epoch_dataset


def step_batches(world, tokenizer, config, seed, workers):
    """`(first_step, count) -> ShapesWorldBatches`: the TensorFlow-free
    pipeline (--pipeline python), batches keyed by global step."""
    source = ShapesWorldBatches(
        world,
        tokenizer,
        batch_size=config["batch_size"],
        num_batches=1,
        image_size=config["image_size"],
        num_samples=config["train_samples"],
        caption_mode=config["pretrainer"]["caption_sampling"],
        crop_scale=tuple(config["crop_scale"]),
        num_local_crops=config["num_local_crops"],
        local_crop_size=config["local_crop_size"],
        seed=seed,
        workers=workers,
    )
    return source.steps


# --- Model ---------------------------------------------------------------------


def build_backbone(config, proto, init_preset):
    if init_preset:
        return TIPSv2Backbone.from_preset(init_preset)
    kwargs = dict(config["backbone"])
    vocabulary = common.proto_vocabulary_size(proto)
    kwargs["text_vocabulary_size"] = max(kwargs["text_vocabulary_size"], vocabulary)
    return TIPSv2Backbone(**kwargs)


def build_pretrainer(backbone, config, plan, seed):
    total = plan["epochs"] * plan["steps_per_epoch"]
    kwargs = dict(config["pretrainer"])
    kwargs["teacher_temperature_warmup_steps"] = int(config["teacher_warmup_fraction"] * total)
    kwargs["freeze_last_layer_steps"] = config["freeze_last_layer_epochs"] * plan["steps_per_epoch"]
    model = TIPSv2Pretrainer(backbone, seed=seed, **kwargs)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total - int(config["warmup_fraction"] * total)),
        warmup_target=config["learning_rate"],
        warmup_steps=int(config["warmup_fraction"] * total),
        alpha=0.01,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config["weight_decay"])
    )
    return model


def budget_minutes(args):
    """--minutes, or the tiny config's default budget of 10 minutes."""
    if args.minutes is None and args.steps is None and args.config == "tiny" and not args.quick:
        return 10.0
    return args.minutes


def planned_schedule(args, config, make_model, make_batch):
    """{"steps_per_epoch", "epochs"}: from --steps, --minutes (a step measured
    on `make_model()`, a throw-away model built only then) or the config."""
    steps_per_epoch = config["steps_per_epoch"]
    minutes = budget_minutes(args)
    if args.steps is not None:
        epochs = max(1, -(-args.steps // steps_per_epoch))
    elif minutes is not None:
        seconds = common.measured_seconds_per_step(make_model(), make_batch())
        epochs = common.steps_for_budget(seconds, minutes, steps_per_epoch)
        print(f"{seconds:.2f} s/step -> {epochs} epochs of {steps_per_epoch} steps in {minutes:g} min")
    else:
        epochs = config["epochs"]
    return {"steps_per_epoch": steps_per_epoch, "epochs": epochs}


# --- Evaluation and outputs ----------------------------------------------------


def evaluate_and_write(backbone, proto, config, args, output, train_info):
    from keras_tipsv2.shapes.benchmark import evaluate_on_shapes
    from keras_tipsv2.shapes.benchmark import markdown_report
    from keras_tipsv2.shapes.benchmark import save_pictures

    tokenizer = TIPSv2Tokenizer(proto=proto, sequence_length=config["backbone"]["text_max_sequence_length"])
    held_out = shapes_world(config, "validation")
    results = evaluate_on_shapes(
        backbone, tokenizer, held_out, num_images=config.get("eval_images", args.eval_images)
    )
    pictures = save_pictures(backbone, tokenizer, held_out, output, vocabulary="colour")
    common.write_results(output, {"train": train_info, "evaluation": results})
    report = markdown_report(results, title=f"TIPSv2 {args.config} pretrained on ShapesWorld")
    report += "\n" + training_summary(train_info) + "\n"
    report += "Pictures: " + ", ".join(os.path.basename(p) for p in pictures.values()) + "\n"
    atomic_files.write_text(os.path.join(output, "report.md"), report)
    return results, report


def training_summary(info):
    text = (
        f"**Training**: {info['steps']} steps of batch {info['batch_size']} at "
        f"{info['image_size']} px ({info['epochs']} epochs x {info['steps_per_epoch']}), "
        f"backend {info['backend']}, started in this process at step {info['start_step']}"
    )
    if info["seconds_per_step"] is None:
        return text + " (the checkpoint had finished training)."
    return text + (
        f"; {info['train_seconds']:.0f} s of training ({info['seconds_per_step']:.2f} s/step), "
        f"final loss {info['final_logs'].get('loss', float('nan')):.3f}."
    )


def float32_backbone(backbone):
    """`backbone` itself if it computes in float32, else a float32 copy.

    Mixed-precision variables are float32 already, so the copy holds the same
    numbers; the preset then loads and scores in float32 on any machine.
    """
    if backbone.dtype_policy.name == "float32":
        return backbone
    config = dict(backbone.get_config(), dtype="float32")
    copy = TIPSv2Backbone.from_config(config)
    copy.set_weights(backbone.get_weights())
    return copy


def apply_distribution(args):
    if not (args.data_parallel or args.model_parallel):
        return
    from keras_tipsv2.training.distribution import data_parallel
    from keras_tipsv2.training.distribution import model_parallel

    if args.model_parallel:
        model_parallel(args.model_parallel)
    else:
        data_parallel()


# --- Main ----------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    policy = keras.config.dtype_policy()
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        return run(args)
    finally:
        keras.config.set_dtype_policy(policy)


def run(args):
    config = run_config(args)
    output = args.output or common.default_output(f"pretrain_{args.config}", args.quick)
    backup_dir = common.start_run_folder(output, args.fresh)
    settings = common.run_settings(args, config)
    settings["flags"]["minutes"] = budget_minutes(args)
    # Refused before any slow work when the folder holds another run.
    with common.refusing_other_runs(output):
        plan = resumable_fit.stored_plan(backup_dir, settings)
    apply_distribution(args)
    shapes = common.uses_shapes(args)
    world = shapes_world(config, "train", seed=args.seed)
    # --init-from resolved once: the preset for backbone and tokenizer, and a
    # run folder's checkpoint (None for a preset) for the whole pretrainer.
    init_preset, init_weights = (
        common.init_sources(args.init_from) if args.init_from else (None, None)
    )
    proto = tokenizer_proto(args, config, world, init_preset)

    def fresh_model(plan):
        keras.utils.set_random_seed(args.seed)
        model = build_pretrainer(build_backbone(config, proto, init_preset), config, plan, args.seed)
        if init_weights:
            resumable_fit.load_weights_without_optimizer(model, init_weights)
        return model

    sequence_length = config["backbone"]["text_max_sequence_length"]
    skips = None if args.pipeline == "python" else common.skip_counter()

    def fresh_data(skip_counter):
        """(epoch_dataset, step_batches): one of them is None."""
        if args.pipeline == "python":
            tokenizer = TIPSv2Tokenizer(proto=proto, sequence_length=sequence_length)
            return None, step_batches(world, tokenizer, config, args.seed, args.workers)
        from keras_tipsv2.data import tf_data_tokenizer

        # After the last reseed: tf.random.set_seed (inside set_random_seed)
        # frees the tokenizer's SentencePiece resource.
        tokenizer = tf_data_tokenizer(proto, sequence_length)
        source = common.raw_source(args, world, config["train_samples"])
        return epoch_datasets(source, tokenizer, config, args.seed, shapes, skip_counter), None

    def first_batch():
        # Its own counter: what measuring reads is not part of the run.
        counter = common.skip_counter()
        epoch_dataset, batches = fresh_data(counter)
        if batches is not None:
            return batches(10**6, 1)[0]
        with common.data_errors(counter):
            return next(iter(epoch_dataset(10**6)))

    def measure_plan():
        return planned_schedule(
            args, config, lambda: fresh_model({"steps_per_epoch": 1, "epochs": 1}), first_batch
        )

    if plan is None:
        plan = resumable_fit.save_plan(backup_dir, measure_plan(), settings)
    model = fresh_model(plan)
    epoch_dataset, batches = fresh_data(skips)
    total = plan["epochs"] * plan["steps_per_epoch"]
    print(f"Training {total} steps ({plan['epochs']} epochs x {plan['steps_per_epoch']}) into {output}")
    start_time = time.perf_counter()
    callbacks = common.logging_callbacks(output)
    if skips is not None:
        callbacks.append(common.SkipReport(skips))
    with common.refusing_other_runs(output), common.data_errors(skips):
        result = resumable_fit.fit_resumable(
            model,
            epoch_dataset,
            epochs=plan["epochs"],
            steps_per_epoch=plan["steps_per_epoch"],
            backup_dir=backup_dir,
            save_every=args.checkpoint_every or max(1, plan["steps_per_epoch"] // 2),
            callbacks=callbacks,
            verbose=args.verbose,
            step_batches=batches,
        )
    seconds = time.perf_counter() - start_time
    trained = result["end_step"] - result["start_step"]
    info = {
        "config": args.config,
        "quick": args.quick,
        "backend": keras.backend.backend(),
        "steps": total,
        "epochs": plan["epochs"],
        "steps_per_epoch": plan["steps_per_epoch"],
        "batch_size": config["batch_size"],
        "image_size": config["image_size"],
        "start_step": result["start_step"],
        "train_seconds": seconds,
        "seconds_per_step": seconds / trained if trained else None,
        "final_logs": common.final_logs(result),
        "skipped_examples": common.skip_totals(skips),
        "parameter_counts": model.parameter_counts(),
        "pretrainer": config["pretrainer"],
        "world": config["world"],
        "pipeline": args.pipeline,
        "overrides": args.set,
        "init_from": args.init_from,
        "mixed_precision": args.mixed_precision,
    }
    backbone = float32_backbone(model.backbone)
    preset = common.export_preset(
        backbone, os.path.join(output, "preset"), proto, config["image_size"]
    )
    print(f"Preset written to {preset}")
    evaluation = None
    if shapes and not args.no_eval:
        evaluation, report = evaluate_and_write(backbone, proto, config, args, output, info)
        print(report)
    else:
        common.write_results(output, {"train": info})
    return {"output": output, "preset": preset, "train": info, "evaluation": evaluation}


if __name__ == "__main__":
    from keras_tipsv2.utils.cli import run

    sys.exit(run(main))
