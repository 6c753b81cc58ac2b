"""Training commands: `fedpic pretrain`, `prior`, `personalize` and `evaluate` (centralized stages)."""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pic_core.atomic import atomic_write_text
from pic_core.config import Config, ConfigError, to_dict

from .common import add_common_options, config_from_args

if TYPE_CHECKING:  # torch-heavy types, imported where the commands run
    from pic_core.model import CropScorer

log = logging.getLogger("fedpic")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from pic_core.checkpoint import save_model
    from pic_core.data.sources import crop_sets_for_pretrain
    from pic_core.runtime import configure_runtime
    from pic_core.samples import SampleCache
    from pic_core.train import pretrain

    config = config_from_args(args)
    split_list = args.split_list or config.pre.split_list
    crop_sets = crop_sets_for_pretrain(args.data, skip_bad=getattr(args, "skip_bad", False),
                                       split_list=Path(split_list) if split_list else None)
    device = configure_runtime(config)
    model = _initial_model(args.init, config, device)
    cache = SampleCache(config.model.short_side)
    train_log = pretrain(model, crop_sets, config, cache, device)
    save_model(args.out, model, to_dict(config), "pre", {"train": train_log.as_dict(), "images": len(crop_sets)})
    log.info("pre: %d images, loss %s; wrote %s", len(crop_sets), train_log.summary(), args.out)
    return 0


def _cmd_prior(args: argparse.Namespace) -> int:
    from pic_core.checkpoint import save_model, save_user_state
    from pic_core.data import DataError
    from pic_core.data.sources import open_dataset
    from pic_core.runtime import configure_runtime
    from pic_core.samples import SampleCache
    from pic_core.train import train_prior

    config = config_from_args(args)
    device = configure_runtime(config)
    dataset = open_dataset(args.data, skip_bad=getattr(args, "skip_bad", False))
    users = {uid: dataset.user(uid).split("prior") for uid in dataset.user_ids}
    users = {uid: sets for uid, sets in users.items() if sets}
    if not users:
        raise DataError(f"{args.data}: no user has rows with split 'prior' (or without a split)")
    model = _initial_model(args.init, config, device)
    cache = SampleCache(config.model.short_side)
    train_log, deltas = train_prior(model, users, config, cache, device)
    save_model(args.out, model, to_dict(config), "prior", {"train": train_log.as_dict(), "users": len(users)})
    if args.user_states:
        for uid, delta in deltas.items():
            model.personal.reset()
            model.personal.delta.data.copy_(delta)
            save_user_state(Path(args.user_states) / f"{uid}.pt", model, uid, {"stage": "prior"})
    log.info("prior: %d users, loss %s; wrote %s", len(users), train_log.summary(), args.out)
    return 0


def _cmd_personalize(args: argparse.Namespace) -> int:
    from pic_core.checkpoint import load_model, save_model, save_user_state
    from pic_core.data import DataError
    from pic_core.data.sources import open_dataset
    from pic_core.runtime import configure_runtime
    from pic_core.samples import SampleCache
    from pic_core.train import finetune

    config = config_from_args(args)
    device = configure_runtime(config)
    if args.crops is None and args.data is None:
        raise ConfigError("personalize: give --data DIR with --user U (scored crops), --crops FILE "
                          "(the crops you made yourself), or both")
    if args.crops is not None:
        return _personalize_from_crops(args, config, device)
    if not args.user:
        raise ConfigError("personalize --data: --user U is required")
    if args.epochs is not None or args.lr is not None:
        raise ConfigError("personalize --data: --epochs/--lr are for --crops; use --set finetune.epochs=N "
                          "--set finetune.lr=X")
    model, _ = load_model(args.model, device)
    dataset = open_dataset(args.data, skip_bad=getattr(args, "skip_bad", False))
    sets = dataset.user(args.user).split("train")
    shots = args.shots if args.shots is not None else config.finetune.shots
    sets = sets[:shots] if shots else sets
    if not sets:
        raise DataError(f"{args.data}: user {args.user} has no rows with split 'train'")
    train_log = finetune(model, sets, config, SampleCache(config.model.short_side), device)
    save_user_state(args.out, model, args.user, {"shots": len(sets), "train": train_log.as_dict()})
    if config.finetune.mode == "full":
        model_out = Path(args.out).with_suffix(".model.pt")
        save_model(model_out, model, to_dict(config), "finetune-full", {"user": args.user})
        log.info("full fine-tuning changed the shared weights too: wrote %s", model_out)
    log.info("personalized %s on %d images in %.2fs; wrote %s", args.user, len(sets), train_log.seconds, args.out)
    return 0


def _scored_samples(args: argparse.Namespace, config: Config, model) -> list:
    """With --crops and --data: the user's scored `train` sets (up to finetune.shots), mixed in."""
    from pic_core.data import DataError
    from pic_core.data.sources import open_dataset
    from pic_core.samples import SampleCache

    if not args.user:
        raise ConfigError("personalize --crops with --data: --user U is required (whose scored crops to mix in)")
    sets = open_dataset(args.data, skip_bad=getattr(args, "skip_bad", False)).user(args.user).split("train")
    shots = args.shots if args.shots is not None else config.finetune.shots
    sets = sets[:shots] if shots else sets
    if not sets:
        raise DataError(f"{args.data}: user {args.user} has no rows with split 'train'")
    return SampleCache(model.config.short_side).samples(sets)


def _personalize_from_crops(args: argparse.Namespace, config: Config, device) -> int:
    """`fedpic personalize --crops FILE --model M --out STATE`."""
    from pic_core.checkpoint import load_model, save_user_state
    from pic_core.user_crops import FAST_EPOCHS, FAST_LR, personalize_from_crops, read_user_crops

    if config.finetune.mode != "fast":
        log.info("--crops always uses the fast path (personal parameters on cached features); "
                 "finetune.mode=%s is ignored", config.finetune.mode)
    crops = read_user_crops(args.crops)
    model, _ = load_model(args.model, device)
    scored = _scored_samples(args, config, model) if args.data is not None else []
    report = personalize_from_crops(model, crops, config, device, epochs=args.epochs or FAST_EPOCHS,
                                    lr=args.lr or FAST_LR, scored=scored)
    user_id = args.user or Path(args.crops).stem
    save_user_state(args.out, model, user_id, {"source": "crops", "crops_file": str(args.crops),
                                               "scored_images": len(scored)} | report.as_dict())
    log.info("personalized %s from %d crops on %d photos in %.2fs; top-1 IoU with your crops: generic %.2f -> "
             "personalized %.2f; wrote %s", user_id, report.crops, report.photos, report.train.seconds,
             report.top1_iou_generic, report.top1_iou_personal, args.out)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pic_core.checkpoint import load_model, load_user_state
    from pic_core.data import DataError
    from pic_core.data.sources import annotated_sets, is_annotation_source, open_dataset
    from pic_core.runtime import configure_runtime
    from pic_core.samples import SampleCache
    from pic_core.train import evaluate

    config = config_from_args(args)
    annotations = is_annotation_source(args.data)
    if annotations:  # GAICD / CPC / JSON: the generic model on the benchmark split
        if args.user or args.all_users:
            raise ConfigError(f"evaluate: {args.data} is an annotation source (no users/): drop --user/--all-users")
        split_list = args.split_list or config.pre.split_list
        sets = annotated_sets(args.data, args.split, skip_bad=getattr(args, "skip_bad", False),
                              split_list=Path(split_list) if split_list else None)
    device = configure_runtime(config)
    model, _ = load_model(args.model, device)
    if annotations:
        if args.user_state:
            load_user_state(args.user_state, model)
    elif args.all_users:
        return _evaluate_population(args, config, model, device)
    else:
        if not args.user:
            raise ConfigError("evaluate: give --user U (one user) or --all-users (the whole population)")
        if args.user_state:
            load_user_state(args.user_state, model)
        dataset = open_dataset(args.data, skip_bad=getattr(args, "skip_bad", False))
        sets = dataset.user(args.user).split(args.split)
        if not sets:
            raise DataError(f"{args.data}: user {args.user} has no rows with split {args.split!r}")
    metrics = evaluate(model, sets, SampleCache(model.config.short_side), personal=bool(args.user_state),
                       device=device)
    metrics.update({"user": args.user, "split": args.split, "personalized": bool(args.user_state)})
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if args.json:
        atomic_write_text(args.json, text + "\n")
    if getattr(args, "gaic_table", False):
        from pic_core.metrics import gaic_table
        print(gaic_table(metrics))
    else:
        print(text)
    return 0


def _evaluate_population(args: argparse.Namespace, config: Config, model: "CropScorer", device) -> int:
    """Batch form: every user personalized from N shots and scored on unseen test images."""
    from pic_core.data.sources import open_dataset
    from pic_core.protocol import evaluate_users
    from pic_core.samples import SampleCache

    dataset = open_dataset(args.data, skip_bad=getattr(args, "skip_bad", False))
    users = list(dataset.users())
    shots = args.shots if args.shots is not None else config.finetune.shots
    cache = SampleCache(model.config.short_side)
    generic = evaluate_users(model, users, config, shots, method="generic", cache=cache, personalize=False,
                             device=device)
    personalized = evaluate_users(model, users, config, shots, cache=cache, device=device)
    report = {"model": str(args.model), "split": "test", "shots": shots, "users": len(personalized.per_user),
              "generic": generic.as_dict(), "personalized": personalized.as_dict()}
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    for name, result in (("generic", generic), ("personalized", personalized)):
        stats = result.summary().get("acc1_5", {})
        print(f"{name:>13}: acc1_5 {stats.get('mean', float('nan')):.3f} +- {stats.get('ci95', float('nan')):.3f} "
              f"over {stats.get('users', 0)} users")
    return 0


def _initial_model(init: Optional[Path], config: Config, device) -> "CropScorer":
    """The --init model file, else a fresh model of the config."""
    from pic_core.checkpoint import load_model
    from pic_core.model import CropScorer

    if init:
        model, _ = load_model(init, device)
        if replace(config.model, backbone_weights=None) != model.config:
            log.warning("the model section of the config differs from %s; keeping the --init model's", init)
        return model
    return CropScorer(config.model).to(device)



def register(subparsers: argparse._SubParsersAction) -> None:
    """pretrain, prior, personalize, evaluate."""
    p = subparsers.add_parser("pretrain", help="stage pre: objective crop quality on generic scores")
    p.add_argument("--data", type=Path, required=True, action="append",
                   help="dataset directory (generic.csv), GAICD directory (its train split only), a JSON/CPC "
                        "annotation file (image_crop.json too), or a CPC folder with CollectedAnnotationsRaw/; "
                        "repeat to pre-train on several (GAICD + CPC jointly)")
    p.add_argument("--split-list", type=Path,
                   help='GAICD split list JSON {"train": [names], "test": [names]} for a flat GAICD folder '
                        "(config key pre.split_list)")
    p.add_argument("--init", type=Path, help="start from this model file instead of random init")
    p.add_argument("--out", type=Path, required=True, help="model file to write")
    add_common_options(p)
    p.set_defaults(func=_cmd_pretrain)

    p = subparsers.add_parser("prior", help="stage prior: shared model + population prior across all users (central)")
    p.add_argument("--data", type=Path, required=True, help="dataset directory with users/*.csv")
    p.add_argument("--init", type=Path, help="model file from `fedpic pretrain`")
    p.add_argument("--out", type=Path, required=True, help="model file to write")
    p.add_argument("--user-states", type=Path, help="also write each training user's d_u here (<user>.pt)")
    add_common_options(p)
    p.set_defaults(func=_cmd_prior)

    p = subparsers.add_parser("personalize", help="stage finetune: fit one user's d_u from a few annotated photos")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, help="dataset directory with users/<user>.csv (scored candidate crops)")
    p.add_argument("--crops", type=Path,
                   help="instead of --data: your own crops, CSV 'image,x1,y1,x2,y2' or JSON lines "
                        '{"image": ..., "box": [x1, y1, x2, y2]} (see README, section Personalize from your crops); with --data and --user, mixed with the scored crops')
    p.add_argument("--user", help="user id (required with --data; default with --crops: the file's name)")
    p.add_argument("--shots", type=int, help="with --data: use the first N 'train' images (default: finetune.shots)")
    p.add_argument("--epochs", type=int, help="with --crops: passes over your photos (default 10)")
    p.add_argument("--lr", type=float, help="with --crops: Adam step for d_u (default 0.05)")
    p.add_argument("--out", type=Path, required=True, help="user-state file to write")
    add_common_options(p)
    p.set_defaults(func=_cmd_personalize)

    p = subparsers.add_parser("evaluate", help="metrics of a model (and a user state) on a user's split")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--user-state", type=Path, help="user state from `fedpic personalize` (default: generic model)")
    p.add_argument("--data", type=Path, required=True,
                   help="dataset directory with users/, or an annotation source (GAICD folder: its --split, "
                        "default test; JSON/CPC file or folder): then the generic model is scored on it")
    p.add_argument("--split-list", type=Path, help="GAICD split list JSON for a flat GAICD folder")
    p.add_argument("--user", help="the user to evaluate (or --all-users)")
    p.add_argument("--all-users", action="store_true",
                   help="protocol over every user: personalize from --shots train images, score the test split")
    p.add_argument("--shots", type=int, help="with --all-users: few-shot images per user (default: finetune.shots)")
    p.add_argument("--split", default="test", choices=["prior", "train", "test"])
    p.add_argument("--json", type=Path, help="also write the metrics here")
    p.add_argument("--gaic-table", action="store_true",
                   help="print GAIC's results table (Acc1/5..Acc4/10, wAcc, SRCC, PCC) instead of JSON")
    add_common_options(p)
    p.set_defaults(func=_cmd_evaluate)
