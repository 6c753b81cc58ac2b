"""Prior benchmark: does the shared prior make few-shot personalization better than the pre model?

    python benchmarks/prior.py                                    # demo population (seed 0), all methods
    python benchmarks/prior.py --seed 1 --out runs/bench/prior-s1.json
    python benchmarks/prior.py --methods pre-finetune episodic --set prior.epochs=8

One pre model (the demo config, stage pre on generic.csv without test images) is trained,
its backbone frozen, and the backbone taps of every image cached once, so every method below
starts from the same pre model and runs in minutes on a CPU. Methods (acc1_5 on each user's
test images after N-shot personalization with the protocol's fast path, config.finetune):

  generic          the pre model's objective scorer, no personalization
  pre-finetune     the pre model personalized by the same fast path (the honest baseline)
  joint            centralized prior, prior.method joint (a d_u per user, trained with the shared part)
  episodic         centralized prior, prior.method episodic (pic_core.train.train_episodes)
  fed-joint        federated prior: FedAvg in process over client.local.train_round (the ClientApp's
  fed-episodic     own training function), then client.local.refit_round on every device;
                   the server step is FedAvgM's (--server-lr/--server-momentum, default the config's)
  *-du             the same prior personalized with d_u alone (finetune.head_lr = 0: <= embed_dim floats)
  *-compact        ... with the compact state: d_u + the objective readout's offsets (209 floats)

For the federated methods the devices' stored states after the refit are scored too (`stored`).
Paired gains over pre-finetune are per-user differences with a 95% t interval.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from bench_models import RUNS, demo_population, machine, write_json  # noqa: E402
from client.features import TapSampleCache  # noqa: E402
from client.local import refit_round, train_round  # noqa: E402
from client.settings import NodeSettings  # noqa: E402
from client.state_store import PersonalStateStore  # noqa: E402
from pic_core.checkpoint import load_model, save_model  # noqa: E402
from pic_core.config import Config, load_config, parse_overrides, to_dict  # noqa: E402
from pic_core.data import Dataset  # noqa: E402
from pic_core.metrics import mean_ci  # noqa: E402
from pic_core.model import CropScorer  # noqa: E402
from pic_core.params import from_numpy, load_shared, shared_state, to_numpy  # noqa: E402
from pic_core.protocol import PopulationResult, evaluate_users, gains, json_safe  # noqa: E402
from pic_core.runtime import configure_runtime, set_seed  # noqa: E402
from pic_core.samples import SampleCache  # noqa: E402
from pic_core.train import evaluate, train_prior  # noqa: E402
from simulations.baselines import load_users, objective_only, train_generic  # noqa: E402
from simulations.evaluation import compact_state, du_only  # noqa: E402

METHODS = ("generic", "pre-finetune", "joint", "episodic", "fed-joint", "fed-episodic")
log = logging.getLogger("fedpic.bench.prior")


def paired(better: PopulationResult, base: PopulationResult) -> dict:
    diffs = list(gains(better, base).values())
    mean, half = mean_ci(diffs) if len(diffs) > 1 else (float("nan"), float("nan"))
    return {"mean": float(mean), "ci95": float(half), "users": len(diffs),
            "excludes_zero": bool(abs(mean) > half)}


def fedavg(results: list, keys: list[str], reference: dict) -> dict:
    """Weighted mean (by images) of float arrays; other arrays (BatchNorm counters) from the reference."""
    weights = np.array([r.metrics["images"] for r in results], dtype=np.float64)
    weights /= weights.sum()
    out = dict(reference)
    for key in keys:
        if np.issubdtype(reference[key].dtype, np.floating):
            out[key] = sum(w * r.arrays[key].astype(np.float64) for w, r in zip(weights, results)).astype(
                reference[key].dtype)
    return out


def server_step(arrays: dict, averaged: dict, keys: list[str], momentum: dict, lr: float, beta: float) -> dict:
    """Flower's FedAvgM server step: pseudo-gradient g = old - average, m = beta m + g, new = old - lr m
    (lr 1, beta 0: plain FedAvg). `momentum` is updated in place. BatchNorm running statistics are
    averaged plainly (with momentum their variances went negative: NaN scores, measured)."""
    out = dict(averaged)
    for key in keys:
        if not np.issubdtype(arrays[key].dtype, np.floating) or ".running_" in key:
            continue
        grad = arrays[key].astype(np.float64) - averaged[key].astype(np.float64)
        momentum[key] = beta * momentum[key] + grad if key in momentum and beta > 0 else grad
        out[key] = (arrays[key].astype(np.float64) - lr * momentum[key]).astype(arrays[key].dtype)
    return out


def federate(pre_model: CropScorer, users: list, config: Config, data: Path, folder: Path, method: str,
             device: torch.device, refit: bool = True, server_lr: float = 1.0,
             server_momentum: float = 0.0) -> tuple[CropScorer, dict]:
    """In-process FedAvg(M) over the ClientApp's train_round, then refit_round on every device."""
    config = replace(config, prior=replace(config.prior, method=method))
    fed = config.federation
    arrays = to_numpy(shared_state(pre_model))
    keys = [k for k in arrays if not k.startswith(("backbone.stage3.", "backbone.stage4.", "backbone.stage5."))]
    rng = np.random.default_rng(config.seed)
    per_round = fed.devices_per_round or max(1, int(round(fed.fraction * len(users))))
    settings = {u.user_id: NodeSettings(data, u.user_id, folder / u.user_id, device, 1) for u in users}
    momentum: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    for server_round in range(1, fed.rounds + 1):
        results = []
        for index in sorted(rng.choice(len(users), min(per_round, len(users)), replace=False)):
            user = users[index]
            model = copy.deepcopy(pre_model)
            load_shared(model, from_numpy(arrays))
            results.append(train_round(model, user, config, settings[user.user_id], server_round))
        arrays = server_step(arrays, fedavg(results, keys, arrays), keys, momentum, server_lr, server_momentum)
        log.info("%s round %d/%d: %.0fs", method, server_round, fed.rounds, time.perf_counter() - start)
    final = copy.deepcopy(pre_model)
    load_shared(final, from_numpy(arrays))
    train_seconds = time.perf_counter() - start
    info = {"train_seconds": train_seconds, "rounds": fed.rounds, "devices_per_round": per_round,
            "local_epochs": fed.local_epochs, "personal_epochs": fed.personal_epochs, "lr": fed.lr,
            "server_lr": server_lr, "server_momentum": server_momentum}
    if refit:
        fits = [refit_round(copy.deepcopy(final), u, config, settings[u.user_id]) for u in users]
        info.update({"refit_seconds": time.perf_counter() - start - train_seconds,
                     "refit_images_mean": float(np.mean([r["images"] for r in fits]))})
    return final.eval(), info


def stored_result(model: CropScorer, users: list, folder: Path, cache: TapSampleCache, name: str) -> PopulationResult:
    """Each device's stored personal.pt on its test images (what `fedpic evaluate --user-state` sees)."""
    result = PopulationResult(name, 0)
    for user in users:
        scorer = copy.deepcopy(model)
        PersonalStateStore(folder / user.user_id, user.user_id).load(scorer)
        result.per_user[user.user_id] = evaluate(scorer, user.split("test"), cache, personal=True)
    return result


def cached_pre_model(data: Path, users: list, config: Config, device: torch.device) -> tuple[CropScorer, Path]:
    """Stage pre on generic.csv (no test images), trained once per (model, pre, seed, data) and cached."""
    head_only = ("embed_dim", "preference_hidden", "preference_readout")  # stage pre never trains the preference head
    model_key = {k: v for k, v in to_dict(config.model).items() if k not in head_only}
    key = json.dumps({"model": model_key, "pre": to_dict(config.pre), "seed": config.seed,
                      "data": str(data.resolve())}, sort_keys=True)
    path = RUNS / "models" / f"prior-pre-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if not path.is_file():
        log.info("stage pre on %s (cached as %s)", data, path)
        model, train_log = train_generic(Dataset(data), users, config, SampleCache(config.model.short_side), device)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(path, model, to_dict(config), "pre", {"train": train_log.as_dict()})
        log.info("pre: loss %s in %.0fs", train_log.summary(), train_log.seconds)
    cached = load_model(path)[0]
    set_seed(config.seed)
    model = CropScorer(config.model)  # this config's preference head (seeded), the cached pre weights elsewhere
    own = model.state_dict()
    with torch.no_grad():
        for name, value in cached.state_dict().items():
            if not name.startswith(("preference.", "prior_embedding")) and own[name].shape == value.shape:
                own[name].copy_(value)
    return model.to(device).eval(), path


def baseline_cache(pre_path: Path, config: Config, shots: int) -> Path:
    """Where pre-finetune's per-user results for this pre model, head and fast path are kept."""
    key = json.dumps({"pre": str(pre_path), "model": to_dict(config.model), "finetune": to_dict(config.finetune),
                      "seed": config.seed, "shots": shots}, sort_keys=True)
    return pre_path.with_name(f"{pre_path.stem}-baselines-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="YAML config (default: the shipped demo config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", type=Path, help="dataset folder (default: the demo population of --seed)")
    parser.add_argument("--seed", type=int, default=0, help="population seed when --data is absent")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--no-du", action="store_true", help="skip the small-state variants (-du, -compact)")
    parser.add_argument("--no-refit", action="store_true", help="federated: skip the refit and the stored rows")
    parser.add_argument("--server-lr", type=float, help="federated: server learning rate (FedAvgM; default: the "
                        "config's federation.strategy_args when its strategy is fedavgm, else 1)")
    parser.add_argument("--server-momentum", type=float, help="federated: server momentum (FedAvgM; default as "
                        "--server-lr, else 0)")
    parser.add_argument("--out", type=Path, help="JSON output (default runs/bench/prior-s<seed>.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    config = load_config(args.config, overrides={"progress": False, "device": "cpu",
                                                 **parse_overrides(args.overrides)})
    server = config.federation.strategy_args if config.federation.strategy == "fedavgm" else {}
    args.server_lr = server.get("server_learning_rate", 1.0) if args.server_lr is None else args.server_lr
    args.server_momentum = server.get("server_momentum", 0.0) if args.server_momentum is None else args.server_momentum
    if config.federation.strategy not in ("fedavg", "fedavgm"):
        raise SystemExit(f"benchmarks/prior.py federates with FedAvg(M) only, not {config.federation.strategy}")
    data = demo_population(args.data, args.users, args.seed)
    device = configure_runtime(config)
    users = load_users(Dataset(data))
    timing: dict[str, float] = {}
    start = time.perf_counter()
    pre_model, pre_path = cached_pre_model(data, users, config, device)
    timing["pre"] = time.perf_counter() - start
    cache = TapSampleCache(pre_model, None, device)  # frozen backbone: one pass per image for every method
    small_states = {"-du": du_only(config), "-compact": compact_state(config)}
    results: dict[str, PopulationResult] = {}
    extra: dict[str, dict] = {}

    baselines = baseline_cache(pre_path, config, args.shots)
    stored_baselines = json.loads(baselines.read_text()) if baselines.is_file() else {}

    def personalize(name: str, model: CropScorer) -> None:
        t0 = time.perf_counter()
        cached = name in ("pre-finetune",) and name in stored_baselines
        if cached:  # the same pre model, head and fast path: its per-user results are reused
            results[name] = PopulationResult.from_dict(stored_baselines[name])
        else:
            results[name] = evaluate_users(model, users, config, args.shots, method=name, cache=cache, device=device)
        for suffix, small in ({} if args.no_du else small_states).items():
            key = name + suffix
            if cached and key in stored_baselines:
                results[key] = PopulationResult.from_dict(stored_baselines[key])
            else:
                results[key] = evaluate_users(model, users, small, args.shots, method=key, cache=cache, device=device)
        keys = [name] + [name + suffix for suffix in small_states]
        if name == "pre-finetune":
            stored_baselines.update({k: results[k].to_json() for k in keys if k in results})
            write_json(baselines, stored_baselines)
        timing[f"{name}_eval"] = time.perf_counter() - t0
        for key in keys:
            if key in results:
                acc = results[key].summary(("acc1_5",))["acc1_5"]
                log.info("%s: acc1_5 %.3f +- %.3f", key, acc["mean"], acc["ci95"])

    if "generic" in args.methods:
        results["generic"] = evaluate_users(objective_only(pre_model), users, config, args.shots, method="generic",
                                            cache=cache, personalize=False, device=device)
    if "pre-finetune" in args.methods:
        personalize("pre-finetune", pre_model)
    for method in ("joint", "episodic"):
        if method in args.methods:
            t0 = time.perf_counter()
            set_seed(config.seed)
            model = copy.deepcopy(pre_model)
            pools = {u.user_id: u.split("prior") for u in users}
            log.info("centralized prior, method %s", method)
            train_prior(model, pools, replace(config, prior=replace(config.prior, method=method)), cache, device)
            timing[f"{method}_train"] = time.perf_counter() - t0
            personalize(method, model.eval())
    for method in ("joint", "episodic"):
        name = f"fed-{method}"
        if name in args.methods:
            folder = Path(tempfile.mkdtemp(prefix=f"fedpic-prior-{method}-"))
            try:
                set_seed(config.seed)
                model, extra[name] = federate(pre_model, users, config, data, folder, method, device,
                                              refit=not args.no_refit, server_lr=args.server_lr,
                                              server_momentum=args.server_momentum)
                personalize(name, model)
                if not args.no_refit:
                    results[f"{name}-stored"] = stored_result(model, users, folder, cache, f"{name}-stored")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    timing["total"] = time.perf_counter() - start

    summary = {name: r.summary(("acc1_5", "acc_5", "srcc")) for name, r in results.items()}
    base = results.get("pre-finetune")
    paired_gains = {name: paired(r, base) for name, r in results.items() if base is not None and name != "pre-finetune"}
    if "fed-joint" in results and "fed-joint-stored" in results:
        paired_gains["fed-joint-stored_vs_fed-joint"] = paired(results["fed-joint-stored"], results["fed-joint"])
    if "fed-episodic" in results and "fed-episodic-stored" in results:
        paired_gains["fed-episodic-stored_vs_fed-episodic"] = paired(results["fed-episodic-stored"],
                                                                     results["fed-episodic"])
    if "generic" in results:
        for name in ("fed-joint", "fed-episodic", "joint", "episodic"):
            if name in results:
                paired_gains[f"{name}_vs_generic"] = paired(results[name], results["generic"])
    out = args.out or RUNS / f"prior-s{args.seed}.json"
    write_json(out, json_safe({
        "benchmark": "prior", "command": " ".join(["benchmarks/prior.py"] + list(argv or sys.argv[1:])),
        "data": str(data), "users": len(users), "shots": args.shots, "config": to_dict(config),
        "summary": summary, "paired_gain_acc1_5_over_pre_finetune": paired_gains, "federated": extra,
        "timing_seconds": {k: round(v, 1) for k, v in timing.items()}, "machine": machine(),
        "per_user_acc1_5": {name: {u: m.get("acc1_5") for u, m in r.per_user.items()} for name, r in results.items()},
    }))
    for name, stats in summary.items():
        acc = stats.get("acc1_5", {})
        gain = paired_gains.get(name, {})
        print(f"{name:>22}: acc1_5 {acc.get('mean', float('nan')):.3f} +- {acc.get('ci95', float('nan')):.3f}"
              f"   vs pre-finetune {gain.get('mean', float('nan')):+.3f} +- {gain.get('ci95', float('nan')):.3f}")
    for name, gain in paired_gains.items():
        if "_vs_" in name:
            print(f"{name:>40}: {gain['mean']:+.3f} +- {gain['ci95']:.3f}")
    print(f"total {timing['total']:.0f}s on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
