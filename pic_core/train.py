"""The three training stages (pre, prior, finetune) and the loops they share.

One image per optimizer step, as in the reference: its candidates form the batch the
losses rank. The federated client reuses `train_personal`, `train_shared` and
`train_episodes`, so central and federated training run the same code.

The prior has two methods (config prior.method). `joint`: a d_u per user is trained with
the shared part (the paper's stage). `episodic`: the shared part learns to be personalized;
each episode fits a user's personal part on a few support images with the very fast path the
few-shot protocol uses (`personal_fit`), then updates the shared part on that user's other
(query) images through the fitted personal part (first-order, as Per-FedAvg's FO variant and
FedRep's head/body split).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
import math
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .augment import gaic_augment
from .config import Config, FinetuneConfig
from .data.records import CropSet
from .losses import crop_loss, model_loss_options
from .metrics import crop_metrics
from .model import CropFeatures, CropScorer, HeadInputs, ImageEncoding
from .params import trainable_shared_parameters
from .samples import Sample, SampleCache


@dataclass
class TrainLog:
    stage: str
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    optimizer_state: Optional[dict] = None  # the optimizer's state_dict at the end (train_personal)

    def as_dict(self) -> dict:
        return {"stage": self.stage, "epoch_losses": self.epoch_losses, "seconds": round(self.seconds, 3),
                "steps": self.steps}

    def final_loss(self, default: float = math.nan) -> float:
        """The last epoch's loss; `default` when no epoch ran (devices report 0.0, never NaN)."""
        return float(self.epoch_losses[-1]) if self.epoch_losses else default

    def summary(self) -> str:
        """'first -> last' epoch loss, for one-line logs."""
        if not self.epoch_losses:
            return "no epochs"
        return f"{self.epoch_losses[0]:.4f} -> {self.final_loss():.4f}"


def _epoch_order(count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(count)


def encode_sample(model: CropScorer, sample: Sample, device: Optional[torch.device] = None) -> ImageEncoding:
    """The backbone pass on the sample's image, or the rest of it from cached taps when it has them."""
    device = device or next(model.parameters()).device
    if sample.taps is not None:
        return model.encode_taps(sample.taps[None].to(device, torch.float32), sample.network_size)
    return model.encode(sample.image[None].to(device))


@torch.no_grad()
def backbone_taps(model: CropScorer, sample: Sample, device: Optional[torch.device] = None,
                  dtype: torch.dtype = torch.float16) -> Tensor:
    """The backbone's fused taps of one sample's image (eval mode), on the CPU in `dtype`."""
    device = device or next(model.parameters()).device
    was_training = model.backbone.training
    model.backbone.eval()
    try:
        return model.backbone.fused_taps(sample.image[None].to(device))[0].to("cpu", dtype)
    finally:
        model.backbone.train(was_training)


def with_taps(sample: Sample, taps: Tensor) -> Sample:
    """The same sample carrying cached taps instead of its image (a frozen backbone's fast path)."""
    return replace(sample, image=None, taps=taps, input_size=sample.network_size)


def run_epochs(model: CropScorer, samples: Sequence[Sample], parameters: Iterable[nn.Parameter], *, epochs: int,
               lr: float, rank_weight: float, smooth_l1_weight: float, weight_decay: float = 0.0, seed: int = 0,
               stage: str = "train", progress: bool = True, device: Optional[torch.device] = None,
               delta_for: Optional[Callable[[Sample], Tensor]] = None, subjective: bool = True,
               extra_loss: Optional[Callable[[CropFeatures, Sample], Tensor]] = None,
               personal: bool = True,
               augment: Optional[Callable[[Sample, np.random.Generator], Sample]] = None) -> TrainLog:
    """The shared loop: shuffle images each epoch, one image per Adam step, mean loss per epoch.

    augment: a fresh random variant of each sample per step (pre stage: GAIC's augmentation).
    """
    parameters = [p for p in parameters if p.requires_grad]
    log = TrainLog(stage)
    if not samples or epochs <= 0 or not parameters:
        return log
    device = device or next(model.parameters()).device
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=epochs * len(samples), desc=stage, disable=not progress, leave=False)
    for _ in range(epochs):
        total = 0.0
        for index in _epoch_order(len(samples), rng):
            sample = samples[index] if augment is None else augment(samples[index], rng)
            features = model.crop_features(encode_sample(model, sample, device), sample.boxes.to(device),
                                           personal=personal)
            delta = delta_for(sample) if delta_for is not None else None
            pred = model.combine(features, delta, personal=personal, subjective=subjective)
            loss = crop_loss(pred, sample.scores.to(device), rank_weight, smooth_l1_weight,
                             **model_loss_options(model.config))
            if extra_loss is not None:
                loss = loss + extra_loss(features, sample)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            log.steps += 1
            bar.update(1)
        log.epoch_losses.append(total / len(samples))
        bar.set_postfix(loss=f"{log.epoch_losses[-1]:.4f}")
    bar.close()
    log.seconds = time.perf_counter() - start
    model.eval()
    return log


def pretrain(model: CropScorer, crop_sets: Sequence[CropSet], config: Config, cache: SampleCache,
             device: Optional[torch.device] = None) -> TrainLog:
    """Stage pre: the objective crop scorer on population-average (or GAICD) scores.

    With per-annotator scores (CPC-style) and pretext_weight > 0, an annotator-classification
    head on h_k is trained alongside with cross-entropy, as in the reference.
    """
    cfg = config.pre
    crop_sets = list(crop_sets)[: cfg.max_images] if cfg.max_images else list(crop_sets)
    samples = cache.samples(crop_sets)
    extra = None
    annotators = max((len(c.annotator_scores) for c in crop_sets if c.annotator_scores is not None), default=0)
    pretext_head = None
    if cfg.pretext_weight > 0 and annotators >= 2:
        pretext_head = nn.Linear(model.config.feature_dim, annotators).to(device or "cpu")

        def extra(features: CropFeatures, sample: Sample) -> Tensor:
            if sample.annotator_labels is None:
                return features.objective.sum() * 0.0
            logits = pretext_head(features.hidden)
            return cfg.pretext_weight * nn.functional.cross_entropy(logits, sample.annotator_labels.to(logits.device))
    excluded = ("prior_embedding", "preference.")
    parameters = trainable_shared_parameters(model, excluded)
    if pretext_head is not None:
        parameters += list(pretext_head.parameters())
    return run_epochs(model, samples, parameters, epochs=cfg.epochs, lr=cfg.lr, rank_weight=cfg.rank_weight,
                      smooth_l1_weight=cfg.smooth_l1_weight, weight_decay=cfg.weight_decay, seed=config.seed,
                      stage="pre", progress=config.progress, device=device, subjective=False, extra_loss=extra,
                      augment=partial(gaic_augment, max_crops=cfg.crops_per_step) if cfg.augment else None)


def train_prior(model: CropScorer, users: Mapping[str, Sequence[CropSet]], config: Config, cache: SampleCache,
                device: Optional[torch.device] = None) -> tuple[TrainLog, dict[str, Tensor]]:
    """Stage prior: joint training across users, each with their own d_u (a row of a table).

    Returns the log and every user's learned d_u. `schedule: sequential` trains user after
    user (the reference); `interleaved` shuffles all users' images together.
    """
    cfg = config.prior
    user_ids = list(users)
    if cfg.method == "episodic":
        pools = []
        for uid in user_ids:
            sets = list(users[uid])
            pools.append(cache.samples(sets[: cfg.max_images_per_user] if cfg.max_images_per_user else sets))
        log = train_episodes(model, pools, epochs=cfg.epochs, lr=cfg.lr, rank_weight=cfg.rank_weight,
                             smooth_l1_weight=cfg.smooth_l1_weight, weight_decay=cfg.weight_decay,
                             support=cfg.support, inner=cfg.inner, finetune=config.finetune, seed=config.seed,
                             progress=config.progress, device=device)
        model.personal.reset()
        return log, {uid: torch.zeros(model.preference_dim) for uid in user_ids}
    table = nn.Embedding(len(user_ids), model.preference_dim).to(device or "cpu")
    nn.init.zeros_(table.weight)
    samples: list[Sample] = []
    for row, uid in enumerate(user_ids):
        sets = list(users[uid])
        if cfg.max_images_per_user:
            sets = sets[: cfg.max_images_per_user]
        samples.extend(cache.samples(sets, user=row))
    parameters = trainable_shared_parameters(model) + [table.weight]

    def delta_for(sample: Sample) -> Tensor:
        return table.weight[sample.user]

    common = dict(lr=cfg.lr, rank_weight=cfg.rank_weight, smooth_l1_weight=cfg.smooth_l1_weight,
                  weight_decay=cfg.weight_decay, progress=config.progress, device=device, delta_for=delta_for)
    with readout_frozen(model, table.weight):  # as on a device: the readout part is fitted after the prior only
        if cfg.schedule == "sequential":
            log = TrainLog("prior")
            for row, uid in enumerate(tqdm(user_ids, desc="prior users", disable=not config.progress)):
                part = run_epochs(model, [s for s in samples if s.user == row], parameters, epochs=cfg.epochs,
                                  seed=config.seed + row, stage=f"prior[{uid}]", **common)
                log.epoch_losses.extend(part.epoch_losses)
                log.seconds += part.seconds
                log.steps += part.steps
        else:
            log = run_epochs(model, samples, parameters, epochs=cfg.epochs, seed=config.seed, stage="prior", **common)
    deltas = {uid: table.weight[row].detach().cpu().clone() for row, uid in enumerate(user_ids)}
    return log, deltas


@torch.no_grad()
def cached_head_inputs(model: CropScorer, samples: Sequence[Sample],
                       device: Optional[torch.device] = None) -> list[HeadInputs]:
    """Aligned features of every sample in eval mode: the backbone runs once per image."""
    device = device or next(model.parameters()).device
    model.eval()
    return [model.head_inputs(encode_sample(model, s, device), s.boxes.to(device)).detach()
            for s in samples]


@torch.no_grad()
def cached_crop_features(model: CropScorer, samples: Sequence[Sample], device: Optional[torch.device] = None,
                         personal: bool = True) -> list[CropFeatures]:
    """Crop features of every sample in eval mode: the backbone runs once per image."""
    return [model.head_features(inputs, personal).detach() for inputs in cached_head_inputs(model, samples, device)]


def train_personal(model: CropScorer, samples: Sequence[Sample], *, epochs: int, lr: float, rank_weight: float,
                   smooth_l1_weight: float, delta_l2: float = 0.0, seed: int = 0, progress: bool = False,
                   device: Optional[torch.device] = None,
                   features: Optional[Sequence[CropFeatures]] = None,
                   optimizer_state: Optional[dict] = None, head_lr: float = 0.0, offset_scope: str = "all",
                   head_inputs: Optional[Sequence[HeadInputs]] = None, readout: bool = False) -> TrainLog:
    """Fast path: fit the PERSONAL parameters with everything shared frozen, on cached features.

    d_u (+ personal head) learn at `lr`. With head_lr > 0 and a model with personal offsets,
    the offsets on the crop head (objective head and g) learn at head_lr on cached aligned
    features (`head_inputs`), which is what closes the gap to fine-tuning every weight; with
    head_lr = 0 the score is linear in d_u given cached crop features (`features`); `offset_scope`
    `compact` fits only the objective readout's offsets (model.COMPACT_OFFSETS). Either way
    the backbone runs once per image and the rest costs well under a second on a CPU.
    `readout`: with model.preference_readout, d_u's readout coordinates learn too (only when no
    offsets do: the objective readout's offsets already cover them); otherwise they stay put.
    `optimizer_state` continues an earlier call's Adam moments (a device keeps them between
    federated rounds); the final state is returned in the log.
    """
    log = TrainLog("personal")
    if not samples or epochs <= 0:
        return log
    start = time.perf_counter()
    offsets = model.personal.offset_parameters(offset_scope) if head_lr > 0 else []
    groups = [{"params": model.personal.embedding_parameters(), "lr": lr}]
    if offsets:
        groups.append({"params": offsets, "lr": head_lr})
        inputs = list(head_inputs) if head_inputs is not None else cached_head_inputs(model, samples, device)
        features_of = lambda index: model.head_features(inputs[index])  # noqa: E731
        device_of = inputs[0].aligned.device
    else:
        cached = list(features) if features is not None else cached_crop_features(model, samples, device)
        features_of = cached.__getitem__
        device_of = cached[0].objective.device
    targets = [s.scores.to(device_of) for s in samples]
    optimizer = torch.optim.Adam(groups, lr=lr)
    if optimizer_state:
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))  # load keeps references to its input
        for group, group_lr in zip(optimizer.param_groups, (lr, head_lr)):
            group["lr"] = group_lr
    rng = np.random.default_rng(seed)
    model.eval()  # BatchNorm on running statistics, no dropout: the cached features were computed so
    with readout_frozen(model, model.personal.delta, frozen=not (readout and not offsets)):
        for _ in tqdm(range(epochs), desc="personalize", disable=not progress, leave=False):
            total = 0.0
            for index in _epoch_order(len(samples), rng):
                pred = model.combine(features_of(index))
                loss = crop_loss(pred, targets[index], rank_weight, smooth_l1_weight,
                                 **model_loss_options(model.config))
                if delta_l2:
                    loss = loss + delta_l2 * model.personal.delta.pow(2).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                log.steps += 1
            log.epoch_losses.append(total / len(samples))
    log.seconds = time.perf_counter() - start
    log.optimizer_state = copy.deepcopy(optimizer.state_dict())  # state_dict() holds live references
    return log


@contextmanager
def readout_frozen(model: CropScorer, embedding: Tensor, frozen: bool = True) -> Iterator[None]:
    """With model.preference_readout, the readout coordinates (the last feature_dim of `embedding`'s
    last axis: d_u, or a table of them) get zero gradients inside the block, so Adam leaves them."""
    if not frozen or model.config.preference_readout <= 0:
        yield
        return
    keep = torch.zeros(embedding.shape[-1], dtype=embedding.dtype, device=embedding.device)
    keep[: model.config.embed_dim] = 1.0
    handle = embedding.register_hook(lambda grad: grad * keep)
    try:
        yield
    finally:
        handle.remove()


def train_shared(model: CropScorer, samples: Sequence[Sample], *, epochs: int, lr: float, rank_weight: float,
                 smooth_l1_weight: float, weight_decay: float = 0.0, seed: int = 0, progress: bool = False,
                 device: Optional[torch.device] = None, exclude_prefixes: Sequence[str] = (),
                 proximal_mu: float = 0.0) -> TrainLog:
    """The SHARED weights on one user's images, with that user's d_u held fixed.

    proximal_mu > 0 adds (mu / 2) * ||w - w_start||^2 over the trained weights (FedProx's
    local objective: w_start is the global model the round began from).
    """
    parameters = trainable_shared_parameters(model, exclude_prefixes)
    extra = None
    if proximal_mu > 0:
        anchors = [p.detach().clone() for p in parameters]

        def extra(_features: CropFeatures, _sample: Sample) -> Tensor:
            return 0.5 * proximal_mu * sum((p - a).pow(2).sum() for p, a in zip(parameters, anchors))
    for p in model.personal.parameters():
        p.requires_grad_(False)
    try:
        return run_epochs(model, samples, parameters, epochs=epochs, lr=lr, rank_weight=rank_weight,
                          smooth_l1_weight=smooth_l1_weight, weight_decay=weight_decay, seed=seed, stage="shared",
                          progress=progress, device=device, extra_loss=extra)
    finally:
        for p in model.personal.parameters():
            p.requires_grad_(True)


def personal_fit(model: CropScorer, samples: Sequence[Sample], finetune: FinetuneConfig, *, inner: str = "finetune",
                 seed: int = 0, device: Optional[torch.device] = None, progress: bool = False) -> TrainLog:
    """The few-shot fast path from d_u = 0: what the protocol, the episodes and the refit all run.

    inner `finetune` is exactly finetune(mode fast); `embedding` fits d_u (+ head) alone.
    """
    model.personal.reset()
    return train_personal(model, samples, epochs=finetune.epochs, lr=finetune.lr, rank_weight=finetune.rank_weight,
                          smooth_l1_weight=finetune.smooth_l1_weight, delta_l2=finetune.delta_l2, seed=seed,
                          progress=progress, device=device,
                          head_lr=finetune.head_lr if inner == "finetune" else 0.0, offset_scope=finetune.offsets,
                          readout=True)


def train_episodes(model: CropScorer, users: Sequence[Sequence[Sample]], *, epochs: int, lr: float,
                   rank_weight: float, smooth_l1_weight: float, finetune: FinetuneConfig, support: int = 5,
                   inner: str = "finetune", weight_decay: float = 0.0, seed: int = 0, progress: bool = False,
                   device: Optional[torch.device] = None, exclude_prefixes: Sequence[str] = (),
                   proximal_mu: float = 0.0) -> TrainLog:
    """Episodic prior training: the SHARED part learns so that a few-shot personal fit works.

    Each epoch, every user (shuffled) gives one episode: `support` random images (at most all but
    one) fit the personal part with `personal_fit` (shared frozen); then every other image of that
    user is one Adam step of the shared part with the fitted personal part held fixed (first-order:
    no gradient through the fit). The personal part is reset after each episode, so the model
    leaves with d_u = 0. Used by the centralized prior stage (all users) and by a device's round
    (its own images: `users` holds one list).
    """
    log = TrainLog("episodic")
    parameters = trainable_shared_parameters(model, exclude_prefixes)
    pools = [list(u) for u in users if len(u) >= 2]
    if epochs <= 0 or not pools or not parameters:
        return log
    device = device or next(model.parameters()).device
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    anchors = [p.detach().clone() for p in parameters] if proximal_mu > 0 else None
    personal_params = list(model.personal.parameters())
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    bar = tqdm(total=epochs * len(pools), desc="episodes", disable=not progress, leave=False)
    for _ in range(epochs):
        total, count = 0.0, 0
        for user_index in rng.permutation(len(pools)):
            pool = pools[user_index]
            order = rng.permutation(len(pool))
            k = max(1, min(support, len(pool) - 1))
            personal_fit(model, [pool[i] for i in order[:k]], finetune, inner=inner,
                         seed=int(rng.integers(2 ** 31)), device=device)
            for p in personal_params:
                p.requires_grad_(False)
            model.train()
            try:
                for i in order[k:]:
                    sample = pool[i]
                    features = model.crop_features(encode_sample(model, sample, device), sample.boxes.to(device))
                    loss = crop_loss(model.combine(features), sample.scores.to(device), rank_weight,
                                     smooth_l1_weight, **model_loss_options(model.config))
                    if anchors is not None:
                        loss = loss + 0.5 * proximal_mu * sum((p - a).pow(2).sum()
                                                              for p, a in zip(parameters, anchors))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach())
                    count += 1
                    log.steps += 1
            finally:
                for p in personal_params:
                    p.requires_grad_(True)
                model.eval()
            bar.update(1)
        log.epoch_losses.append(total / max(count, 1))
    bar.close()
    model.personal.reset()
    log.seconds = time.perf_counter() - start
    return log


def finetune(model: CropScorer, crop_sets: Sequence[CropSet], config: Config, cache: SampleCache,
             device: Optional[torch.device] = None) -> TrainLog:
    """Stage finetune for one user, from the prior: d_u starts at 0 (the population prior).

    mode fast: d_u (+ personal head) and the personal crop-head offsets (head_lr) on cached
    features; mode full: every weight, as the reference does (the model's shared weights change,
    so that model stays on the device).
    """
    cfg = config.finetune
    model.personal.reset()
    samples = cache.samples(crop_sets)
    if cfg.mode == "fast":
        return personal_fit(model, samples, cfg, seed=config.seed, device=device, progress=config.progress)
    offsets = {id(p) for p in model.personal.offset_parameters()}  # redundant with the weights they offset
    parameters = [p for p in model.parameters() if id(p) not in offsets]
    return run_epochs(model, samples, parameters, epochs=cfg.epochs, lr=cfg.lr, rank_weight=cfg.rank_weight,
                      smooth_l1_weight=cfg.smooth_l1_weight, seed=config.seed, stage="finetune",
                      progress=config.progress, device=device)


@torch.no_grad()
def predict(model: CropScorer, samples: Sequence[Sample], personal: bool = True,
            device: Optional[torch.device] = None) -> list[np.ndarray]:
    """Scores of every candidate of every sample (eval mode)."""
    features = cached_crop_features(model, samples, device, personal)
    return [model.combine(f, personal=personal).float().cpu().numpy() for f in features]


def evaluate(model: CropScorer, crop_sets: Sequence[CropSet], cache: SampleCache, personal: bool = True,
             device: Optional[torch.device] = None) -> dict:
    """crop_metrics of the model's scores against the annotated scores, plus counts."""
    samples = cache.samples(crop_sets)
    preds = predict(model, samples, personal, device)
    metrics = crop_metrics(preds, [s.scores.numpy() for s in samples])
    metrics["candidates"] = int(sum(len(p) for p in preds))
    return metrics
