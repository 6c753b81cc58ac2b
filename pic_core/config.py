"""Typed YAML configuration: every key is known, every value checked, errors name the field.

A config file is a mapping of sections (model, pre, prior, finetune, ...). Missing keys take
the defaults below; an unknown key or a value of the wrong type is an error that names the
file and the dotted field and lists the valid keys.

Config files ship with the package (pic_core/configs/*.yaml). A config is named either by
a path to a YAML file or by the name of a shipped one (`demo`, `tiny`, ...): see resolve_config.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the field."""


Scalar = Union[bool, int, float, str, None]
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; a bigger one is a mistake or an attack


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors/aliases: an alias bomb (a few lines expanding to billions of
    nodes when the config is copied or serialized) fails at its first alias."""

    def compose_node(self, parent, index):  # noqa: ANN001  (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a fedpic config",
                                              event.start_mark)
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    """Parse config YAML: no aliases, at most MAX_CONFIG_BYTES (yaml.YAMLError / ConfigError)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config text of {len(text)} characters (at most {MAX_CONFIG_BYTES})")
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506  (a SafeLoader subclass)


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"  # efficientnet_lite0 | mobilenet_v2 (docs/models.md)
    pretrained: bool = True  # start from ImageNet weights (Lite0: its pip package; MobileNetV2: backbone_weights)
    width: float = 1.0  # backbone width multiplier (Lite0's ImageNet weights need 1.0)
    channels: int = 8  # C: channels of the fused stride-16 map
    align_size: int = 9  # A: RoI/RoD output size
    short_side: int = 256  # network input: short side, before rounding to a multiple of 32
    hidden: int = 768  # objective head, first layer
    feature_dim: int = 128  # h_k, the crop feature
    embed_dim: int = 16  # preference space: e_0, d_u, g
    context_dim: int = 32  # dual-attention image context
    preference_hidden: int = 64  # hidden width of g (the preference head), one ReLU layer
    preference_readout: float = 0.0  # > 0: g also carries the objective head's crop feature h_k times this
    # scale, so e_u (embed_dim + feature_dim floats) re-weighs the objective's own features too
    dropout: float = 0.5
    candidates: str = "grid"  # what `crop` scores without --aspect: grid (GAIC anchors) | free (pic_core/candidates.py)
    personal_head: bool = False  # a small per-user linear head over g, kept on the device
    personal_offsets: bool = True  # per-user offsets on the crop head's weights (fast path), kept on the device
    fusion: str = "fedpic"  # fedpic: taps features[:7]/[7:14]/[14:] (incl. the 1280 conv), avg-pool f3, bilinear f5;
    # gaic (MobileNetV2 only): f5 = the 320-channel block output, f3 and f5 resized bilinearly with
    # align_corners=True and f5 weighted 0.5, as GAIC's shared multi-scale model
    rank_loss: str = "fedpic"  # fedpic: Phi(diff/sqrt2), ties dropped | reference: Phi(diff), ties at 0.5 (losses.py)
    targets: str = "image"  # image: z-score per image | global: (score - target_mean) / target_std, as GAIC
    target_mean: float = 2.95  # GAICD MOS mean (GAIC's MOS_MEAN), used with targets: global
    target_std: float = 0.8  # GAICD MOS std (GAIC's MOS_STD)
    backbone_weights: Optional[str] = None  # local ImageNet weights file (MobileNetV2: torchvision or GAIC/PIC
    # layout; Lite0: the package's layout, default the package's file); never downloaded


@dataclass
class PreConfig:
    epochs: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    smooth_l1_weight: float = 1.0
    rank_weight: float = 0.0
    pretext_weight: float = 0.0  # annotator-classification pretext (CPC-style data with per-annotator scores)
    max_images: Optional[int] = None
    augment: bool = False  # GAIC's augmentation: photometric distortion + mirror (pic_core/augment.py)
    crops_per_step: int = 0  # with augment: at most this many random candidates per image and step (GAIC: 64)
    split_list: Optional[str] = None  # GAICD split list JSON {"train": [...], "test": [...]} for a flat folder


@dataclass
class PriorConfig:
    epochs: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    rank_weight: float = 0.8
    smooth_l1_weight: float = 1.0
    schedule: str = "interleaved"  # interleaved (shuffle all users' images) | sequential (user after user)
    max_images_per_user: Optional[int] = None
    method: str = "joint"  # joint: a d_u per user trained with the shared part | episodic: learn to personalize
    support: int = 5  # episodic: support images per episode (the personal part is fitted on these)
    inner: str = "finetune"  # episodic: personal fit = the finetune fast path (finetune) | d_u alone (embedding)


OFFSET_SCOPES = ("all", "compact")
"""finetune.offsets: which crop-head offsets a fast fit changes (pic_core.model.COMPACT_OFFSETS)."""


@dataclass
class FinetuneConfig:
    epochs: int = 10
    lr: float = 1e-3
    shots: int = 5
    rank_weight: float = 1.0
    smooth_l1_weight: float = 0.0  # the reference adds 0.8 * SmoothL1; rank only measured better (benchmarks/RESULTS.md)
    mode: str = "fast"  # fast: d_u (+ personal head, at lr) and crop-head offsets (at head_lr) on cached features
    delta_l2: float = 0.0  # pull d_u towards 0 (the population prior)
    head_lr: float = 1.0e-3  # fast mode: lr of the personal crop-head offsets (0: d_u alone)
    offsets: str = "all"  # which offsets a fast fit changes: all (1.1 M floats) | compact (209 floats with d_u)


@dataclass
class FederationConfig:
    """The federated prior stage (server/, client/, `fedpic simulate`). Data only: no Flower here.

    Each round the server samples devices; each trains its d_u on its `prior` images with the
    shared model frozen, then the shared model with d_u fixed (FedRep-style), and sends back
    the SHARED update. Loss weights come from the `prior` section.
    """

    rounds: int = 10
    devices_per_round: int = 0  # > 0: sample exactly this many devices; 0: use `fraction`
    fraction: float = 1.0  # share of the population sampled per round when devices_per_round is 0
    eval_every: int = 1  # federated evaluation every N rounds (0: never; the last round always)
    eval_devices: int = 0  # > 0: devices evaluated per evaluation round; 0: use eval_fraction
    eval_fraction: float = 1.0
    min_replies: int = 1  # fewer valid updates than this: the round keeps the previous model
    strategy: str = "fedavg"  # fedavg | fedavgm | fedprox | fedadam | fedmedian | fedtrimmedavg | krum (Flower's classes)
    strategy_args: dict[str, Scalar] = field(default_factory=dict)  # that class's extra arguments (scalars), e.g. {eta: 0.01}
    local_epochs: int = 1  # epochs over the device's prior images for the shared part
    personal_epochs: int = 5  # epochs of d_u (+ personal head) before the shared part
    lr: float = 1.0e-3  # device Adam lr for the shared part
    personal_lr: float = 1.0e-2  # device Adam lr for d_u
    personal_l2: float = 0.0  # pull d_u towards 0 during the federated rounds
    max_images: Optional[int] = None  # cap on prior images a device uses per round
    fp16: bool = True  # upload float16 deltas instead of float32 weights
    freeze_backbone: bool = True  # keep the backbone taps from pre fixed; upload the heads only
    cache_features: bool = True  # with a frozen backbone, keep its outputs on the device's disk
    max_update_norm: Optional[float] = 50.0  # reject updates whose L2 norm exceeds this (null: no bound);
    # honest medians measured 0.6 (demo) to 5 (fed benchmark, round 1): docs/security.md
    outlier_factor: float = 10.0  # reject updates above factor x the round's median norm (0: off)
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies
    dp_clipping_norm: Optional[float] = None  # > 0: Flower's client-side fixed-clipping DP (needs fp16 and
    dp_noise_multiplier: float = 0.0  # freeze_backbone off: the clipping mod sees full weights of every key)
    secure_aggregation: bool = False  # Flower's SecAgg+: the server sees only the masked sum (fedavg, no DP)
    population: Optional[int] = None  # simulation: use the first N users of the dataset (default all)
    cpus_per_device: float = 1.0  # simulation: Ray CPUs per device (devices running at once = cores / this)
    threads_per_device: int = 1  # torch threads inside each simulated device
    ray_address: Optional[str] = None  # simulation: HOST:PORT of an existing Ray cluster (None: a fresh local Ray)
    refit: bool = True  # after the last round every device refits its personal state on the final model
    device_pool: Union[bool, str] = "auto"  # simulation: a few nodes play the sampled users (auto: > 2,000 users)


@dataclass
class EvaluationConfig:
    """Which evaluations the reports run (simulations/evaluation.py, docs/evaluation.md).

    Every method is scored on the whole population at its main N (finetune.shots, or the
    --shots of `fedpic baselines`); the accuracy-against-N curve adds the other `shots` on a
    sample of `curve_users` users (evenly spaced over the sorted ids), which keeps it cheap.
    """

    shots: list[int] = field(default_factory=lambda: [1, 3, 5, 10])  # N of the accuracy-against-N curve
    curve_users: int = 10  # users the curve is measured on (0: every user)
    du_only: bool = True  # also score the small-state rows (d_u alone; compact: d_u + objective readout)


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    pre: PreConfig = field(default_factory=PreConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")

_CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "model.backbone": ("efficientnet_lite0", "mobilenet_v2"),
    "prior.schedule": ("interleaved", "sequential"),
    "model.candidates": ("grid", "free"),
    "model.fusion": ("fedpic", "gaic"),
    "model.rank_loss": ("fedpic", "reference"),
    "model.targets": ("image", "global"),
    "prior.method": ("joint", "episodic"),
    "prior.inner": ("finetune", "embedding"),
    "finetune.mode": ("fast", "full"),
    "finetune.offsets": OFFSET_SCOPES,
    "federation.strategy": STRATEGIES,
    "federation.device_pool": (True, False, "auto"),
}


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        inner = (typing.get_args(tp) or (str, Any))[1]
        if inner is Any:
            return dict(value)
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: keys must be strings, got {key!r}")
            if isinstance(item, (dict, list, tuple)):
                raise ConfigError(f"{where}.{key}: expected a single value (number, string, true/false), "
                                  f"got a {type(item).__name__}")
            out[key] = _coerce(item, inner, f"{where}.{key}")
        return out
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"{dotted}: unknown key; valid keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
        choices = _CHOICES.get(dotted.split(":", 1)[-1])
        if choices and kwargs[key] not in choices:
            raise ConfigError(f"{dotted}: must be one of {', '.join(str(c).lower() for c in choices)}, got {kwargs[key]!r}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict:
    """A plain mapping (for checkpoints and logs)."""
    return dataclasses.asdict(config)


SHIPPED_DIR = Path(__file__).with_name("configs")
"""The configs installed with the package (package data)."""


def shipped_configs() -> list[str]:
    """Names of the configs that ship with fedpic."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def resolve_config(spec: Union[str, Path]) -> Path:
    """The YAML file a --config value names, from any working directory.

    1. an existing file (absolute, or relative to the working directory) is that file;
    2. a bare name (`demo`, `tiny.yaml`) is the shipped pic_core/configs/<name>.yaml;
    3. a missing `.../configs/<name>.yaml` (the layout before configs became package data)
       is the shipped config of that name.
    Anything else is a ConfigError naming the value and the shipped names.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml")
    if (path.parent == Path(".") or path.parent.name == "configs") and (SHIPPED_DIR / f"{stem}.yaml").is_file():
        return SHIPPED_DIR / f"{stem}.yaml"
    raise ConfigError(f"{spec}: no such config file, and not the name of a shipped config "
                      f"({', '.join(shipped_configs())})")


def parse_overrides(items: Sequence[str]) -> dict:
    """['a.b=3', 'c=x'] -> {'a.b': 3, 'c': 'x'} with YAML typing of the values (what --set takes)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = safe_yaml(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: {getattr(exc, 'problem', exc)}") from None
    return out


def load_config(path: Optional[Union[str, Path]] = None, cls: type = Config, overrides: Optional[dict] = None) -> Any:
    """Read a YAML config (a path or a shipped name, see resolve_config; None: the defaults),
    apply `overrides` (dotted keys), validate."""
    data: dict = {}
    if path is not None:
        path = resolve_config(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:  # found by tests/test_fuzz_readers.py
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        try:
            loaded = safe_yaml(text)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{line} malformed YAML: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
        node[parts[-1]] = value
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise
