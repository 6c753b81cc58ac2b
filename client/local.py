"""What a device does with a round, on its own data (Flower-free, so it can be tested alone).

Training, prior.method `joint` (FedRep-style): load d_u from the state store, fit d_u on the
user's `prior` images with everything shared frozen (fast path on cached crop features),
then train the shared part with d_u fixed, save d_u, and return the trained SHARED weights
with scalar metrics. prior.method `episodic`: pic_core.train.train_episodes on the user's
`prior` images (the same function the centralized prior stage runs), then the personal
state is refitted on those images and saved. Refit (the end of a federation): the personal
state is fitted on the final model with every labelled image (`prior` + `train`) and the user's own crops, and saved,
so the device keeps its best personalized model. Evaluation: on the user's `test` images, the generic model (d_u = 0), the model
personalized by the evaluation protocol (few-shot fine-tuning on the `train` split, as
`fedpic evaluate --all-users` does) and the model with the d_u the device keeps.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from pic_core.config import Config
from pic_core.data import DataError, UserData
from pic_core.model import CropScorer
from pic_core.ops import compiled_available
from pic_core.params import BACKBONE_TAP_PREFIXES, shared_state, to_numpy
from pic_core.protocol import evaluate_users
from pic_core.runtime import torch_seeded
from pic_core.samples import Sample, SampleCache
from pic_core.train import backbone_taps, evaluate, personal_fit, train_episodes, train_personal, train_shared, \
    with_taps
from pic_core.user_crops import crop_samples, read_user_crops

from .features import TapSampleCache
from .settings import NodeSettings
from .state_store import PersonalStateStore

EVAL_KEYS = ("acc1_5", "acc_5", "acc_10", "wacc_5", "srcc")
"""Metrics a device reports per evaluation variant (NaN, e.g. an undefined SRCC, is sent as 0)."""
EVAL_VARIANTS = ("generic", "personalized", "stored")


@dataclass
class TrainResult:
    arrays: dict[str, np.ndarray]  # trained SHARED weights, all keys (the caller picks what to send)
    metrics: dict[str, float]


def device_seed(config: Config, server_round: int, user_id: str) -> int:
    """A seed that differs per round and per user but is the same when a round is re-run."""
    return (config.seed * 1_000_003 + server_round * 7919 + zlib.crc32(user_id.encode())) % (2 ** 31)


def sample_cache(model: CropScorer, config: Config, settings: NodeSettings) -> SampleCache:
    """Backbone taps (disk-cached when asked) with a frozen backbone, decoded images otherwise."""
    if config.federation.freeze_backbone:
        folder = settings.state_dir if config.federation.cache_features else None
        return TapSampleCache(model, folder, settings.device)
    return SampleCache(model.config.short_side)


def _optimizer_state(extra: dict, model: CropScorer) -> Optional[dict]:
    """The stored Adam state of d_u, when it matches the current personal parameters."""
    state = extra.get("optimizer") or None
    if not state or not state.get("param_groups"):
        return None
    count = sum(len(group["params"]) for group in state["param_groups"])
    return state if count == len(model.personal.embedding_parameters()) else None  # d_u (+ head), not offsets


def device_user(settings: NodeSettings) -> UserData:
    """The user's scored crop sets; none (an empty UserData) for a user who only made crops."""
    if settings.crops_file is not None and not settings.has_scored:
        return UserData(settings.user_id, [])
    return settings.dataset.user(settings.user_id)


def own_crop_samples(model: CropScorer, config: Config, settings: NodeSettings) -> list[Sample]:
    """The user's own crops as training samples (pic_core.user_crops), with backbone taps instead of
    images when the backbone is frozen, as the scored samples have."""
    if settings.crops_file is None:
        return []
    photos = crop_samples(model, read_user_crops(settings.crops_file), settings.device)
    samples = [photo.sample for photo in photos]
    if config.federation.freeze_backbone:
        samples = [with_taps(s, backbone_taps(model, s, settings.device)) for s in samples]
    return samples


def train_round(model: CropScorer, user: UserData, config: Config, settings: NodeSettings,
                server_round: int, proximal_mu: float = 0.0) -> TrainResult:
    """One federated round on this device; `model` holds the received SHARED weights.

    The user's scored `prior` sets and their own crops (settings.crops_file) train together.
    """
    fed, prior = config.federation, config.prior
    sets = user.split("prior")
    if fed.max_images:
        sets = sets[: fed.max_images]
    start = time.perf_counter()
    own = own_crop_samples(model, config, settings)
    if not sets and not own:
        raise DataError(f"{settings.data_dir}: user {user.user_id} has no 'prior' images and no crops to train on")
    cache = sample_cache(model, config, settings)
    samples = cache.samples(sets) + own
    store = PersonalStateStore(settings.state_dir, user.user_id)
    extra = store.load(model, for_round=server_round)
    before = store.snapshot(model, extra)
    seed = device_seed(config, server_round, user.user_id)
    exclude = BACKBONE_TAP_PREFIXES if fed.freeze_backbone else ()
    with torch_seeded(seed, settings.device):  # dropout masks: the same whichever worker runs this round
        if prior.method == "episodic":
            shared = train_episodes(model, [samples], epochs=fed.local_epochs, lr=fed.lr,
                                    rank_weight=prior.rank_weight, smooth_l1_weight=prior.smooth_l1_weight,
                                    weight_decay=prior.weight_decay, finetune=config.finetune, support=prior.support,
                                    inner=prior.inner, seed=seed, device=settings.device, exclude_prefixes=exclude,
                                    proximal_mu=proximal_mu)
            personal = personal_fit(model, samples, config.finetune, seed=seed, device=settings.device)
            personal.optimizer_state = None  # a fit from d_u = 0 each round: no moments to carry
        else:
            personal, shared = _joint_round(model, samples, config, settings, seed, extra, exclude, proximal_mu)
    rounds = [int(r) for r in extra.get("rounds", [])] + [int(server_round)]
    store.save(model, rounds, personal.optimizer_state, previous=before)
    if isinstance(cache, TapSampleCache):
        cache.save()
    metrics = {
        "images": float(len(samples)),
        "own-crops": float(len(own)),  # photos the user cropped themselves among `images`
        "loss-personal": personal.final_loss(0.0),
        "loss-shared": shared.final_loss(0.0),
        "train-seconds": time.perf_counter() - start,
        "backbone-passes": float(getattr(cache, "computed", len(samples))),
        "compiled-op": float(compiled_available(settings.device)),  # 1: the device runs fedpic's C++/CUDA op
    }
    if prior.method == "episodic":
        model.personal.reset()  # the personal state is saved; the uploaded SHARED weights do not depend on it
    return TrainResult(to_numpy(shared_state(model)), metrics)


def _joint_round(model: CropScorer, samples: list, config: Config, settings: NodeSettings, seed: int, extra: dict,
                 exclude: tuple, proximal_mu: float):
    """prior.method joint: d_u on the shared model (frozen), then the shared part with d_u fixed."""
    fed, prior = config.federation, config.prior
    personal = train_personal(model, samples, epochs=fed.personal_epochs, lr=fed.personal_lr,
                              rank_weight=prior.rank_weight, smooth_l1_weight=prior.smooth_l1_weight,
                              delta_l2=fed.personal_l2, seed=seed, device=settings.device,
                              optimizer_state=_optimizer_state(extra, model))
    shared = train_shared(model, samples, epochs=fed.local_epochs, lr=fed.lr, rank_weight=prior.rank_weight,
                          smooth_l1_weight=prior.smooth_l1_weight, weight_decay=prior.weight_decay, seed=seed,
                          device=settings.device, exclude_prefixes=exclude, proximal_mu=proximal_mu)
    return personal, shared


def refit_round(model: CropScorer, user: UserData, config: Config, settings: NodeSettings) -> dict[str, float]:
    """The end of a federation: fit the personal state on the final model (`model`) with every
    labelled image of this device (`prior` + `train` splits, never `test`) and save it, so
    personal.pt is this device's best personalized model for `fedpic crop` / `fedpic evaluate`."""
    sets = user.split("prior") + user.split("train")
    start = time.perf_counter()
    own = own_crop_samples(model, config, settings)
    if not sets and not own:
        raise DataError(f"{settings.data_dir}: user {user.user_id} has no labelled images or crops to refit on")
    cache = sample_cache(model, config, settings)
    samples = cache.samples(sets) + own
    store = PersonalStateStore(settings.state_dir, user.user_id)
    extra = store.load(model)
    fit = personal_fit(model, samples, config.finetune, inner=config.prior.inner if config.prior.method == "episodic"
                       else "finetune", seed=device_seed(config, 0, user.user_id), device=settings.device)
    store.save(model, [int(r) for r in extra.get("rounds", [])], extra.get("optimizer"),  # rounds, moments kept
               previous=extra.get("previous"))
    if isinstance(cache, TapSampleCache):
        cache.save()
    model.personal.reset()
    return {"images": float(len(samples)), "loss-personal": fit.final_loss(0.0),
            "refit-seconds": time.perf_counter() - start}


def evaluate_round(model: CropScorer, user: UserData, config: Config, settings: NodeSettings) -> dict[str, float]:
    """Metrics on the user's test images: generic, few-shot personalized, and with the stored d_u."""
    test = user.split("test")
    if not test:
        raise DataError(f"{settings.data_dir}: user {user.user_id} has no 'test' images to evaluate on")
    cache = sample_cache(model, config, settings)
    shots = config.finetune.shots
    results = {
        "generic": evaluate(model, test, cache, personal=False, device=settings.device),
        "personalized": evaluate_users(model, [user], config, shots, cache=cache, device=settings.device,
                                       progress=False).per_user[user.user_id],
    }
    store = PersonalStateStore(settings.state_dir, user.user_id)
    store.load(model)  # d_u = 0 when this device never trained
    results["stored"] = evaluate(model, test, cache, personal=True, device=settings.device)
    model.personal.reset()
    if isinstance(cache, TapSampleCache):
        cache.save()
    out = {}
    for variant in EVAL_VARIANTS:
        for key in EVAL_KEYS:
            value = float(results[variant].get(key, math.nan))
            out[f"{variant}-{key}"] = value if math.isfinite(value) else 0.0
    return out


def configure_torch(settings: NodeSettings) -> None:
    """CPU threads for this device process (a simulated device shares the machine)."""
    if settings.threads > 0 and torch.get_num_threads() != settings.threads:
        torch.set_num_threads(settings.threads)
