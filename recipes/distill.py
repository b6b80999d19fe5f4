"""Distil a smaller TIPSv2 student from a frozen teacher with `model.fit`.

The TIPSv2 recipe for its small models (TIPSv2, arXiv 2604.12012): frozen
teacher, randomly initialised student, no masking, a loss on every patch
token and on the CLS tokens, plus the image-text contrastive loss against
the teacher's (frozen) text tower. The student is exported as a KerasHub
preset (backbone + the teacher's tokenizer + an image converter at the
training resolution) in OUTPUT/preset.

    python recipes/distill.py --teacher runs/pretrain_tiny/preset            # tiny student, ShapesWorld
    python recipes/distill.py --teacher tipsv2_l14 --student-config b14 \\
        --manifest data.jsonl --image-size 224 --output runs/b14_from_l14
    python recipes/distill.py --teacher PRESET --student-config s14 --mode features --text-tower student
    python recipes/distill.py --teacher PRESET --student-init tipsv2_b14    # pretrained init instead

Data sources, logging (progress bar, CSV, TensorBoard), checkpoints and
step-exact resume are the pretraining recipe's (`common.py` beside this
script, `keras_tipsv2.training.resumable_fit`): kill the run and start the
same command again to resume; a folder made with other flags is refused.

Student variants (`STUDENT_VARIANTS`) fix the towers' shapes, or take the
teacher's architecture ("teacher") or the teacher's at half its width
("half-width"), randomly initialised either way; the patch size, position
grid and text length come from the teacher, so the student reads the same
images and tokens. With the teacher's text tower (the
default when the student has the teacher's width) the exported preset pairs
the student's image tower with the teacher's text tower; a narrower student
trains and exports its own text tower (--text-tower auto picks).

--patch-supervision picks the student patch tokens the patch loss trains:
all of them (the recipe), or with --mask-ratio > 0 only the masked ones
(iBOT-style) or only the visible ones, the comparison behind the paper's
finding that supervising every patch is what lets the student beat its
teacher (`python recipes/ablate.py --study distillation` runs it).

On ShapesWorld (no data flag) the student trains on the world of the tiny
pretraining config (the shipped `tipsv2_tiny_shapes` preset's), and the run
ends with `pretrain.py`'s held-out report for the student beside its
teacher, on the same images: zero-shot segmentation mIoU per vocabulary
(TIPS protocol and without the residual, with the floor and the patch
oracle), zero-shot classification, retrieval R@1 (report.md,
results.json).
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
from keras_tipsv2.data import make_pretraining_dataset  # noqa: E402
from keras_tipsv2.data import tf_data_tokenizer  # noqa: E402
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone  # noqa: E402
from keras_tipsv2.training import resumable_fit  # noqa: E402
from keras_tipsv2.training.distiller import PATCH_SUPERVISIONS  # noqa: E402
from keras_tipsv2.training.distiller import TIPSv2Distiller  # noqa: E402
from keras_tipsv2.utils import atomic_files  # noqa: E402

import common  # noqa: E402  (recipes/common.py, beside this script)
import pretrain  # noqa: E402  (the tiny config's ShapesWorld)

# Tower shapes: (width, depth, heads, MLP width, text depth).
STUDENT_VARIANTS = {
    "tiny": (64, 2, 4, 256, 1),
    "s14": (384, 12, 6, 1536, 12),
    "b14": (768, 12, 12, 3072, 12),
    "l14": (1024, 24, 16, 4096, 12),
    "so400m14": (1152, 27, 16, 4304, 27),
}
# Students shaped after the teacher: its architecture, or at half its width.
TEACHER_SHAPED = ("teacher", "half-width")
# Students narrower than this take the SMALL (CPU) schedule.
SMALL_WIDTH = 256
# The training schedule and head of each scale.
SMALL = dict(
    batch_size=64, steps_per_epoch=50, epochs=10, learning_rate=2e-3, train_samples=4096,
    head=dict(head_hidden_dim=1024, head_bottleneck_dim=128, num_prototypes=1024),
)  # fmt: skip
LARGE = dict(
    batch_size=1024, steps_per_epoch=1250, epochs=100, learning_rate=1e-3, train_samples=65536,
    head=dict(head_hidden_dim=2048, head_bottleneck_dim=256, num_prototypes=32768),
)  # fmt: skip
# --quick: an end-to-end smoke run in seconds (tests, CI).
QUICK = dict(
    batch_size=4, steps_per_epoch=2, epochs=2, learning_rate=1e-3, train_samples=16,
    head=dict(head_hidden_dim=32, head_bottleneck_dim=16, num_prototypes=64),
)  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher", required=True, help="teacher preset (name or local dir)")
    parser.add_argument("--student-config", choices=sorted(STUDENT_VARIANTS) + list(TEACHER_SHAPED), default="tiny",
                        help="a fixed shape, or the teacher's architecture ('teacher') or at half its width, random init")
    parser.add_argument("--student-init", help="initialise the student from this preset instead (overrides --student-config)")
    parser.add_argument("--mode", choices=["head", "features"], default="head")
    parser.add_argument("--feature-loss", choices=["cosine", "smooth_l1"], default="cosine")
    parser.add_argument("--text-tower", choices=["auto", "teacher", "student"], default="auto",
                        help="auto: the teacher's if the student has its width, else the student's own")
    parser.add_argument("--mask-ratio", type=float, default=0.0)
    parser.add_argument("--patch-supervision", choices=list(PATCH_SUPERVISIONS), default="all",
                        help="student patch tokens the patch loss trains; 'masked' / 'visible' need --mask-ratio > 0")
    parser.add_argument("--patch-weight", type=float, default=2.0,
                        help="weight of the patch loss (the recipe's 2; 0 distils the CLS tokens only, a control)")
    parser.add_argument("--caption-sampling", choices=["multi", "alt_text_only"], default="multi")
    parser.add_argument("--image-size", type=int, help="student resolution (default: the teacher preset's converter size, else 224)")
    parser.add_argument("--teacher-image-size", type=int, help="teacher resolution (default: the student's)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int, help="train this many steps (rounded up to whole epochs)")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--output", default=None,
                        help="run folder (default runs/distill, runs/distill_quick with --quick)")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder's checkpoint and start over")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: 1/2 epoch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1, help="fit's verbosity (1: progress bar)")
    parser.add_argument("--eval-images", type=int, default=200, help="held-out ShapesWorld images to score")
    parser.add_argument("--no-eval", action="store_true", help="skip the ShapesWorld report")
    common.add_data_arguments(parser)
    args = parser.parse_args(argv)
    common.check_data_arguments(parser, args)
    if args.patch_supervision != "all" and args.mask_ratio <= 0:
        parser.error(f"--patch-supervision {args.patch_supervision} needs --mask-ratio > 0")
    return args


def run_config(args, student_width):
    """Schedule and head of this run: by student width, --quick, overrides."""
    if args.quick:
        config = json.loads(json.dumps(QUICK))
    elif student_width < SMALL_WIDTH:
        config = json.loads(json.dumps(SMALL))
    else:
        config = json.loads(json.dumps(LARGE))
    for key in ("batch_size", "learning_rate"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.steps is not None:
        config["epochs"] = max(1, -(-args.steps // config["steps_per_epoch"]))
    return config


# --- Models -------------------------------------------------------------------


def student_backbone(args, teacher, proto):
    """A fresh student of the chosen variant (shaped to read the teacher's
    images and tokens), or the --student-init preset."""
    if args.student_init:
        return TIPSv2Backbone.from_preset(args.student_init)
    if args.student_config in TEACHER_SHAPED:
        return teacher_shaped_student(teacher, proto, half_width=args.student_config == "half-width")
    width, depth, heads, mlp, text_depth = STUDENT_VARIANTS[args.student_config]
    return TIPSv2Backbone(
        vision_patch_size=teacher.vision_patch_size,
        vision_hidden_dim=width,
        vision_num_layers=depth,
        vision_num_heads=heads,
        vision_intermediate_dim=mlp,
        vision_position_grid=teacher.vision_position_grid,
        text_vocabulary_size=max(teacher.text_vocabulary_size, common.proto_vocabulary_size(proto)),
        text_hidden_dim=width,
        text_num_layers=text_depth,
        text_num_heads=heads,
        text_intermediate_dim=mlp,
        text_max_sequence_length=teacher.text_max_sequence_length,
    )


def teacher_shaped_student(teacher, proto, half_width):
    """A randomly initialised backbone of the teacher's config (LayerScale
    and all), both towers at half the width and MLP width if asked."""
    config = teacher.get_config()
    config.pop("name", None)
    config["text_vocabulary_size"] = max(
        teacher.text_vocabulary_size, common.proto_vocabulary_size(proto)
    )
    if half_width:
        for tower in ("vision", "text"):
            width = config[f"{tower}_hidden_dim"] // 2
            if width % config[f"{tower}_num_heads"]:
                raise SystemExit(
                    f"--student-config half-width: the {tower} tower's half width "
                    f"{width} does not split into its {config[f'{tower}_num_heads']} heads."
                )
            config[f"{tower}_hidden_dim"] = width
            config[f"{tower}_intermediate_dim"] //= 2
    return TIPSv2Backbone.from_config(config)


def chosen_text_tower(args, teacher, student):
    """--text-tower, with "auto" resolved. Fails before training, not after,
    when the student could not be exported as a standalone backbone."""
    same_width = student.vision_hidden_dim == teacher.vision_hidden_dim
    if args.text_tower == "auto":
        return "teacher" if same_width else "student"
    if args.text_tower == "teacher" and not same_width:
        raise SystemExit(
            f"--text-tower teacher needs a student of the teacher's width "
            f"({teacher.vision_hidden_dim}) to export a preset that pairs the "
            f"student's image tower with the teacher's text tower; this student "
            f"is {student.vision_hidden_dim} wide. Use --text-tower student."
        )
    return args.text_tower


def build_distiller(args, config, teacher, student, text_tower, plan):
    model = TIPSv2Distiller(
        teacher,
        student,
        mode=args.mode,
        text_tower=text_tower,
        feature_loss=args.feature_loss,
        mask_ratio=args.mask_ratio,
        patch_supervision=args.patch_supervision,
        patch_weight=args.patch_weight,
        caption_sampling=args.caption_sampling,
        teacher_image_size=args.teacher_image_size,
        seed=args.seed,
        **config["head"],
    )
    total = plan["epochs"] * plan["steps_per_epoch"]
    warmup = int(0.1 * total)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total - warmup),
        warmup_target=config["learning_rate"],
        warmup_steps=warmup,
        alpha=0.01,
    )
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay))
    return model


# --- Data ---------------------------------------------------------------------


def training_image_size(args, teacher):
    """--image-size, else the teacher preset's converter size, else 224;
    --quick: four patches a side."""
    if args.image_size:
        return args.image_size
    if args.quick:
        return 4 * teacher.vision_patch_size
    from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter

    try:
        size = TIPSv2ImageConverter.from_preset(args.teacher).image_size
    except Exception:  # no converter in the preset: the backbone's default
        return 224
    return int(size[0]) if size else 224


def teacher_tokenizer_proto(args):
    if args.tokenizer:
        return common.read_bytes(args.tokenizer)
    try:
        return common.preset_tokenizer_proto(args.teacher)
    except Exception as error:
        raise SystemExit(
            f"The teacher preset {args.teacher!r} has no readable tokenizer "
            f"({error}); pass --tokenizer MODEL.spm."
        ) from error


def epoch_datasets(args, source, tokenizer, config, image_size, skip_counter=None):
    """`epoch -> dataset`: the batches of epoch e depend only on (seed, e)."""
    shapes = common.uses_shapes(args)

    def epoch_dataset(epoch):
        return make_pretraining_dataset(
            source,
            tokenizer,
            batch_size=config["batch_size"],
            image_size=image_size,
            caption_mode=args.caption_sampling,
            seed=resumable_fit.epoch_seed(args.seed, epoch),
            crop_scale=(0.6, 1.0),
            # ShapesWorld's captions name colours and left / right.
            horizontal_flip=not shapes,
            colour_jitter=not shapes,
            repeat=True,
            shuffle_buffer=4096,
            skip_counter=skip_counter,
        )

    return epoch_dataset


# --- Held-out report -----------------------------------------------------------


def shapes_config(image_size):
    """The tiny pretraining config's world at `image_size`, in the form
    `pretrain.shapes_world` reads: the world the shipped tiny preset saw."""
    return {"image_size": image_size, "world": pretrain.CONFIGS["tiny"]["world"]}


# The teacher is frozen: the runs of one process (an ablation's) score it
# once per (teacher, image size, image count).
_TEACHER_EVALUATIONS = {}


def held_out_evaluation(args, teacher, student, proto, image_size):
    """{"student", "teacher"}: `evaluate_on_shapes` results of both on the
    same held-out images of the training world."""
    from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
    from keras_tipsv2.shapes.benchmark import evaluate_on_shapes

    tokenizer = TIPSv2Tokenizer(proto=proto, sequence_length=teacher.text_max_sequence_length)
    held_out = pretrain.shapes_world(shapes_config(image_size), "validation")
    num_images = 4 if args.quick else args.eval_images
    key = (os.path.abspath(args.teacher) if os.path.isdir(args.teacher) else args.teacher,
           image_size, num_images)  # fmt: skip
    if key not in _TEACHER_EVALUATIONS:
        _TEACHER_EVALUATIONS[key] = evaluate_on_shapes(teacher, tokenizer, held_out, num_images)
    return {
        "student": evaluate_on_shapes(student, tokenizer, held_out, num_images),
        "teacher": _TEACHER_EVALUATIONS[key],
    }


def held_out_report(evaluation, info):
    from keras_tipsv2.shapes.benchmark import markdown_comparison

    supervision = f"{info['patch_supervision']} patch tokens supervised"
    if not info["patch_weight"]:
        supervision = "no patch loss"
    if info["mask_ratio"]:
        supervision += f", {info['mask_ratio']:g} of the student's patches masked"
    return markdown_comparison(
        {"student": evaluation["student"], "teacher": evaluation["teacher"]},
        title=f"Distilled from {info['teacher']}: held-out ShapesWorld",
    ) + (
        f"\n**Training**: student {info['student']} ({supervision}); "
        f"{info['steps']} steps of batch {info['batch_size']} at "
        f"{info['image_size']} px, backend {info['backend']}; image-tower parameters "
        f"{info['vision_parameters']['student']:,} (student) vs "
        f"{info['vision_parameters']['teacher']:,} (teacher).\n"
    )


# --- Main ---------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    output = args.output or common.default_output("distill", args.quick)
    backup_dir = common.start_run_folder(output, args.fresh)
    proto = teacher_tokenizer_proto(args)
    keras.utils.set_random_seed(args.seed)
    teacher = TIPSv2Backbone.from_preset(args.teacher)
    student = student_backbone(args, teacher, proto)
    # The schedule depends on the student's width: the models come first.
    config = run_config(args, student.vision_hidden_dim)
    settings = common.run_settings(args, config)
    with common.refusing_other_runs(output):
        plan = resumable_fit.stored_plan(backup_dir, settings)
    if plan is None:
        schedule = {"steps_per_epoch": config["steps_per_epoch"], "epochs": config["epochs"]}
        plan = resumable_fit.save_plan(backup_dir, schedule, settings)
    text_tower = chosen_text_tower(args, teacher, student)
    model = build_distiller(args, config, teacher, student, text_tower, plan)
    image_size = training_image_size(args, teacher)
    # After the last reseed: tf.random.set_seed frees the tokenizer's op.
    tokenizer = tf_data_tokenizer(proto, teacher.text_max_sequence_length)
    world = pretrain.shapes_world(shapes_config(image_size), "train", seed=args.seed)
    source = common.raw_source(args, world, config["train_samples"])
    skips = common.skip_counter()
    total = plan["epochs"] * plan["steps_per_epoch"]
    print(f"Distilling {total} steps at {image_size} px into {output}")
    start_time = time.perf_counter()
    with common.refusing_other_runs(output), common.data_errors(skips):
        result = resumable_fit.fit_resumable(
            model,
            epoch_datasets(args, source, tokenizer, config, image_size, skips),
            epochs=plan["epochs"],
            steps_per_epoch=plan["steps_per_epoch"],
            backup_dir=backup_dir,
            save_every=args.checkpoint_every or max(1, plan["steps_per_epoch"] // 2),
            callbacks=common.logging_callbacks(output) + [common.SkipReport(skips)],
            verbose=args.verbose,
        )
    seconds = time.perf_counter() - start_time
    trained = result["end_step"] - result["start_step"]
    distilled = model.student_backbone()
    preset = common.export_preset(
        distilled, os.path.join(output, "preset"), proto, image_size
    )
    info = {
        "teacher": args.teacher,
        "student": args.student_init or args.student_config,
        "mode": args.mode,
        "text_tower": text_tower,
        "mask_ratio": args.mask_ratio,
        "patch_supervision": args.patch_supervision,
        "patch_weight": args.patch_weight,
        "backend": keras.backend.backend(),
        "steps": total,
        "batch_size": config["batch_size"],
        "image_size": image_size,
        "start_step": result["start_step"],
        "train_seconds": seconds,
        "seconds_per_step": seconds / trained if trained else None,
        "final_logs": common.final_logs(result),
        "skipped_examples": common.skip_totals(skips),
        "vision_parameters": {
            "student": distilled.vision_encoder.count_params(),
            "teacher": teacher.vision_encoder.count_params(),
        },
    }
    evaluation = None
    if common.uses_shapes(args) and not args.no_eval:
        evaluation = held_out_evaluation(args, teacher, distilled, proto, image_size)
    common.write_results(output, {"train": info, "evaluation": evaluation})
    print(f"Student preset written to {preset}")
    if evaluation is not None:
        report = held_out_report(evaluation, info)
        atomic_files.write_text(os.path.join(output, "report.md"), report)
        print(report)
    return {"output": output, "preset": preset, "train": info, "evaluation": evaluation}


if __name__ == "__main__":
    from keras_tipsv2.utils.cli import run

    sys.exit(run(main))
