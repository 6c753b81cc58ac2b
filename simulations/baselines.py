"""The centralized comparison: each baseline trained on the same data, scored by one protocol.

Every number comes from pic_core.protocol (few-shot images from the user's `train` split,
scores on the user's unseen `test` split, population mean with a 95% CI); this module only
says which model each method scores with:

  generic      the pre-stage model: objective score only (its subjective branch is never
               trained in the pre stage, so e_0 = d_u = 0)
  pre-finetune the pre-stage model personalized by the same few-shot path (the honest baseline;
               pre-finetune-du: personal state d_u alone); see simulations/evaluation.py
  prior        the prior-stage model with d_u = 0: the population prior, not personalized
  local        a fresh CropScorer trained from scratch on the user's N shots alone (full model)
  centralized  centralized PIC: pre -> prior -> finetune d_u on the user's N shots
               (centralized-du: d_u alone, no crop-head offsets; centralized-compact: d_u +
               the objective readout's offsets)
  oracle       the user's own scores: the ceiling (1.0 on every accuracy)

No stage trains on a test image: the pre stage drops generic.csv rows of test images, the
prior stage reads the `prior` split, fine-tuning and local-only read the first N `train` images.
"""
from __future__ import annotations

import copy
import logging
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from pic_core.config import Config
from pic_core.data import DataError
from pic_core.data.dataset import Dataset
from pic_core.data.records import UserData
from pic_core.model import CropScorer
from pic_core.protocol import PopulationResult, evaluate_users, few_shot_sets, oracle_result, pretrain_sets
from pic_core.samples import SampleCache
from pic_core.runtime import set_seed
from pic_core.train import TrainLog, pretrain, run_epochs, train_prior

from .evaluation import ROW_LABELS, objective_only  # noqa: F401  (objective_only: re-exported)

log = logging.getLogger("fedpic.baselines")

METHODS = {m: ROW_LABELS[m] for m in ("generic", "pre-finetune", "pre-finetune-du", "prior", "local",
                                     "centralized", "centralized-du", "centralized-compact", "oracle")}
"""Method ids written into results files, and their labels in reports."""

PersonalHook = Callable[[UserData, CropScorer], None]


@dataclass
class LocalOnlySettings:
    """How the local-only baseline trains its per-user model (losses follow config.finetune)."""

    epochs: int = 30
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"local-only epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"local-only lr must be > 0, got {self.lr}")


def load_users(dataset: Dataset) -> list[UserData]:
    """Every user of the dataset; DataError when there is none."""
    users = list(dataset.users())
    if not users:
        raise DataError(f"{dataset.root}: no users/*.csv: no population to evaluate")
    return users


def train_generic(dataset: Dataset, users: Sequence[UserData], config: Config, cache: SampleCache,
                  device: Optional[torch.device] = None) -> tuple[CropScorer, TrainLog]:
    """Stage pre on generic.csv without the users' test images; the model every method starts from."""
    generic = dataset.generic()
    if not generic:
        raise DataError(f"{dataset.root}: no generic.csv: the pre stage has nothing to train on")
    sets = pretrain_sets(generic, users)
    if not sets:
        raise DataError(f"{dataset.root}: every generic.csv image is some user's test image")
    set_seed(config.seed)
    model = CropScorer(config.model).to(device or "cpu")
    return model, pretrain(model, sets, config, cache, device)


def train_prior_model(pre_model: CropScorer, users: Sequence[UserData], config: Config, cache: SampleCache,
                      device: Optional[torch.device] = None) -> tuple[CropScorer, TrainLog]:
    """Stage prior from a copy of the pre model, on every user's `prior` split (the pre model is kept)."""
    pools = {u.user_id: u.split("prior") for u in users}
    pools = {uid: sets for uid, sets in pools.items() if sets}
    if not pools:
        raise DataError("no user has images in the `prior` split: the prior stage has nothing to train on")
    set_seed(config.seed)
    model = copy.deepcopy(pre_model)
    train_log, _ = train_prior(model, pools, config, cache, device)
    return model, train_log


def evaluate_generic(pre_model: CropScorer, users: Sequence[UserData], config: Config, shots: int,
                     cache: SampleCache, device: Optional[torch.device] = None) -> PopulationResult:
    """Method `generic`: the pre-stage objective scorer, the same for every user."""
    return evaluate_users(objective_only(pre_model), users, config, shots, method="generic", cache=cache,
                          personalize=False, device=device)


def evaluate_prior(prior_model: CropScorer, users: Sequence[UserData], config: Config, shots: int,
                   cache: SampleCache, device: Optional[torch.device] = None) -> PopulationResult:
    """Method `prior`: the prior model scored with e_0 alone (d_u = 0)."""
    return evaluate_users(prior_model, users, config, shots, method="prior", cache=cache, personalize=False,
                          device=device)


def evaluate_centralized(prior_model: CropScorer, users: Sequence[UserData], config: Config, shots: int,
                         cache: SampleCache, device: Optional[torch.device] = None,
                         on_user: Optional[PersonalHook] = None) -> PopulationResult:
    """Method `centralized`: fine-tune each user from the prior on N shots (config.finetune)."""
    return evaluate_users(prior_model, users, config, shots, method="centralized", cache=cache, device=device,
                          on_user=on_user)


def train_local_only(user: UserData, shots: int, config: Config, settings: LocalOnlySettings, cache: SampleCache,
                     device: Optional[torch.device] = None) -> CropScorer:
    """A fresh model trained from scratch, every weight, on this user's N shots alone.

    Seeded from (config.seed, CRC32 of the user id), so a user's model does not depend
    on which users were trained before it.
    """
    set_seed(config.seed * 1_000_003 + zlib.crc32(user.user_id.encode()))
    model = CropScorer(config.model).to(device or "cpu")
    samples = cache.samples(few_shot_sets(user, shots))
    cfg = config.finetune
    run_epochs(model, samples, model.parameters(), epochs=settings.epochs, lr=settings.lr,
               rank_weight=cfg.rank_weight, smooth_l1_weight=cfg.smooth_l1_weight, seed=config.seed,
               stage=f"local[{user.user_id}]", progress=False, device=device)
    return model.eval()


def evaluate_local_only(users: Sequence[UserData], config: Config, shots: int, cache: SampleCache,
                        settings: Optional[LocalOnlySettings] = None,
                        device: Optional[torch.device] = None) -> PopulationResult:
    """Method `local`: each user's own from-scratch model, scored on their test images."""
    settings = settings or LocalOnlySettings()
    reference = CropScorer(config.model, load_pretrained=False)  # only carries the config into evaluate_users
    return evaluate_users(reference, users, config, shots, method="local", cache=cache, device=device,
                          model_for_user=lambda u: train_local_only(u, shots, config, settings, cache, device))


def evaluate_oracle(users: Sequence[UserData], shots: int) -> PopulationResult:
    """Method `oracle`: the users' own scores (protocol.oracle_result)."""
    return oracle_result(users, shots)


def relabel(result: PopulationResult, shots: int) -> PopulationResult:
    """The same per-user figures filed under another shots value (for methods that do not use shots)."""
    return PopulationResult(result.method, shots, copy.deepcopy(result.per_user))
