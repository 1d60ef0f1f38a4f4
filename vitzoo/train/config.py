"""The training run's configuration: :class:`TrainConfig`, its loading from YAML and ``key=value`` overrides, and
the checks every value passes before a model is built or a file is written.

Each failed check raises :class:`ConfigError` with one line that names the key and its valid range.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitzoo.ops.normalize_erase.reference import ERASE_MODES

# --precision / precision: -> accelerate's mixed_precision.
PRECISIONS = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}
DATASETS = ("folder", "packed", "fashion_mnist")


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line that says what to fix."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (at most 300 characters), for one-line error reports; a first line that
    only announces the next (torch's "Error(s) in loading state_dict for X:") gets the next one appended."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text[:300]


@dataclass
class TrainConfig:
    """Every setting of a training run. YAML files and ``key=value`` overrides may set exactly these keys.

    Learning rate: ``lr`` if set, else ``lr_base * global_batch / lr_base_size`` with global_batch = batch_size x
    processes x grad_accum (linear scaling as in DeiT and timm's train.py). ``warmup_lr`` and ``min_lr`` are absolute.
    The schedule is timm's, stepped per optimizer update; the run lasts ``epochs + cooldown_epochs`` epochs.
    ``aug_repeats`` > 1 is repeated augmentation (DeiT's recipe, timm's ``--aug-repeats``): each epoch draws
    ``1 / aug_repeats`` of the images, each ``aug_repeats`` times in a row with its own augmentation, for as many
    samples as an epoch without it.
    ``train_subset`` draws that many training samples per epoch (a new random subset each epoch); ``val_subset``
    evaluates the first samples of the val split only. ``max_steps`` stops after that many optimizer updates and
    ``time_limit`` after that many seconds of training (both then evaluate and checkpoint as at an epoch end).
    """

    # model
    model: str = "deit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=dict)
    img_size: int | None = None
    patch_size: int | None = None
    in_chans: int | None = None
    num_classes: int | None = None
    drop_path: float = 0.1
    # EfficientViT's scheduled drop path: the rates times the training progress after the warm-up (0 -> 1)
    drop_path_ramp: bool = False
    # data
    dataset: str = "folder"  # folder (ImageFolder layout), packed (a vitzoo-pack store) or fashion_mnist
    data_dir: str | None = None
    train_subset: int | None = None
    aug_repeats: int = 0  # 0 or 1: off
    val_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int | None = None
    workers: int = 4
    crop_pct: float | None = None
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    re_mode: str = "pixel"
    color_jitter: float = 0.4
    hflip: float = 0.5
    crop_pad: int = 2  # Fashion-MNIST: pad-and-random-crop margin in pixels (0 = no crop augmentation)
    scale: list = field(default_factory=lambda: [0.08, 1.0])
    train_interpolation: str = "random"
    # RandAugment on whole batches on the training device (vitzoo.train.rand_augment) instead of in the loader
    # workers: for hosts whose cores cannot augment as fast as the GPU trains. Fashion-MNIST: its crop and flip.
    augment_on_device: bool = False
    # JPEG decoding and the random-resized crops on the training device too (vitzoo.train.device_decode): for hosts
    # whose cores cannot even decode as fast as the GPU trains. With a RandAugment policy it needs augment_on_device;
    # no other auto_augment policy, and no colour jitter.
    decode_on_device: bool = False
    # The workers decode (Pillow) and the random-resized crops run on the training device, with the rest of the
    # device stage: for hosts whose cores decode faster than the device's JPEG decoder but cannot also crop and
    # augment. Same conditions as decode_on_device, which crops on the device already.
    crop_on_device: bool = False
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    bce_loss: bool = False
    # optimisation
    epochs: int = 300
    max_steps: int | None = None
    time_limit: float | None = None
    grad_accum: int = 1
    opt: str = "adamw"
    lr: float | None = None
    lr_base: float = 5e-4
    lr_base_size: int = 512
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    opt_betas: list = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float | None = None
    sched: str = "cosine"
    warmup_epochs: float = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 0
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    precision: str = "bf16"
    compile: str | None = None  # torch.compile mode of the training forward; None: eager
    # replay the eager training forward and backward from CUDA graphs (vitzoo.train.cuda_graph): one CUDA process
    cuda_graph: bool = False
    # channels-last memory format for the model and the training batches (timm's --channels-last): convolutions and
    # BatchNorm of convolutional backbones (QT-ViT) take their NHWC kernels
    channels_last: bool = False
    seed: int = 0
    # bookkeeping
    output: str | None = None  # None: a fresh output/train/<date-time>-<model>-<dataset>
    log_interval: int = 50
    checkpoint_interval: int = 0
    checkpoint_keep: int = 2
    resume: str | None = None
    progress: bool = True

    @classmethod
    def keys(cls) -> list[str]:
        """Return the valid configuration keys."""
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain dict (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                **settings: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML file, then ``settings``, then ``key=value`` overrides (YAML values).

    Raises:
        ConfigError: an unknown key, a malformed override or a bad value, with a one-line message naming the key and
            the valid ones.
    """
    valid = TrainConfig.keys()
    values: dict[str, Any] = {}
    if path is not None:
        if Path(path).is_dir():
            raise ConfigError(f"config file {path} is a folder; pass a YAML file such as configs/fashion_mnist.yaml")
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not a UTF-8 text file; pass a YAML file") from None
        loaded = _parse_yaml(text, f"config file {path}") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of key: value")
        values.update(_checked(loaded, valid, f"in {path}"))
    values.update(_checked({k: v for k, v in settings.items() if v is not None}, valid, "given"))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value; valid keys: {', '.join(valid)}")
        values.update(_checked({key.strip(): _parse_yaml(text, f"override {item!r}")}, valid, "in overrides"))
    config = TrainConfig(**values)
    validate_config(config)
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (YAML keeps the last one silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    keys = [loader.construct_object(key, deep=True) for key, _ in node.value]
    for key in keys:
        if keys.count(key) > 1:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", node.start_mark)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{where} is not valid YAML{position}: {problem}") from None


def _checked(values: dict, valid: list[str], where: str) -> dict:
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    checked = {}
    for key, value in values.items():
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown config key {key!r} {where}; {hint}valid keys: {', '.join(valid)}")
        checked[key] = _coerce(key, value, types[key])
    return checked


def _coerce(key: str, value: Any, type_name: str) -> Any:
    # YAML 1.1 reads "5e-4" (no dot) as a string, so numbers are converted by the field's declared type.
    if value is None:
        if "None" not in type_name:
            raise ConfigError(f"config key {key!r} cannot be null")
        return None
    base = type_name.split("|")[0].strip()
    try:
        if base == "float" and not isinstance(value, bool):
            return float(value)
        if base == "int" and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        pass
    else:
        if base == "bool" and not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        if base == "str" and not isinstance(value, str) and key not in _CHOICE_KEYS:
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        if base not in ("float", "int"):
            return value
    words = {"int": "an integer", "float": "a number", "str": "a string"}
    raise ConfigError(f"config key {key!r} must be {words.get(base, base)}, got {value!r}")


# keys whose values validate_config checks against a list of choices (its message lists them)
_CHOICE_KEYS = ("precision", "dataset", "compile", "sched", "re_mode", "train_interpolation")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly")
RE_MODES = ERASE_MODES  # timm's random-erasing fills
INTERPOLATIONS = ("random", "bilinear", "bicubic", "nearest")


def _positive(value: Any) -> bool:
    return value > 0 and math.isfinite(value)


def _non_negative(value: Any) -> bool:
    return value >= 0 and math.isfinite(value)


def _fraction(value: Any) -> bool:  # [0, 1]
    return 0 <= value <= 1


def _below_one(value: Any) -> bool:  # [0, 1)
    return 0 <= value < 1


# (key, test, the valid range in words); None passes for the keys whose type allows it.
_VALUE_RULES: tuple[tuple[str, Any, str], ...] = (
    ("img_size", _positive, "a positive integer or null"),
    ("patch_size", _positive, "a positive integer or null"),
    ("in_chans", _positive, "a positive integer or null"),
    ("num_classes", lambda v: v >= 2, "an integer >= 2 or null"),
    ("drop_path", _below_one, "in [0, 1)"),
    ("train_subset", _positive, "a positive integer or null"),
    ("aug_repeats", _non_negative, "an integer >= 0 (0: off)"),
    ("val_subset", _positive, "a positive integer or null"),
    ("batch_size", _positive, "a positive integer"),
    ("eval_batch_size", _positive, "a positive integer or null"),
    ("workers", _non_negative, "an integer >= 0"),
    ("crop_pct", lambda v: 0 < v <= 1, "in (0, 1] or null"),
    ("re_prob", _fraction, "in [0, 1]"),
    ("color_jitter", _non_negative, "a number >= 0"),
    ("hflip", _fraction, "in [0, 1]"),
    ("crop_pad", _non_negative, "an integer >= 0"),
    ("mixup", _non_negative, "a number >= 0"),
    ("cutmix", _non_negative, "a number >= 0"),
    ("mixup_prob", _fraction, "in [0, 1]"),
    ("mixup_switch_prob", _fraction, "in [0, 1]"),
    ("smoothing", _below_one, "in [0, 1)"),
    ("epochs", _positive, "a positive integer"),
    ("max_steps", _positive, "a positive integer or null"),
    ("time_limit", _positive, "a positive number of seconds or null"),
    ("grad_accum", _positive, "a positive integer"),
    ("lr", _positive, "a positive finite number or null"),
    ("lr_base", _positive, "a positive finite number"),
    ("lr_base_size", _positive, "a positive integer"),
    ("weight_decay", _non_negative, "a finite number >= 0"),
    ("opt_eps", _positive, "a positive finite number"),
    ("clip_grad", _positive, "a positive finite number or null"),
    ("warmup_epochs", _non_negative, "a number >= 0"),
    ("warmup_lr", _non_negative, "a finite number >= 0"),
    ("min_lr", _non_negative, "a finite number >= 0"),
    ("cooldown_epochs", _non_negative, "an integer >= 0"),
    ("model_ema_decay", _fraction, "in [0, 1]"),
    ("seed", lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    ("log_interval", _positive, "a positive integer"),
    ("checkpoint_interval", _non_negative, "an integer >= 0 (0: only at epoch ends)"),
    ("checkpoint_keep", _positive, "a positive integer"),
)


def check_choice(key: str, value: Any, choices: Iterable[str], nullable: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices`` (or None, with ``nullable``)."""
    choices = tuple(choices)
    if value is None and nullable:
        return
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}{' or null' if nullable else ''}, got {value!r}")


def check_values(config: TrainConfig, keys: Iterable[str] | None = None) -> None:
    """Check the numeric ranges of ``keys`` (default: all); raise :class:`ConfigError` naming the valid range."""
    for key, test, valid in _VALUE_RULES:
        value = getattr(config, key)
        if (keys is None or key in keys) and value is not None and not test(value):
            raise ConfigError(f"{key} must be {valid}, got {value!r}")


def validate_config(config: TrainConfig) -> None:
    """Check every value before anything is created or written; the error names the key and its valid range.

    Raises:
        ConfigError: the first bad value.
    """
    check_values(config)
    check_choice("precision", config.precision, PRECISIONS)
    check_choice("dataset", config.dataset, DATASETS)
    check_choice("compile", config.compile, COMPILE_MODES, nullable=True)
    check_choice("sched", config.sched, SCHEDULERS)
    check_choice("re_mode", config.re_mode, RE_MODES)
    check_choice("train_interpolation", config.train_interpolation, INTERPOLATIONS)
    from timm.optim import list_optimizers

    # timm also accepts a 'lookahead_' prefix on any optimizer.
    if config.opt.lower().removeprefix("lookahead_") not in list_optimizers():
        raise ConfigError(f"opt must be a timm optimizer ({', '.join(list_optimizers()[:12])}, ...; "
                          f"timm.optim.list_optimizers() lists all), got {config.opt!r}")
    if not (isinstance(config.opt_betas, list) and len(config.opt_betas) == 2
            and all(isinstance(b, int | float) and _below_one(b) for b in config.opt_betas)):
        raise ConfigError(f"opt_betas must be two numbers in [0, 1), got {config.opt_betas!r}")
    if not (isinstance(config.scale, list) and len(config.scale) == 2
            and all(isinstance(v, int | float) for v in config.scale) and 0 < config.scale[0] <= config.scale[1] <= 1):
        raise ConfigError(f"scale must be [min, max] with 0 < min <= max <= 1, got {config.scale!r}")
    if (config.augment_on_device and config.dataset != "fashion_mnist"
            and not str(config.auto_augment or "").startswith("rand")):
        raise ConfigError("augment_on_device moves RandAugment to the device and needs a RandAugment auto_augment "
                          f"('rand-...'), got {config.auto_augment!r}; set augment_on_device=false")
    if config.decode_on_device and config.crop_on_device:
        raise ConfigError("decode_on_device crops on the device already; set crop_on_device=false (the workers then "
                          "decode nothing) or decode_on_device=false (the workers decode)")
    if config.decode_on_device and config.dataset == "packed":
        raise ConfigError("decode_on_device decodes JPEG files; a packed store holds decoded pixels: set "
                          "decode_on_device=false and crop_on_device=true to crop them on the device")
    for key in ("decode_on_device", "crop_on_device"):
        if not getattr(config, key):
            continue
        if config.dataset == "fashion_mnist":
            raise ConfigError(f"{key} crops image folders' images; Fashion-MNIST has no files to crop, "
                              f"set {key}=false")
        if config.auto_augment and not config.augment_on_device:
            raise ConfigError(f"{key} leaves the workers no crops to RandAugment; set augment_on_device=true too "
                              "(RandAugment then follows the crops on the device)")
        if not config.auto_augment and config.color_jitter:
            raise ConfigError(f"{key} does not implement color_jitter (timm applies it when auto_augment is unset); "
                              f"set color_jitter=0 or {key}=false")
    if config.cuda_graph and config.compile:
        raise ConfigError(f"cuda_graph and compile={config.compile!r} both remove the host cost; pick one "
                          "(compile=reduce-overhead is torch.compile's own CUDA graphs)")
    if mixup_active(config) and config.batch_size % 2:
        raise ConfigError(f"batch_size must be even when mixup/cutmix is on (timm Mixup mode 'batch'), "
                          f"got {config.batch_size}")
    channels = {"folder": 3, "packed": 3, "fashion_mnist": 1}.get(config.dataset)
    if config.in_chans is not None and channels is not None and config.in_chans != channels:
        raise ConfigError(f"in_chans={config.in_chans}, but dataset {config.dataset!r} gives {channels}-channel "
                          f"images; set in_chans={channels} or null")
    check_auto_augment(config.auto_augment)
    if config.lr is not None and config.min_lr > config.lr:
        raise ConfigError(f"min_lr ({config.min_lr}) must not exceed lr ({config.lr})")
    check_model_kwargs(config)
    for key in ("img_size", "patch_size", "in_chans", "num_classes"):
        if getattr(config, key) is not None and key in config.model_kwargs:
            raise ConfigError(f"{key} is set both as a config key and in model_kwargs; keep one")
    overlay = config.model_kwargs.get("pretrained_cfg_overlay")
    if overlay is not None:
        if not isinstance(overlay, dict):
            raise ConfigError(f"model_kwargs.pretrained_cfg_overlay must be a mapping, got {overlay!r}")
        if overlay.get("file") and not Path(overlay["file"]).is_file():
            raise ConfigError(f"model_kwargs.pretrained_cfg_overlay file {overlay['file']} does not exist")
    if config.resume not in (None, "auto") and not Path(config.resume).is_dir():
        raise ConfigError(f"resume checkpoint {config.resume} does not exist; pass 'auto' or a "
                          "<run>/checkpoints/step-* folder")
    if config.resume == "auto" and not config.output:
        raise ConfigError("resume=auto needs --output: the run folder to continue")


# the numeric sections timm reads in a RandAugment / AugMix policy string (it skips any other section silently)
_POLICY_SECTIONS = {"rand": "(mstd|mmax|inc|m|n|p)", "augmix": "(mstd|m|w|d|a|b)"}


def check_auto_augment(value: str | None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is None or a policy timm builds: 'rand-...' (RandAugment),
    'augmix-...' or an AutoAugment policy ('original', 'v0', ...), with no section timm would skip."""
    if value is None:
        return
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    kind, *sections = value.split("-")
    try:
        if kind in _POLICY_SECTIONS:
            for section in sections:
                if not (kind == "rand" and section.startswith("t")) and \
                        not re.fullmatch(_POLICY_SECTIONS[kind] + r"\d+(\.\d+)?", section):
                    raise ValueError(f"unknown section {section!r}")
        build = {"rand": rand_augment_transform, "augmix": augment_and_mix_transform}.get(kind, auto_augment_transform)
        build(value, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except (AssertionError, ValueError, KeyError) as error:
        reason = error or type(error).__name__
        raise ConfigError(f"auto_augment {value!r} is not a timm policy such as 'rand-m9-mstd0.5-inc1', "
                          f"'augmix-m5-w4-d2' or 'original' ({reason}); or null for none") from None


def check_model_kwargs(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` unless ``model_kwargs`` is a mapping of names to values. A key without a value is
    refused: timm drops None-valued kwargs, and YAML reads ``{embed_dim:16}`` (no space after the colon) as the key
    'embed_dim:16' with no value, so the model would silently keep its default size."""
    if not isinstance(config.model_kwargs, dict):
        raise ConfigError(f"model_kwargs must be a mapping such as {{embed_dim: 64, depth: 4}}, "
                          f"got {config.model_kwargs!r}")
    for key, value in config.model_kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"model_kwargs key {key!r} is not an argument name; write the mapping with a space after "
                              "each colon: {embed_dim: 64, depth: 4}")
        if value is None:
            raise ConfigError(f"model_kwargs.{key} has no value; write {{{key}: <value>}} (a space after the colon)")


def mixup_active(config: TrainConfig) -> bool:
    """Whether mixup or cutmix is applied."""
    return config.mixup_prob > 0 and (config.mixup > 0 or config.cutmix > 0)


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` if ``name`` is not a registered timm (or vitzoo) model."""
    import timm

    from vitzoo.models import similar_models_hint  # importing registers the vitzoo models with timm

    if not timm.is_model(name):
        raise ConfigError(f"unknown model {name!r}{similar_models_hint(name)}; vitzoo.list_models() lists the zoo's "
                          "models, timm.list_models() timm's")
