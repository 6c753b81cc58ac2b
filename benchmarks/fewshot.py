"""Few-shot personalization of a new user: the fast path's time and its quality against full fine-tuning.

For every user of the demo population, from the shared prior model with d_u = 0 (a user the
device knows nothing about yet), on 2 CPU threads:

  fast        finetune mode fast: decode the 5 photos, one backbone pass each, then d_u (Adam
              5e-2) and the personal crop-head offsets (Adam 1e-3) on cached aligned features,
              rank loss only, 10 epochs (timed from the image files to the fitted state)
  full        finetune mode full: every weight, the reference setting (Adam 1e-3, 10 epochs,
              rank + 0.8 * SmoothL1)
  from crops  `fedpic personalize --crops`: the same 5 photos, but only the one crop the
              user likes best on each (their top-scored candidate), turned into preferences
  generic     d_u = 0, no personalization

then acc1_5 (and SRCC) on the user's unseen test photos, averaged over users with a 95% CI,
and the paired difference fast - full. Writes runs/bench/fewshot.json.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import RUNS, bench_config, demo_population, machine, trained_model, write_json  # noqa: E402

from pic_core.checkpoint import load_model  # noqa: E402
from pic_core.runtime import set_seed, set_threads  # noqa: E402
from pic_core.data.sources import open_dataset  # noqa: E402
from pic_core.metrics import mean_ci  # noqa: E402
from pic_core.protocol import few_shot_sets  # noqa: E402
from pic_core.samples import SampleCache  # noqa: E402
from pic_core.train import evaluate, finetune  # noqa: E402
from pic_core.user_crops import FAST_EPOCHS, FAST_HEAD_LR, FAST_LR, UserCrop, personalize_from_crops  # noqa: E402

FAST = {"finetune.mode": "fast", "finetune.lr": FAST_LR, "finetune.epochs": FAST_EPOCHS,
        "finetune.head_lr": FAST_HEAD_LR, "finetune.smooth_l1_weight": 0.0}
FULL = {"finetune.mode": "full", "finetune.lr": 1e-3, "finetune.epochs": 10, "finetune.smooth_l1_weight": 0.8}
log = logging.getLogger("fedpic.bench")


def summarize(values: list[float]) -> dict:
    mean, half = mean_ci(values)
    return {"mean": round(float(mean), 4), "ci95": round(float(half), 4), "users": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="demo population folder (default: generate it under runs/bench)")
    parser.add_argument("--model", type=Path, help="prior-stage model (default: train one like infer.py does)")
    parser.add_argument("--preset", help="the shipped config <preset> for the model trained here (default: built-in)")
    parser.add_argument("--epochs", type=int, default=3, help="prior epochs when training the model here")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--users", type=int, default=0, help="only the first N users (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RUNS / "fewshot.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    set_threads(args.threads)
    data = demo_population(args.data)
    model_path = args.model or trained_model(args.preset or "default",
                                             bench_config(args.preset, args.epochs, args.threads), data)
    set_threads(args.threads)
    model, _ = load_model(model_path, "cpu")
    fast_config = bench_config(None, 0, args.threads, FAST | {"progress": False})
    full_config = bench_config(None, 0, args.threads, FULL | {"progress": False})
    users = list(open_dataset(data).users())[: args.users or None]
    test_cache = SampleCache(model.config.short_side)
    rows: dict[str, dict[str, dict]] = {"generic": {}, "fast": {}, "full": {}, "from crops": {}}
    seconds: dict[str, list[float]] = {"fast": [], "full": [], "from crops": []}
    load_at_start = machine()["load_average_1_5_15"]
    for user in tqdm(users, desc="users"):
        test, shots = user.split("test"), few_shot_sets(user, args.shots)
        if not test or len(shots) < args.shots:
            continue
        rows["generic"][user.user_id] = evaluate(model, test, test_cache, personal=False)
        for name, config in (("fast", fast_config), ("full", full_config)):
            set_seed(config.seed)  # full fine-tuning draws dropout masks: same draws whatever ran before
            scorer = copy.deepcopy(model)
            begin = time.perf_counter()
            finetune(scorer, shots, config, SampleCache(model.config.short_side))  # decodes the photos too
            seconds[name].append(time.perf_counter() - begin)
            rows[name][user.user_id] = evaluate(scorer, test, test_cache)
        crops = [UserCrop(s.image_path, s.boxes[int(np.argmax(s.scores))].astype(np.float64), f"{s.name}")
                 for s in shots]
        scorer = copy.deepcopy(model)
        begin = time.perf_counter()
        personalize_from_crops(scorer, crops, fast_config)
        seconds["from crops"].append(time.perf_counter() - begin)
        rows["from crops"][user.user_id] = evaluate(scorer, test, test_cache)
    metrics = {name: {key: summarize([m[key] for m in per_user.values()]) for key in ("acc1_5", "acc_5", "srcc")}
               for name, per_user in rows.items()}
    fast_minus_full = summarize([rows["fast"][u]["acc1_5"] - rows["full"][u]["acc1_5"] for u in rows["fast"]])
    timing = {name: {"median_s": round(float(np.median(v)), 3), "max_s": round(float(np.max(v)), 3)}
              for name, v in seconds.items()}
    report = {
        "machine": machine() | {"load_average_at_start": load_at_start},
        "model": str(model_path), "model_config": vars(model.config), "data": str(data), "shots": args.shots,
        "settings": {"fast": FAST, "full": FULL, "from crops": FAST},
        "seconds_per_user": timing,
        "acc": metrics,
        "fast_minus_full_acc1_5": fast_minus_full,
        "per_user_acc1_5": {name: {u: round(m["acc1_5"], 4) for u, m in per_user.items()}
                            for name, per_user in rows.items()},
        "targets": {"fast_max_seconds": timing["fast"]["max_s"], "fast_within_2s": timing["fast"]["max_s"] <= 2.0,
                    "fast_minus_full_points": round(100 * fast_minus_full["mean"], 2),
                    "fast_within_1_point_of_full": fast_minus_full["mean"] >= -0.01},
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(args.out, report)
    for name, m in metrics.items():
        print(f"{name:>10}: acc1_5 {m['acc1_5']['mean']:.3f} +- {m['acc1_5']['ci95']:.3f}"
              + (f"   {timing[name]['median_s']:.2f} s median, {timing[name]['max_s']:.2f} s max" if name in timing else ""))
    print(report["targets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
