"""`fedpic synth`: write a synthetic population (users, photos, crop scores) as a dataset folder."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

USERS = 40
"""pic_core.data.synthetic.DEFAULT_USERS (a literal here so parsing needs no OpenCV; a test checks they agree)."""
IMAGES = 32
"""pic_core.data.synthetic.DEFAULT_IMAGES (likewise)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument("--users", type=int, default=USERS, help=f"number of users (default {USERS})")
    parser.add_argument("--images-per-user", type=int, default=None,
                        help=f"images per user (default {IMAGES}), split prior:train:test as 12:10:10 "
                             "unless the split counts below are given")
    parser.add_argument("--prior-images", type=int, default=None, help="images per user in the prior pool")
    parser.add_argument("--train-images", type=int, default=None, help="images per user in the few-shot pool")
    parser.add_argument("--test-images", type=int, default=None, help="images per user held out for testing")
    parser.add_argument("--shared-images", action="store_true",
                        help="one image pool scored by every user (same photos, different tastes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", choices=("grid", "free"), default="grid",
                        help="scored candidates: grid (GAIC anchors, default) or free (smaller and off-centre "
                             "crops of the usual photo ratios; train with --set model.candidates=free)")
    parser.add_argument("--probe-images", type=int, default=100, help="scenes every user scores for the statistics")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="rendering processes")
    parser.add_argument("--force", action="store_true", help="replace a dataset already in --out")
    parser.add_argument("--no-progress", action="store_true")


def spec_from_args(args: argparse.Namespace):
    """The PopulationSpec the arguments ask for (ValueError when the counts disagree)."""
    from pic_core.data.synthetic import PopulationSpec, split_counts

    explicit = (args.prior_images, args.train_images, args.test_images)
    if args.images_per_user is None and None not in explicit:
        counts = explicit
    else:
        images = IMAGES if args.images_per_user is None else args.images_per_user
        counts = split_counts(images, *explicit)
        if args.images_per_user is not None and sum(counts) != images:
            raise ValueError(f"--images-per-user {images} does not match the split counts {counts}")
    return PopulationSpec(users=args.users, prior=counts[0], train=counts[1], test=counts[2], seed=args.seed,
                          shared=args.shared_images, probe=args.probe_images, quality=args.quality,
                          candidates=args.candidates)


def run(args: argparse.Namespace) -> int:
    """Generate, then print the counts and statistics."""
    from pic_core.data.synthetic import generate

    try:
        spec = spec_from_args(args)
        start = time.perf_counter()
        population = generate(spec, args.out, workers=max(1, args.workers), progress=not args.no_progress,
                              force=args.force)
    except (ValueError, FileExistsError) as err:
        print(f"fedpic synth: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {population['images']} images for {spec.users} users to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    print(json.dumps({"counts": population["counts"], "families": population["families"],
                      "stats": population["stats"]}, indent=1))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """`fedpic convert`: PIC's per-user CSV folders -> a fedpic dataset folder."""
    from pic_core.data.pic_csv import convert_pic

    if args.pic is None and args.prior is None:
        print("fedpic convert: error: give --pic N_FOLDER and/or --prior FOLDER", file=sys.stderr)
        return 2
    counts = convert_pic(args.pic, args.images, args.out, prior=args.prior, skip_bad=args.skip_bad)
    totals = {s: sum(c[s] for c in counts.values()) for s in ("prior", "train", "test")}
    print(f"wrote {len(counts)} users to {args.out / 'users'}: {totals['prior']} prior, {totals['train']} train, "
          f"{totals['test']} test images")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """synth, convert."""
    convert = subparsers.add_parser(
        "convert", help="convert PIC's per-user CSV folders (N/train/<user>_train.csv, N/val/<user>_val.csv) "
                        "to a fedpic dataset folder (users/<id>.csv)", description=run_convert.__doc__)
    convert.add_argument("--pic", type=Path, help="a PIC shot-count folder holding train/ and val/ "
                                                  "(train -> split train, val -> split test)")
    convert.add_argument("--prior", type=Path, help="a folder of prior users' <user>.csv (split prior)")
    convert.add_argument("--images", type=Path, required=True, help="the CPC images folder the CSVs name")
    convert.add_argument("--out", type=Path, required=True, help="dataset folder to write (users/, images link)")
    convert.add_argument("--skip-bad", action="store_true", help="skip bad rows/images with a counted warning")
    convert.set_defaults(func=run_convert)
    parser = subparsers.add_parser("synth", help="generate a synthetic population of users, images and crop scores",
                                   description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=run)
