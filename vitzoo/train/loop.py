"""The training loop on HF accelerate, with timm's data, optimizer, scheduler, loss and EMA pieces.

:func:`train` runs one :class:`~vitzoo.train.config.TrainConfig` in four steps: :func:`setup` (every check, then the
model, data, optimizer and run folder), :func:`train_one_epoch`, :func:`evaluate_and_checkpoint` after each epoch
(or when ``max_steps`` / ``time_limit`` stop the run) and :func:`finish`. accelerate owns devices, mixed precision,
gradient accumulation and data sharding; the timm scheduler stays outside ``prepare`` and is stepped by hand per
optimizer update; the EMA is evaluated under ``accelerator.autocast()``.

Trust: every config value, data folder, the output folder and the resume checkpoint are checked before a run writes
anything, each failure raising :class:`~vitzoo.train.config.ConfigError` with one line that says what to fix; a new
run never writes into a folder that holds another run.

Determinism: shuffling depends on (seed, epoch), the loader workers' augmentation on (seed, epoch, sample index) and
the step's own random draws (the device stage of image folders, mixup, drop path) on (seed, rank, epoch, batch index),
so a run resumed from a checkpoint replays exactly the draws of an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch.profiler import record_function

from vitzoo.train import cuda_graph
from vitzoo.train.checkpoint import (
    CHECKPOINT_PREFIX,
    RunState,
    find_resume_checkpoint,
    first_difference,
    load_checkpoint_into,
    remove_temporary_checkpoints,
    run_identity,
    save_checkpoint,
    write_atomic,
)
from vitzoo.train.config import (
    PRECISIONS,
    ConfigError,
    TrainConfig,
    check_model_name,
    first_line,
    mixup_active,
    validate_config,
)
from vitzoo.train.data import (
    DataError,
    DeviceAugment,
    EpochShuffleSampler,
    SkipUnreadable,
    build_dataset,
    loader_workers,
    report_unreadable,
    sample_seed,
    seed_everything,
    seed_host_draws,
    seed_torch,
)
from vitzoo.train.device_decode import (
    PROFILE_RANGES,
    EncodedBatch,
    collate_encoded,
    prepared_ahead,
    stage_stream,
)
from vitzoo.train.evaluate import eval_batch_stage, evaluate
from vitzoo.train.factories import (
    DropPathRamp,
    build_criterion,
    build_optimizer,
    build_transforms,
    create_model_from_config,
    dataset_classes,
    model_input_dtype,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

_logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint written before it is kept."""


class JsonLog:
    """Append-only JSON-lines log written by the main process."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **values: Any) -> None:
        """Append one record ``{"event": event, "time": unix seconds, **values}``."""
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"event": event, "time": round(time.time(), 3), **values}) + "\n")


def read_run_log(output: Path) -> list[dict[str, Any]]:
    """The records :class:`JsonLog` wrote to ``output/log.jsonl``, in order; none for a folder without a log. A line
    that is not JSON is skipped: a process stopped while writing leaves its last line cut."""
    log = output / "log.jsonl"
    records = []
    for line in log.read_text(encoding="utf-8").splitlines() if log.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def requested_output(config: TrainConfig) -> Path | None:
    """The run folder the config names: ``output``, else an explicit resume checkpoint's run folder, else None (a
    fresh timestamped folder, :func:`fresh_output`)."""
    if config.output:
        return Path(config.output)
    if config.resume not in (None, "auto"):
        return Path(config.resume).resolve().parent.parent
    return None


def read_saved_config(output: Path) -> dict:
    """The settings a run saved in ``output/config.yaml`` (empty for a file that holds no mapping).

    Raises:
        ConfigError: the file cannot be read or parsed.
    """
    saved_path = output / "config.yaml"
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as error:
        raise ConfigError(f"cannot read {saved_path} ({first_line(error)}); pass another --output") from None
    return saved if isinstance(saved, dict) else {}


def check_output_folder(config: TrainConfig) -> None:
    """Refuse to start a new run in a folder that holds files (another run's), unless resuming it.

    Raises:
        ConfigError: the folder is not empty and ``resume`` is not set, or it is not a folder.
    """
    output = requested_output(config)
    if output is None or not output.exists():
        return
    if not output.is_dir():
        raise ConfigError(f"output {output} is a file, not a folder; choose another --output")
    entries = sorted(entry.name for entry in output.iterdir())
    if not entries:
        return
    listed = ", ".join(entries[:4])
    if not config.resume:
        raise ConfigError(f"output folder {output} already holds a run ({listed}); pass --resume auto "
                          "to continue it, or another --output (unset: a fresh timestamped folder)")
    if config.resume != "auto":
        source = Path(config.resume).resolve().parent.parent
        if source != output.resolve():
            raise ConfigError(f"output folder {output} already holds a run ({listed}) and --resume {config.resume} "
                              f"belongs to {source}; continue that run with --output {source}, or start from its "
                              "checkpoint in an empty --output")
        return
    saved_path = output / "config.yaml"
    if (output / "checkpoints").is_dir():
        return  # each checkpoint's meta.json is compared with this run when it is read
    if not saved_path.is_file():
        raise ConfigError(f"output folder {output} holds files that are not a run's ({listed}); --resume auto "
                          "continues a run folder (config.yaml, checkpoints/): pass another --output")
    # a run stopped before its first checkpoint: it starts again from scratch, but only with the same settings
    difference = first_difference(read_saved_config(output), config)
    if difference:
        key, before, now = difference
        raise ConfigError(f"cannot resume {output}: its {key} is {before!r} ({saved_path}), this run's is {now!r}; "
                          "use that run's settings or another --output")


def fresh_output(config: TrainConfig, root: str | os.PathLike = Path("output") / "train") -> Path:
    """Create and return ``<root>/<YYYYmmdd-HHMMSS>-<model>-<dataset>`` (timm's layout), with ``-1``, ``-2``, ...
    appended when a run started in the same second took the name."""
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-{config.dataset}"
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create {root} for a fresh run folder ({error.strerror}); pass --output") from None
    for count in range(1000):
        candidate = base if count == 0 else base.with_name(f"{base.name}-{count}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"could not create a fresh run folder next to {base}")


def _run_folder(config: TrainConfig, accelerator) -> Path:
    """The run folder, the same on every process (the main process picks a fresh one's name)."""
    output = requested_output(config)
    if output is not None:
        return output
    from accelerate.utils import broadcast_object_list

    names = [str(fresh_output(config)) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(names)
    return Path(names[0])


def warn_about_changed_settings(config: TrainConfig, accelerator: Accelerator) -> None:
    """Warn where the launcher or the device does not give what the config asks for."""
    if not accelerator.is_main_process:
        return
    if config.precision == "fp16" and accelerator.device.type == "cpu":
        _logger.warning("precision=fp16 has no effect on CPU: the run trains in fp32 (precision=bf16 is CPU autocast)")
    # accelerate launch's simple launcher sets MASTER_ADDR for --num_processes > 1 but starts one process on CPU
    # unless --multi_cpu is given.
    if accelerator.num_processes == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" \
            and "MASTER_ADDR" in os.environ:
        _logger.warning("accelerate launch --cpu started one process: several CPU processes need --multi_cpu "
                        "(or torchrun); the run trains as a single process")


def mean_over_processes(total: torch.Tensor, count: int, accelerator: Accelerator) -> float:
    """The mean of the values whose sum on this process is ``total`` over ``count`` values, taken over the values
    of all processes (every process must call it at the same point: it is one collective)."""
    pair = torch.stack([total.detach().float().reshape(()), torch.tensor(float(count), device=total.device)])
    if accelerator.num_processes > 1:
        pair = accelerator.reduce(pair, reduction="sum")
    return (pair[0] / pair[1].clamp(min=1)).item()


@dataclass
class Training:
    """One run in progress: its checkpointed state and the parts built from its config."""

    run: RunState
    train_set: SkipUnreadable
    val_set: SkipUnreadable
    train_sampler: EpochShuffleSampler
    train_loader: Any  # prepared by accelerate
    device_tf: Callable | None  # device stage of the loader's uint8 or JPEG batches (DeviceAugment, GreyBatchAugment)
    val_loader: Any
    val_on_device: Callable | None  # device half of the eval transform (eval_batch_stage)
    forward: Callable  # the training forward (_training_forward)
    scheduler: Any
    total_epochs: int  # epochs + cooldown_epochs, as timm's scheduler counts them
    mixup: Any
    criterion: torch.nn.Module
    log: JsonLog
    output: Path
    last_checkpoint: Path | None
    start_time: float
    drop_path_ramp: DropPathRamp | None = None
    out_of_time: bool = False


def train(config: TrainConfig) -> dict[str, Any]:
    """Train (and evaluate every epoch) as ``config`` says; return the final metrics.

    Every check that can fail (config values, dataset folders, the model's kwargs, the output folder, the resume
    checkpoint) runs before the run folder is written, so a failed start leaves an existing run untouched.

    Raises:
        ConfigError: bad values, missing or unusable data, an occupied output folder, or a resume checkpoint that is
            damaged or belongs to another run.
        NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
    """
    training = setup(config)
    metrics: dict[str, Any] = {}
    if _stopped(training) and training.last_checkpoint is not None:
        run = training.run
        run.accelerator.print(f"{training.output} is already finished (epoch {run.epoch} of {training.total_epochs}, "
                              f"{run.num_updates} updates); nothing to train. Raise epochs or max_steps to train it "
                              "further")
    while not _stopped(training):
        loss_sum, loss_count, epoch_start = train_one_epoch(training)
        metrics = evaluate_and_checkpoint(training, loss_sum, loss_count, epoch_start)
    return finish(training, metrics)


def _stopped(training: Training) -> bool:
    run, max_steps = training.run, training.run.config.max_steps
    return (run.epoch >= training.total_epochs or training.out_of_time
            or bool(max_steps and run.num_updates >= max_steps))


def _build_data(config: TrainConfig, model: torch.nn.Module, classes: list[str]) -> tuple[Any, ...]:
    """Return the train and val datasets, the train sampler, both loaders (not yet prepared), the device stages of the
    training and the val batches (None: the loader's batches are the model's input) and the data config.

    Raises:
        ConfigError: a split that has no readable image.
    """
    from torch.utils.data import DataLoader

    train_tf, device_tf, eval_tf, data_config = build_transforms(config, model)
    try:
        train_set = build_dataset(config.dataset, config.data_dir, "train", train_tf, config.seed, classes=classes,
                                  encoded=config.decode_on_device)
        val_set = build_dataset(config.dataset, config.data_dir, "val", eval_tf, config.seed, limit=config.val_subset,
                                classes=classes, score_substitutes=False)
        train_set.check_readable()
        val_set.check_readable()
    except DataError as error:
        raise ConfigError(str(error)) from None
    train_sampler = EpochShuffleSampler(len(train_set), config.seed, num_samples=config.train_subset,
                                        repeats=config.aug_repeats)
    val_sampler = EpochShuffleSampler(len(val_set), config.seed, shuffle=False)
    # Persistent workers: restarting them each epoch costs their start-up and the batches they prefetch, which is
    # a noticeable share of a short epoch. The per-sample seeds still follow the epoch (SkipUnreadable.set_epoch).
    loader_args = {**loader_workers(config.workers), "pin_memory": torch.cuda.is_available(),
                   "persistent_workers": config.workers > 0}
    crops_on_device = config.decode_on_device or config.crop_on_device
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=train_sampler, drop_last=True,
                              collate_fn=collate_encoded if crops_on_device else None, **loader_args)
    val_loader = DataLoader(val_set, batch_size=config.eval_batch_size or 2 * config.batch_size, sampler=val_sampler,
                            **loader_args)
    return (train_set, val_set, train_sampler, train_loader, val_loader, device_tf, eval_batch_stage(eval_tf),
            data_config)


def setup(config: TrainConfig) -> Training:
    """Check everything, build the run's parts, restore a resume checkpoint and open the run folder.

    Raises:
        ConfigError: as :func:`train`.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration
    from timm.data import Mixup
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    validate_config(config)
    check_model_name(config.model)
    classes = dataset_classes(config)
    check_output_folder(config)

    # cpu=True without CUDA: accelerate then forms a gloo process group from torchrun's environment (else each
    # CPU process would train alone). non_blocking: the loaders' pinned batches go to the GPU without the host
    # waiting for the queued steps to finish first (a stack-sampled GPU run spent 16% of its training steps' host
    # time there, docs/benchmarks.md).
    accelerator = Accelerator(mixed_precision=PRECISIONS[config.precision], cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=config.grad_accum,
                              dataloader_config=DataLoaderConfiguration(even_batches=True, non_blocking=True))
    warn_about_changed_settings(config, accelerator)
    seed_everything(config.seed)  # model init is identical on every process and every run
    in_chans = config.in_chans or (1 if config.dataset == "fashion_mnist" else 3)
    num_classes = config.num_classes or len(classes)
    model = create_model_from_config(config, num_classes, in_chans)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    (train_set, val_set, train_sampler, train_loader, val_loader, device_tf, val_on_device,
     data_config) = _build_data(config, model, classes)
    if len(train_loader) < accelerator.num_processes:
        raise ConfigError(f"the training set has {len(train_sampler)} samples, fewer than one batch of "
                          f"{config.batch_size} per process; lower batch_size")

    global_batch = config.batch_size * accelerator.num_processes * config.grad_accum
    lr = config.lr if config.lr is not None else config.lr_base * global_batch / config.lr_base_size
    optimizer = build_optimizer(config, model, lr, fused=accelerator.device.type == "cuda")
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    if config.cuda_graph and (accelerator.device.type != "cuda" or accelerator.num_processes > 1):
        raise ConfigError(f"cuda_graph=true needs a single CUDA process, not {accelerator.num_processes} on "
                          f"{accelerator.device.type}; set cuda_graph=false")
    updates_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    # timm semantics: the run lasts epochs + cooldown_epochs (cooldown at min_lr), as in timm's train.py.
    scheduler, total_epochs = create_scheduler_v2(optimizer.optimizer, sched=config.sched, num_epochs=config.epochs,
                                                  warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr,
                                                  min_lr=config.min_lr, cooldown_epochs=config.cooldown_epochs,
                                                  step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    ema = None
    if config.model_ema:
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config.model_ema_decay,
                         use_warmup=config.model_ema_warmup)
    mixup = None
    if mixup_active(config):
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                      switch_prob=config.mixup_switch_prob, mode="batch", label_smoothing=config.smoothing,
                      num_classes=num_classes)
    criterion = build_criterion(config)
    output = _run_folder(config, accelerator)
    identity = run_identity(config, accelerator.num_processes, in_chans, num_classes, classes)
    run = RunState(config, accelerator, str(output), model, optimizer, ema, identity, data_config)
    resumed_from = _resume(run, output) if config.resume else None
    ramp = None
    if config.drop_path_ramp:  # before the step is compiled or captured: the ramp swaps the drop-path modules
        ramp = DropPathRamp(model, config.warmup_epochs * updates_per_epoch, config.epochs * updates_per_epoch)
    forward = _training_forward(config, model, data_config, accelerator.device)

    # Everything above only reads; from here on the run folder is written.
    if accelerator.is_main_process:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create the output folder {output} ({error.strerror}); pass another --output") \
                from None
        remove_temporary_checkpoints(output)
        write_atomic(output / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    log = JsonLog(output / "log.jsonl", accelerator.is_main_process)
    if resumed_from is not None:
        log.write("resume", checkpoint=str(resumed_from), epoch=run.epoch, num_updates=run.num_updates)
    if run.num_updates == 0 and run.batches_done == 0:
        log.write("start", model=config.model, lr=lr, global_batch=global_batch, processes=accelerator.num_processes,
                  output=str(output), params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 4))
    scheduler.step_update(run.num_updates)
    return Training(run, train_set, val_set, train_sampler, train_loader, device_tf, val_loader, val_on_device,
                    forward, scheduler, total_epochs, mixup, criterion, log, output, last_checkpoint=resumed_from,
                    start_time=time.time(), drop_path_ramp=ramp)


def _training_forward(config: TrainConfig, model: torch.nn.Module, data_config: dict,
                      device: torch.device) -> Callable:
    """The training forward: the prepared model, its torch.compile wrapper (``compile``), or its forward and backward
    replayed from CUDA graphs (``cuda_graph``). Checkpoints, EMA and evaluation use the plain module (the same
    parameters), so checkpoints do not depend on the choice."""
    if config.compile:
        return torch.compile(model, mode=config.compile)
    if not config.cuda_graph:
        return model
    # the dtype of the batches: each is copied into the graph's static input
    example = torch.randn(config.batch_size, *data_config["input_size"], device=device, dtype=model_input_dtype(config))
    if config.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    # accelerate's forward wrapper already runs the model under the run's autocast and returns fp32
    return cuda_graph.graphed_training_forward(model.train(), example, dtype=None, accumulates=config.grad_accum > 1)


def _resume(run: RunState, output: Path) -> Path | None:
    """Restore ``run`` from its resume checkpoint; return that checkpoint's folder (None: none found, a fresh start)."""
    accelerator = run.accelerator
    files = find_resume_checkpoint(run.config, output, run.identity, accelerator)
    if files is None:
        accelerator.print(f"no checkpoint under {output}/checkpoints; starting from scratch")
        return None
    load_checkpoint_into(run, files)
    run.last_finite_update = run.num_updates
    accelerator.print(f"resumed from {files.folder} (epoch {run.epoch}, update {run.num_updates})")
    return files.folder


def _batch_seed(training: Training, batch: int) -> int:
    run = training.run
    return sample_seed(run.config.seed + 1 + run.accelerator.process_index, run.epoch, batch)


def _prepares_ahead(training: Training) -> bool:
    """Whether the batches are decoded and augmented ahead, in threads of their own: JPEG batches, where one thread
    decodes the batch after next while another augments the next batch and the training thread trains. Not with
    gradient accumulation: accelerate marks the loader's end when its last batch is fetched, which would end an
    accumulation one batch early."""
    return getattr(training.device_tf, "decode", None) is not None and training.run.config.grad_accum == 1


def _decode_batch(training: Training, images: Any) -> Any:
    """A JPEG batch (:class:`~vitzoo.train.device_decode.EncodedBatch`) decoded and cropped on the training device;
    other images as they are."""
    if not isinstance(images, EncodedBatch):
        return images
    with record_function(PROFILE_RANGES["decode"]):
        return training.device_tf.decode(images, training.run.accelerator.device)


def _prepare_batch(training: Training, images: Any, targets: torch.Tensor,
                  batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``batch`` of the epoch as the forward takes it: the loader's images through the device stage (decoding
    and cropping JPEG batches, RandAugment, normalisation, erasing) and mixup. Its python and numpy draws are seeded
    here from the batch's seed; the device stage of uint8 batches (Fashion-MNIST's crops and flips) draws from
    torch's generators, which the training loop seeds with the same number before it calls this."""
    config, device = training.run.config, training.run.accelerator.device
    seed_host_draws(_batch_seed(training, batch))
    images = _decode_batch(training, images)
    with record_function(PROFILE_RANGES["augment"]):
        if training.mixup is not None and isinstance(training.device_tf, DeviceAugment):
            # mixup or cutmix inside the normalising pass: no passes of their own over the float32 batch
            images, targets = training.device_tf.mix(images, targets, training.mixup, device)
        else:
            if training.device_tf is not None:
                images = training.device_tf(images, device)
            if training.mixup is not None:
                images, targets = training.mixup(images, targets)
        if config.channels_last and not config.cuda_graph:  # a graphed forward copies into its channels-last input
            images = images.contiguous(memory_format=torch.channels_last)
    return images, targets


def train_one_epoch(training: Training) -> tuple[torch.Tensor, int, float]:
    """Train from ``run.batches_done`` to the end of ``run.epoch`` (or until ``max_steps`` / ``time_limit``), with
    the mid-epoch checkpoints of ``checkpoint_interval``; return (loss sum on this process, batches, start time).

    Raises:
        NonFiniteLossError: a NaN/inf loss on any process.
    """
    from tqdm.auto import tqdm

    run, config = training.run, training.run.config
    accelerator, model, optimizer, ema = run.accelerator, run.model, run.optimizer, run.ema
    epoch, train_loader = run.epoch, training.train_loader
    training.train_sampler.set_epoch(epoch)
    training.train_set.set_epoch(epoch)
    train_loader.set_epoch(epoch)
    loader = train_loader
    if run.batches_done:
        from accelerate import skip_first_batches

        loader = skip_first_batches(train_loader, run.batches_done)
        loader.set_epoch(epoch)
    first_batch = run.batches_done
    ahead = _prepares_ahead(training)
    if ahead:
        # both stages on a stream of their own: the next batch's kernels run beside this one's training step
        stream = stage_stream(accelerator.device) if accelerator.device.type == "cuda" else None
        decoded = prepared_ahead(loader, lambda index, images, targets: (
            _decode_batch(training, images), targets), accelerator.device, name="decode-ahead", stream=stream)
        loader = prepared_ahead(decoded, lambda index, images, targets: _prepare_batch(
            training, images, targets, first_batch + index), accelerator.device, name="augment-ahead", fetch_range=None,
            stream=stream)
    model.train()
    bar = tqdm(total=len(train_loader), initial=run.batches_done, desc=f"epoch {epoch}", leave=False,
               disable=not (accelerator.is_local_main_process and config.progress))
    # The loss sum and a "still finite" flag stay on the device: reading them every step would make the host wait for
    # the GPU each step. They are read at log intervals, before every checkpoint and at the epoch end.
    loss_sum = torch.zeros((), device=accelerator.device)
    finite = torch.ones((), dtype=torch.bool, device=accelerator.device)
    loss_count, start = 0, time.time()

    for images, targets in loader:
        if training.drop_path_ramp is not None:
            training.drop_path_ramp.step(run.num_updates)
        # Per-batch seeds: the device stage, mixup and drop path draw the same numbers whether or not the run resumed
        # (and whether or not the device stage ran ahead).
        seed_torch(_batch_seed(training, run.batches_done))
        if not ahead:
            images, targets = _prepare_batch(training, images, targets, run.batches_done)
        with record_function(PROFILE_RANGES["step"]), accelerator.accumulate(model):
            loss = training.criterion(training.forward(images), targets)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.clip_grad:
                accelerator.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        run.batches_done += 1
        loss = loss.detach().float()
        loss_sum += loss
        finite &= torch.isfinite(loss)
        loss_count += 1
        bar.update(1)
        if not accelerator.sync_gradients:
            continue
        run.num_updates += 1
        training.scheduler.step_update(run.num_updates)
        if ema is not None:
            ema.update(accelerator.unwrap_model(model), step=run.num_updates)
        end_of_epoch = run.batches_done >= len(train_loader)
        save_now = (config.checkpoint_interval and run.num_updates % config.checkpoint_interval == 0
                    and not end_of_epoch)
        if run.num_updates % config.log_interval == 0 or save_now:
            _check_finite(finite, training)
        if run.num_updates % config.log_interval == 0:
            mean_loss = mean_over_processes(loss_sum, loss_count, accelerator)
            training.log.write("train", epoch=epoch, num_updates=run.num_updates, loss=mean_loss,
                               lr=optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        if save_now:
            training.last_checkpoint = save_checkpoint(run, run.num_updates)
        if config.max_steps and run.num_updates >= config.max_steps:
            break
        # Clocks differ between processes: all leave at the same update once any is out of time.
        if config.time_limit and _processes_with(time.time() - training.start_time > config.time_limit,
                                                 accelerator):
            training.out_of_time = True
            break
    _check_finite(finite, training)
    bar.close()
    return loss_sum, loss_count, start


def evaluate_and_checkpoint(training: Training, loss_sum: torch.Tensor, loss_count: int,
                            epoch_start: float) -> dict[str, Any]:
    """Evaluate the model (and the EMA), log the metrics, update the best epoch and write a checkpoint; advance to
    the next epoch if this one is complete. Return the metrics."""
    from timm.utils import update_summary

    run, config = training.run, training.run.config
    accelerator, epoch = run.accelerator, run.epoch
    skipped = report_unreadable(training.train_set, accelerator)
    epoch_done = run.batches_done >= len(training.train_loader)
    metrics = {"epoch": epoch, "num_updates": run.num_updates,
               "train_loss": mean_over_processes(loss_sum, loss_count, accelerator),
               "lr": run.optimizer.param_groups[0]["lr"], "epoch_time": round(time.time() - epoch_start, 2)}
    metrics.update({f"eval_{k}": v for k, v in evaluate(run.model, training.val_loader, accelerator,
                                                          progress=config.progress,
                                                          on_device=training.val_on_device).items()})
    if run.ema is not None:
        metrics.update({f"ema_{k}": v for k, v in evaluate(run.ema.module, training.val_loader, accelerator, True,
                                                           progress=config.progress,
                                                           on_device=training.val_on_device).items()})
    skipped += report_unreadable(training.val_set, accelerator)
    metrics["skipped_files"] = skipped
    training.log.write("eval", **metrics)
    if accelerator.is_main_process:
        update_summary(epoch, {"loss": metrics["train_loss"]},
                       {key: metrics[f"eval_{key}"] for key in ("loss", "top1", "top5")},
                       training.output / "summary.csv", lr=metrics["lr"])
    accelerator.print(_summary(metrics))
    if skipped and accelerator.is_main_process:
        _logger.warning("%d unreadable image file(s) skipped so far (named in the warnings above)", skipped)
    key = "ema_top1" if run.ema is not None else "eval_top1"
    if metrics[key] >= run.best.get("top1", -1.0):
        run.best = {"top1": metrics[key], "epoch": epoch, "metric": key,
                    "checkpoint": f"{CHECKPOINT_PREFIX}{run.num_updates:08d}"}
    if epoch_done:
        run.epoch, run.batches_done = epoch + 1, 0
    training.last_checkpoint = save_checkpoint(run, run.num_updates)
    return metrics


def finish(training: Training, metrics: dict[str, Any]) -> dict[str, Any]:
    """End the run on every process; return the last epoch's ``metrics`` with the best epoch, whether the time limit
    stopped the run, the last checkpoint and the run folder (and the updates, also for a resumed run that was
    already finished and trained no epoch)."""
    accelerator = training.run.accelerator
    accelerator.wait_for_everyone()
    metrics["num_updates"] = training.run.num_updates
    metrics["best"] = training.run.best
    metrics["stopped_by_time_limit"] = training.out_of_time
    metrics["checkpoint"] = str(training.last_checkpoint) if training.last_checkpoint else None
    metrics["output"] = str(training.output)
    accelerator.end_training()
    return metrics


def _processes_with(flag: bool | torch.Tensor, accelerator) -> int:
    """How many processes have ``flag`` set. One collective, the same answer everywhere: every process must take the
    same branch, or the others would hang in their next collective."""
    count = torch.as_tensor(flag, device=accelerator.device).to(torch.int32).reshape(1)
    if accelerator.num_processes > 1:
        count = accelerator.reduce(count, reduction="sum")
    return int(count.item())


def _check_finite(finite: torch.Tensor, training: Training) -> None:
    """Raise :class:`NonFiniteLossError` if any loss since the last check was NaN/inf (``finite`` is False)."""
    run = training.run
    if _processes_with(finite, run.accelerator) < run.accelerator.num_processes:
        message = (f"non-finite loss at epoch {run.epoch} after update {run.last_finite_update}; stopped. "
                   f"Last good checkpoint: {training.last_checkpoint or 'none'}. Try precision=bf16/fp32, a lower lr "
                   "or clip_grad")
        training.log.write("nonfinite", epoch=run.epoch, num_updates=run.num_updates,
                           last_finite_update=run.last_finite_update)
        raise NonFiniteLossError(message)
    run.last_finite_update = run.num_updates


def _summary(metrics: dict[str, Any]) -> str:
    text = (f"epoch {metrics['epoch']} update {metrics['num_updates']}: train_loss {metrics['train_loss']:.4f} "
            f"top1 {metrics['eval_top1']:.2f} top5 {metrics['eval_top5']:.2f}")
    if "ema_top1" in metrics:
        text += f" | ema top1 {metrics['ema_top1']:.2f} top5 {metrics['ema_top5']:.2f}"
    return text + f" ({metrics['epoch_time']:.1f}s)"
