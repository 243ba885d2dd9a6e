"""The fine-tune loop: linear probe on cached features, full fine-tune, or gradual unfreezing."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetl import distributed
from edgetl.backbones import CreatedModel, trunk_groups
from edgetl.compress.distill import Distiller
from edgetl.data import Sample, load_rgb
from edgetl.errors import DataError, first_line
from edgetl.evaluate import top1_accuracy as accuracy
from edgetl.fsutil import write_bytes
from edgetl.preprocess import Preprocessing
from edgetl.progress import SILENT, Reporter
from edgetl.recipe import TrainSection


@dataclass
class TrainResult:
    """What fine-tuning produced: the best weights and how it got there."""

    state_dict: dict[str, torch.Tensor]
    val_accuracy: float
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    probe_val_accuracy: float | None = None  # the linear-probe phase's best, before fine-tuning (LP-FT)


class AugmentedImages(Dataset):
    """Train images with random augmentation, normalised like the weights expect."""

    def __init__(self, samples: list[Sample], prep: Preprocessing, cfg: TrainSection) -> None:
        from torchvision.transforms import v2

        self.samples = samples
        interpolation = v2.InterpolationMode(prep.interpolation)
        steps = [v2.RandomResizedCrop(prep.crop, scale=(cfg.augment.scale_min, 1.0), interpolation=interpolation,
                                      antialias=True)]
        if cfg.augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if cfg.augment.color_jitter > 0:
            j = cfg.augment.color_jitter
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples[i]
        return self.transform(load_rgb(sample.path)), sample.label, i


def seed_everything(seed: int) -> None:
    """Fix every RNG the loop uses."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(cfg: TrainSection) -> None:
    """Seed every RNG and set torch's thread count (`train.threads`) before a training run."""
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


@torch.no_grad()
def predict(model: nn.Module, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits of `model` (eval mode) for a preprocessed N×3×H×W array."""
    model.eval()
    outputs = [model(torch.from_numpy(np.array(inputs[i:i + batch_size], dtype=np.float32))).numpy()
               for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up, then cosine decay to zero."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def build_optimizer(params: list[dict], cfg: TrainSection) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _trainable_groups(created: CreatedModel, epoch: int, cfg: TrainSection) -> int:
    """How many backbone groups (counted from the top) train in `epoch` for the gradual mode."""
    groups = len(trunk_groups(created.model, created.backbone))
    if cfg.mode == "finetune":
        return groups
    if cfg.mode == "linear_probe":
        return 0
    # gradual: head only in the first epoch, everything by the last one
    return min(groups, math.ceil(groups * epoch / max(1, cfg.epochs - 1)))


def _set_trainable(created: CreatedModel, top_groups: int) -> None:
    groups = trunk_groups(created.model, created.backbone)
    for index, group in enumerate(groups):
        for param in group:
            param.requires_grad_(index >= len(groups) - top_groups)


def _freeze_batchnorm(model: nn.Module, all_layers: bool) -> None:
    # Frozen BatchNorm layers keep their ImageNet running statistics: with few images and small batches,
    # re-estimating them adds noise. Layers whose weights are frozen are always kept that way.
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if all_layers or not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()


class Checkpointer:
    """Per-epoch training state, written atomically, tagged with the stage key so stale ones are ignored."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint we cannot read is simply not resumed from
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def save(self, state: dict) -> None:
        save_torch(self.path, {**state, "key": self.key})


def save_torch(path: Path, obj) -> None:
    """torch.save `obj` to `path` atomically. Serialised in memory first: torch's own file writer reports a full
    disk as an opaque RuntimeError, while a plain write gives ENOSPC, which atomic writes turn into StorageError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def fine_tune(created: CreatedModel, train_samples: list[Sample], val_inputs: np.ndarray, val_labels: np.ndarray,
              cfg: TrainSection, workers: int, checkpointer: Checkpointer | None = None,
              reporter: Reporter = SILENT, distiller: Distiller | None = None) -> TrainResult:
    """Fine-tune `created.model` in place per `cfg` (with the KD loss when `distiller` is given); returns the best
    (by val accuracy) weights."""
    freeze_bn = cfg.freeze_batchnorm if cfg.freeze_batchnorm is not None else created.weights_file is not None
    start_run(cfg)
    if cfg.mode == "none":  # the architecture as it is, for measuring it (the search's cheap filter)
        created.model.eval()
        untrained = accuracy(predict(created.model, val_inputs), val_labels)
        return TrainResult({k: v.detach().clone() for k, v in created.model.state_dict().items()}, untrained, 0, 0)
    if cfg.mode == "linear_probe":
        return _linear_probe(created, train_samples, val_inputs, val_labels, cfg, reporter)
    model = created.model
    head_params = list(model.get_submodule(created.backbone.head).parameters())
    head_ids = {id(p) for p in head_params}
    backbone_params = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = build_optimizer([{"params": head_params, "lr": cfg.lr},
                            {"params": backbone_params, "lr": cfg.lr * cfg.backbone_lr_mult}], cfg)
    resumable = checkpointer.load() if checkpointer else None
    if resumable and resumable.get("world_size", 1) != (distributed.world_size() if distributed.active() else 1):
        resumable = None  # written by another number of processes: training starts again (_epochs says so), probe first
    start = None
    if resumable is None and cfg.probe_epochs:
        # LP-FT: train the new head on frozen features first, so fine-tuning starts from a sensible head
        # instead of pushing random-head gradients into the pretrained backbone.
        probe = cfg.model_copy(update={"epochs": cfg.probe_epochs, "early_stop_patience": None, "warmup_epochs": 0})
        probed = _linear_probe(created, train_samples, val_inputs, val_labels, probe, reporter)
        # The probe's model is the one to beat: a fine-tune that never does ships the probe's, not a worse one.
        start = {"best_acc": probed.val_accuracy, "best_state": probed.state_dict, "best_epoch": 0,
                 "probe_acc": probed.val_accuracy}

    def before_epoch(epoch: int) -> None:
        _set_trainable(created, _trainable_groups(created, epoch, cfg))
        model.train()
        _freeze_batchnorm(model, freeze_bn)

    images = AugmentedImages(train_samples, created.preprocessing, cfg)
    spread = distributed.active()
    if spread and distributed.rank() == 0:
        # The followers train beside this process: same model (after the probe), settings, images and checkpoint.
        distributed.broadcast({
            "model": model, "backbone": created.backbone.name, "prep": created.preprocessing,
            "cfg": cfg.model_copy(update={"probe_epochs": 0, "freeze_batchnorm": freeze_bn}),
            "samples": train_samples, "workers": workers, "distiller": distiller,
            "checkpoint": resumable})
    try:
        return train_loop(model, optimizer, images, val_inputs, val_labels, cfg, workers, before_epoch,
                          checkpointer, reporter, distiller, spread=spread, start=start)
    except RuntimeError as exc:
        if spread and distributed.is_collective_failure(exc):
            raise distributed.peer_lost(exc) from None
        raise


class _GivenCheckpoint:
    """A follower's view of rank 0's checkpoint: read once by rank 0 and sent along; followers never write."""

    def __init__(self, state: dict | None) -> None:
        self.state = state

    def load(self) -> dict | None:
        return self.state

    def save(self, state: dict) -> None:
        pass


def follow_job(job: dict) -> None:
    """A follower rank's part of one distributed fine-tune broadcast by rank 0 from `fine_tune`."""
    from edgetl.backbones import get_backbone

    created = CreatedModel(job["model"], get_backbone(job["backbone"]), job["prep"], None, {})
    fine_tune(created, job["samples"], None, None, job["cfg"], job["workers"], _GivenCheckpoint(job["checkpoint"]),
              SILENT, job["distiller"])


@contextlib.contextmanager
def _own_sigchld():
    """Keep DataLoader from installing its SIGCHLD handler, which it never removes. Left in place it crashed the
    build with SIGSEGV at a later subprocess call (after export and bench), and the RuntimeError it raises from
    inside whatever code runs when a worker dies can be swallowed there. Without it, a dead worker is noticed by the
    loader's own liveness check (within seconds) and raised from the loop, where `_batches` words it."""
    from torch.utils.data._utils import signal_handling

    before = signal_handling._SIGCHLD_handler_set
    signal_handling._SIGCHLD_handler_set = True  # "already installed": torch then leaves SIGCHLD alone
    try:
        yield
    finally:
        signal_handling._SIGCHLD_handler_set = before


def train_loop(model: nn.Module, optimizer: torch.optim.Optimizer, images: AugmentedImages, val_inputs: np.ndarray,
               val_labels: np.ndarray, cfg: TrainSection, workers: int, before_epoch, checkpointer: Checkpointer | None,
               reporter: Reporter = SILENT, distiller: Distiller | None = None, evaluate=None,
               spread: bool = False, start: dict | None = None) -> TrainResult:
    """Epochs of (KD or label) training with warm-up + cosine LR, per-epoch checkpoints, early stopping; the model
    ends with its best weights. `before_epoch(epoch)` sets train mode and what trains; `evaluate(model)` gives
    val logits (default: `predict`). `spread`: every rank of the distributed build runs this on its share of each
    epoch's images (DistributedDataParallel; rank 0 alone evaluates, reports and checkpoints), as `fine_tune`
    arranges; otherwise this process trains alone. `start`: the best model so far (`best_acc`, `best_state`,
    `best_epoch` 0 and `probe_acc`, from the linear-probe phase), kept unless an epoch beats it."""
    world, rank = (distributed.world_size(), distributed.rank()) if spread else (1, 0)
    threads = torch.get_num_threads()
    if spread and not cfg.threads:
        torch.set_num_threads(distributed.train_threads())
    hooks = distiller.watch(model) if distiller else []
    try:
        with _own_sigchld():
            return _epochs(_Loop(model, optimizer, images, val_inputs, val_labels, cfg, workers, before_epoch,
                                 checkpointer, reporter, distiller, evaluate or (lambda m: predict(m, val_inputs)),
                                 world, rank, start))
    finally:
        torch.set_num_threads(threads)
        for hook in hooks:
            hook.remove()


@dataclass(frozen=True)
class _Loop:
    """Everything one training loop uses (see train_loop)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    images: AugmentedImages
    val_inputs: np.ndarray | None
    val_labels: np.ndarray | None
    cfg: TrainSection
    workers: int
    before_epoch: Callable[[int], None]
    checkpointer: Checkpointer | None
    reporter: Reporter
    distiller: Distiller | None
    evaluate: Callable[[nn.Module], np.ndarray]
    world: int  # processes training together (1: alone)
    rank: int
    start: dict | None = None  # the model to beat before the first epoch (the linear probe's)


def _epochs(loop: _Loop) -> TrainResult:
    model, optimizer, images, val_labels, cfg = loop.model, loop.optimizer, loop.images, loop.val_labels, loop.cfg
    workers, before_epoch, checkpointer, reporter = loop.workers, loop.before_epoch, loop.checkpointer, loop.reporter
    distiller, evaluate, world, rank = loop.distiller, loop.evaluate, loop.world, loop.rank
    count = len(images)
    # The global batch stays cfg.batch_size, so the learning rate means the same at any world size.
    batch_size = max(1, cfg.batch_size // world)

    def epoch_loader(epoch: int) -> DataLoader:
        # Shuffling and worker seeds derive from (seed, epoch) alone, so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed(cfg.seed * 10007 + epoch + 1_000_003 * rank)
        if world == 1:
            return DataLoader(images, batch_size=batch_size, shuffle=True, num_workers=workers,
                              multiprocessing_context=_worker_context(workers),
                              drop_last=count > batch_size, generator=generator)
        sampler = torch.utils.data.DistributedSampler(images, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=cfg.seed * 10007)
        sampler.set_epoch(epoch)
        return DataLoader(images, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          multiprocessing_context=_worker_context(workers),
                          drop_last=len(sampler) > batch_size, generator=generator)

    steps = len(epoch_loader(0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps, round(cfg.warmup_epochs * steps)))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    state = _new_state() | (loop.start or {})
    resumed_from = None
    saved = checkpointer.load() if checkpointer else None
    if saved and saved.get("world_size", 1) != world:
        reporter.info(f"  the checkpoint was written by {saved.get('world_size', 1)} process(es), this build has "
                      f"{world}: training starts again")
        saved = None
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng_ranks"][rank] if "torch_rng_ranks" in saved else saved["torch_rng"])
        state = saved["state"]
        resumed_from = state["epoch"]
        reporter.info(f"  resuming training after epoch {resumed_from}")
    elif rank:
        torch.manual_seed(cfg.seed * 7919 + rank)  # followers augment with their own random streams

    while state["epoch"] < cfg.epochs and not _early_stop(state, cfg):
        epoch = state["epoch"]
        before_epoch(epoch)
        # Wrapped per epoch: gradual unfreezing changes which parameters train, and DDP syncs only those it saw.
        net = model if world == 1 else nn.parallel.DistributedDataParallel(model)
        started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        with reporter.task(f"epoch {epoch + 1}/{cfg.epochs}", steps) as update:
            for batch, labels, indices in _batches(epoch_loader(epoch)):
                mix = _mixup(batch, cfg.augment.mixup)
                if mix is not None:
                    batch = mix[0] * batch + (1 - mix[0]) * batch[mix[1]]
                logits = net(batch)
                if distiller:
                    loss = distiller.loss(logits, batch, indices, labels, cfg.label_smoothing, mix)
                elif mix is not None:
                    loss = mix[0] * criterion(logits, labels) + (1 - mix[0]) * criterion(logits, labels[mix[1]])
                else:
                    loss = criterion(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(labels)
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
                update(1, f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f}")
        if world > 1:
            loss_sum, correct, seen = _sum_over_ranks(loss_sum, correct, seen)
            val_acc = distributed.broadcast(accuracy(evaluate(model), val_labels) if rank == 0 else None)
        else:
            val_acc = accuracy(evaluate(model), val_labels)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen), "train_accuracy": 100.0 * correct / max(1, seen),
                  "val_accuracy": val_acc, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - started, 2)}
        state["history"].append(record)
        _end_epoch(state, epoch, val_acc, model)
        rng = torch.get_rng_state()
        rngs = _gather_on_rank0(rng) if world > 1 else [rng]
        if checkpointer and rank == 0:
            checkpointer.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "torch_rng": rng, "torch_rng_ranks": rngs,
                               "world_size": world, "state": state})
        reporter.info(f"  epoch {epoch + 1}: train loss {record['train_loss']:.3f}, train acc "
                      f"{record['train_accuracy']:.1f}%, val acc {val_acc:.2f}% (best {state['best_acc']:.2f}%)")
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return TrainResult(state["best_state"] or copy.deepcopy(model.state_dict()), max(state["best_acc"], 0.0),
                       state["best_epoch"], state["epoch"], state["history"], resumed_from, state.get("probe_acc"))


# Native libraries that run thread pools of their own once loaded: forking a process that has them can deadlock the
# child (JAX, loaded by the TFLite exporter, warns so itself).
# Every format's runtime is one (the format table names their imports), and so are the converters' JAX and TensorFlow.
def _threaded_libraries() -> set[str]:
    from edgetl.formats import FORMATS

    return {"jax", "tensorflow", *(name.split(".")[0] for f in FORMATS.values() for name in f.runtime_imports)}


def _worker_context(workers: int) -> str | None:
    """How loader workers start: forked (fast) in a process that has not loaded a threaded native library yet, as in
    a build, which trains before it exports; from a forkserver otherwise (a search's later candidates, a notebook)."""
    if workers and any(name in sys.modules for name in _threaded_libraries()):
        return "forkserver"
    return None


def _batches(loader: DataLoader):
    """`loader`'s batches; an image that went bad after the data stage's scan is one clear DataError, not the
    worker's traceback that DataLoader puts into the message."""
    try:
        yield from loader
    except DataError as exc:
        text = str(exc)
        marker = f"{DataError.__module__}.{DataError.__qualname__}: "
        raise DataError(text[text.rindex(marker) + len(marker):].strip() if marker in text else text) from None
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        raise DataError(f"A data loader worker process died while reading training images ({first_line(exc)}); "
                        "the system may have run out of memory. Run again (training resumes from its last epoch), "
                        "or set data.workers to 0 in the recipe to read images in the main process.") from None


def _mixup(batch: torch.Tensor, alpha: float) -> tuple[float, torch.Tensor] | None:
    """(λ, permutation) for mixing `batch` with itself, drawn from torch's RNG (checkpointed); None when off."""
    if alpha <= 0 or len(batch) < 2:
        return None
    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    return lam, torch.randperm(len(batch))


def _sum_over_ranks(*values: float) -> list[float]:
    import torch.distributed as dist

    totals = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(totals)
    return totals.tolist()


def _gather_on_rank0(obj) -> list | None:
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def _new_state() -> dict:
    return {"epoch": 0, "history": [], "best_acc": -1.0, "best_epoch": 0, "best_state": None, "stale": 0,
            "run_best_acc": -1.0}


def _end_epoch(state: dict, epoch: int, val_acc: float, module: nn.Module) -> None:
    """Keep `module`'s weights when `val_acc` is the best so far (the probe's included: an epoch that only equals
    the probe replaces it); count epochs without improvement on this loop's own best (a fine-tune that starts below
    the probe is not stopped for it)."""
    run_best = state.get("run_best_acc", state["best_acc"])  # a checkpoint from before run_best_acc: the best
    held_by_probe = state["best_epoch"] == 0 and state["best_state"] is not None  # a tie goes to the fine-tune
    if val_acc > state["best_acc"] or (held_by_probe and val_acc == state["best_acc"]):
        state.update(best_acc=val_acc, best_epoch=epoch + 1, best_state=copy.deepcopy(module.state_dict()))
    if val_acc > run_best:
        state.update(run_best_acc=val_acc, stale=0)
    else:
        state["stale"] += 1
    state["epoch"] = epoch + 1


def _early_stop(state: dict, cfg: TrainSection) -> bool:
    return cfg.early_stop_patience is not None and state["stale"] >= cfg.early_stop_patience


@torch.no_grad()
def _features(model: nn.Module, head: nn.Module, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Inputs of the final Linear (the backbone's embedding), computed once."""
    captured: list[np.ndarray] = []
    hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].numpy().copy()))
    try:
        predict(model, inputs, batch_size)
    finally:
        hook.remove()
    return np.concatenate(captured)


def _linear_probe(created: CreatedModel, train_samples: list[Sample], val_inputs: np.ndarray,
                  val_labels: np.ndarray, cfg: TrainSection, reporter: Reporter) -> TrainResult:
    """Frozen backbone: embed every image once (plus its mirror image), then train only the head."""
    from edgetl.preprocess import preprocess_files

    model, head = created.model, created.model.get_submodule(created.backbone.head)
    with reporter.task("embedding train images", len(train_samples)) as update:
        train_inputs = preprocess_files([s.path for s in train_samples], created.preprocessing,
                                        progress=lambda done, total: update(1))
    mirrored = np.ascontiguousarray(train_inputs[..., ::-1]) if cfg.augment.hflip else train_inputs[:0]
    train_x = torch.from_numpy(np.concatenate([_features(model, head, train_inputs), _features(model, head, mirrored)]
                                              if len(mirrored) else [_features(model, head, train_inputs)]))
    labels = torch.tensor([s.label for s in train_samples])
    train_y = torch.cat([labels, labels]) if len(mirrored) else labels
    val_x = torch.from_numpy(_features(model, head, val_inputs))
    optimizer = build_optimizer([{"params": head.parameters(), "lr": cfg.lr}], cfg)
    steps = math.ceil(len(train_x) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps, round(cfg.warmup_epochs * steps)))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    generator = torch.Generator().manual_seed(cfg.seed)
    state = _new_state()
    dropout = nn.Dropout(p=created.dropout)  # the head's own dropout (model.dropout)
    for epoch in range(cfg.epochs):
        if _early_stop(state, cfg):
            break
        order = torch.randperm(len(train_x), generator=generator)
        head.train()
        loss_sum = 0.0
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            loss = criterion(head(dropout(train_x[batch])), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(batch)
        head.eval()
        with torch.no_grad():
            val_acc = accuracy(head(val_x).numpy(), val_labels)
        state["history"].append({"epoch": epoch + 1, "train_loss": loss_sum / len(order), "val_accuracy": val_acc})
        _end_epoch(state, epoch, val_acc, head)
    head.load_state_dict(state["best_state"])
    reporter.info(f"  linear probe: best val acc {state['best_acc']:.2f}% at epoch {state['best_epoch']}")
    return TrainResult(copy.deepcopy(model.state_dict()), state["best_acc"], state["best_epoch"], state["epoch"],
                       state["history"])
