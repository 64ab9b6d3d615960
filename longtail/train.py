"""Training: Adam or AdamW, a per-step learning-rate schedule, mini-batches, early stopping on
validation AUC, resumable checkpoints.

Deterministic under a seed: the shuffling order and dropout of epoch ``e`` depend only on
(seed, e), so a run resumed from its checkpoint after epoch ``e`` continues exactly as the
uninterrupted run would; the learning rate of step ``s`` is a function of (config, ``s``, the
number of plateau drops so far) only, so the checkpoint's step counter is the scheduler's whole
state and a resumed run continues mid-schedule exactly. Runs on CUDA when available (``device="auto"``), never requires it.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from longtail.config import config_to_dict
from longtail.data.tensors import Batch
from longtail.metrics import auc, predict_proba

CKPT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Args:
    epochs: maximum epochs (the paper runs 5).
    batch_size: rows per step (the paper uses 512).
    lr: the (peak) learning rate (the paper uses 1e-3).
    weight_decay: with ``adam``, L2 added to the gradient (torch's Adam); with ``adamw``, the
        decoupled weight decay (each step multiplies the weights by ``1 - lr_t * weight_decay``).
    patience: epochs without a better validation AUC before stopping.
    max_steps: stop after this many optimiser steps in total (0 = no limit).
    seed: seed of initialisation, shuffling and dropout.
    device: ``auto`` (CUDA when available), ``cpu`` or ``cuda`` (a job asked for ``cuda`` on a
        machine without it refuses before it writes anything).
    max_grad_norm: gradient clipping norm (0 = off).
    threads: CPU threads for torch while training (0 = torch's default). The paper's models are
        tiny (hidden size 15): one thread is several times faster than two contending ones, and
        parallelism comes from training scenarios in parallel processes instead.
    lr_drops: when early stopping would stop (``patience`` epochs without a better validation
        score), go back to the best epoch's weights and multiply the learning rate by
        ``lr_drop_factor`` instead, up to this many times; the next stop is final. 0 (the
        paper) stops at once. Needs validation rows, and stays within ``epochs``.
    lr_drop_factor: the learning-rate factor of each drop, in (0, 1).
    optimizer: ``adam`` (the paper) or ``adamw`` (torch's AdamW: decoupled ``weight_decay``).
    schedule: the learning rate over the planned steps (``epochs`` x steps per epoch, or
        ``max_steps`` when that is fewer), set before every optimiser step:

        * ``constant``: ``lr`` throughout (after the warm-up, if any);
        * ``cosine``: after the warm-up, cosine decay from ``lr`` to 0 over the remaining planned
          steps (the last step's rate is small but not 0);
        * ``onecycle``: torch's ``OneCycleLR`` shape with its defaults and ``anneal_strategy=cos``:
          cosine rise from ``lr / 25`` to ``lr`` over the first ``warmup_frac`` of the planned steps
          (its ``pct_start``; needs ``warmup_frac > 0``, e.g. 0.3 as torch), then cosine decay to
          ``lr / 25 / 1e4``. Step ``s`` gets what ``OneCycleLR(total_steps=planned)`` gives after
          ``s`` scheduler steps.
    warmup_frac: for ``constant`` and ``cosine``, a linear warm-up over this fraction of the planned
        steps: step ``s`` (from 0) of the ``W`` warm-up steps gets ``lr * (s + 1) / W``, so no step
        is wasted at rate 0. For ``onecycle``, its rising phase. In [0, 1); 0 = no warm-up.
    lr_scale_batch: 0 = off; otherwise the linear scaling rule: the peak rate is
        ``lr * batch_size / lr_scale_batch`` (``lr`` is then the rate meant for batches of
        ``lr_scale_batch`` rows).

    The schedule and the plateau rule compose: a drop multiplies the scheduled rate, i.e. step
    ``s`` after ``k`` drops gets ``schedule(s) * lr_drop_factor ** k``, and the schedule goes on
    along the global step count (it is not restarted by a drop).

    Every value is checked when the config is built (``epochs``, ``batch_size`` and ``patience``
    at least 1, ``lr`` finite and not negative, ...), so a bad value is refused naming its key.

    A field added here must default to the behaviour from before it existed: checkpoints and
    result stamps written without it are read as having that default (``normalized_train_dict``).
    """

    epochs: int = 5
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    max_steps: int = 0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_grad_norm: float = 5.0
    threads: int = 1
    lr_drops: int = 0
    lr_drop_factor: float = 0.3
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_frac: float = 0.0
    lr_scale_batch: int = 0

    def __post_init__(self):
        """Every value is checked here, when the config is loaded, before any data is read."""
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"train.{name} is {value}; use 1 or more (defaults: epochs 5, batch_size 512, "
                                 "patience 2)")
        if not math.isfinite(self.lr) or self.lr < 0:  # 0 is allowed: it trains nothing (a probe of the start)
            raise ValueError(f"train.lr is {self.lr}; use a positive learning rate, e.g. 1e-3 (the paper's)")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"train.{name} is {value}; use 0 (off) or a positive number")
        for name in ("max_steps", "threads"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"train.{name} is {value}; use 0 (no limit / torch's default) or more")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device is {self.device!r}; use auto (CUDA when present), cpu or cuda")
        if self.lr_drops < 0:
            raise ValueError(f"train.lr_drops is {self.lr_drops}; use 0 (stop at the first plateau) or more")
        if not 0.0 < self.lr_drop_factor < 1.0:
            raise ValueError(f"train.lr_drop_factor is {self.lr_drop_factor}; use a factor in (0, 1), e.g. 0.3")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"train.optimizer is {self.optimizer!r}; use adam or adamw")
        if self.schedule not in ("constant", "cosine", "onecycle"):
            raise ValueError(f"train.schedule is {self.schedule!r}; use constant, cosine or onecycle")
        if not (isinstance(self.warmup_frac, int | float) and math.isfinite(self.warmup_frac)
                and 0.0 <= self.warmup_frac < 1.0):
            raise ValueError(f"train.warmup_frac is {self.warmup_frac}; use a fraction of the planned steps in "
                             "[0, 1), e.g. 0.05 (0 = no warm-up)")
        if self.schedule == "onecycle" and self.warmup_frac == 0.0:
            raise ValueError("train.warmup_frac is 0 with train.schedule onecycle; give its rising phase, "
                             "e.g. train.warmup_frac: 0.3 (torch's pct_start)")
        if self.lr_scale_batch < 0:
            raise ValueError(f"train.lr_scale_batch is {self.lr_scale_batch}; use 0 (off) or the batch size "
                             "that train.lr is meant for, e.g. 512")


def normalized_train_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A stored ``TrainConfig`` dict with the fields added since it was written at their defaults.

    Lets a checkpoint (or a result stamp) written before a field existed match the same settings
    today; an unknown or ill-typed key raises ``ConfigError`` naming it.
    """
    from longtail.config import config_from_dict

    return config_to_dict(config_from_dict(TrainConfig, dict(d), "train"))


def peak_lr(cfg: TrainConfig) -> float:
    """``cfg.lr``, scaled by ``batch_size / lr_scale_batch`` when the linear scaling rule is on."""
    return cfg.lr * cfg.batch_size / cfg.lr_scale_batch if cfg.lr_scale_batch else cfg.lr


def planned_steps(cfg: TrainConfig, n_rows: int) -> int:
    """The optimiser steps the schedule spans: ``epochs`` x steps per epoch, or ``max_steps`` when fewer."""
    total = cfg.epochs * max(1, math.ceil(n_rows / cfg.batch_size))
    return min(total, cfg.max_steps) if cfg.max_steps else total


def scheduled(cfg: TrainConfig) -> bool:
    """Whether ``fit`` sets the learning rate before every step (any schedule other than a flat one)."""
    return cfg.schedule != "constant" or cfg.warmup_frac > 0


def lr_at(cfg: TrainConfig, step: int, planned: int) -> float:
    """The scheduled learning rate of optimiser step ``step`` (0-based) of ``planned`` (before drops).

    See `TrainConfig` (``schedule``, ``warmup_frac``, ``lr_scale_batch``) for the shapes.
    """
    peak = peak_lr(cfg)
    planned = max(1, planned)
    step = min(max(0, step), planned - 1)
    if cfg.schedule == "onecycle":  # torch.optim.lr_scheduler.OneCycleLR, defaults, anneal "cos"
        initial = peak / 25.0
        final = initial / 1e4
        rise_end = float(cfg.warmup_frac * planned) - 1
        if step <= rise_end:
            start, end, pct = initial, peak, step / rise_end if rise_end > 0 else 1.0
        else:
            span = (planned - 1) - rise_end
            start, end, pct = peak, final, (step - rise_end) / span if span > 0 else 1.0
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    warm = int(round(cfg.warmup_frac * planned))
    if step < warm:
        return peak * (step + 1) / warm
    if cfg.schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, planned - warm)))
    return peak


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=peak_lr(cfg), weight_decay=cfg.weight_decay)


class CheckpointMismatch(RuntimeError):
    """A checkpoint exists for the output folder but was written with another config."""


@dataclass
class TrainResult:
    best_valid_auc: float | None
    best_epoch: int
    epochs_run: int
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


def bce_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, label)


LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


def fit(
    model: torch.nn.Module,
    train: Batch,
    valid: Batch | None,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    loss_fn: LossFn | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    show_progress: bool = False,
    description: str = "train",
    score_initial: bool = False,
    valid_score: Callable[[torch.nn.Module, Batch], float | None] | None = None,
) -> TrainResult:
    """Train ``model`` in place and leave it at its best validation epoch.

    Args:
        model: a module mapping a `Batch` to logits (B,).
        train / valid: tensors of the training and validation rows (``valid`` None: no early stopping).
        cfg: training settings.
        checkpoint_dir: when set, a checkpoint is written atomically after every epoch and an
            interrupted run resumes from it; a finished run returns its stored result.
        loss_fn: ``loss_fn(model, batch) -> scalar`` (default: BCE of the logits and the label).
        on_epoch: called with each epoch's record (epoch, train_loss, valid_auc, ...).
        show_progress: draw a progress bar (rich) over the steps.
        score_initial: score the starting weights on ``valid`` before the first epoch (recorded
            as epoch 0) and keep them when no epoch beats them: fine-tuning a pre-trained model
            on a few rows then never returns a model worse on VALID than the one it started from.
        valid_score: ``valid_score(model, valid)``, the score (higher is better; ``None`` when
            undefined) that picks the kept epoch and drives early stopping instead of the AUC of
            ``valid.label``. Each epoch's record keeps ``valid_auc`` and adds ``valid_score``;
            ``best_valid_auc`` is then the AUC of the kept epoch.

    Returns:
        The `TrainResult` (best validation AUC, epochs, steps, history).
    """
    device = resolve_device(cfg.device)
    model.to(device)
    loss_fn = loss_fn or (lambda m, b: bce_loss(m(b), b.label))
    opt = _optimizer(model, cfg)
    state = {"epoch": 0, "steps": 0, "best_auc": -math.inf, "best_epoch": 0, "bad_epochs": 0,
             "history": [], "done": False, "lr_drops": 0}
    best_state = copy.deepcopy(model.state_dict())
    resumed_from = None
    ckpt_path = Path(checkpoint_dir) / CKPT if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location=device, weights_only=True)
        if normalized_train_dict(saved["config"]) != config_to_dict(cfg):
            raise CheckpointMismatch(f"{ckpt_path}: checkpoint was written with another training config; "
                                     "delete the checkpoint folder, choose another --out, or rerun with the "
                                     "same config")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optim"])
        best_state = saved["best_model"]
        state = saved["state"]
        resumed_from = state["epoch"]
    if state["done"]:
        model.load_state_dict(best_state)
        return _result(state, resumed_from)
    if score_initial and resumed_from is None and valid is not None and len(valid):
        record = {"epoch": 0, "train_loss": None, "steps": 0, **_score(model, valid, device, valid_score)}
        start = record.get("valid_score", record["valid_auc"])
        if start is not None:
            state.update(best_auc=start, best_epoch=0)
            state["history"].append(record)

    tune_allocator()
    with torch_threads(cfg.threads):
        return _fit_epochs(model, train, valid, cfg, device, opt, state, best_state, resumed_from, ckpt_path,
                           loss_fn, on_epoch, show_progress, description, valid_score)


_MALLOC_TUNED = False


def tune_allocator() -> None:
    """Keep freed training buffers in the process's heap instead of returning them to the OS (glibc).

    A training step allocates the same tens of megabytes of activations every time; with glibc's
    defaults every large block is a fresh ``mmap``, so each step pays page faults for it. Raising
    the ``mmap`` and trim thresholds (once per process) lets the next step reuse the memory. Off with
    ``LONGTAIL_MALLOC_TUNING=0``; a no-op outside glibc.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    if os.environ.get("LONGTAIL_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: its maximum on 64-bit glibc
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch CPU threads (0: leave as is), restoring the previous number."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _score(model, valid: Batch, device, valid_score) -> dict[str, float | None]:
    """``valid_auc`` of the model on ``valid`` and, with a scorer, its ``valid_score``."""
    out: dict[str, float | None] = {"valid_auc": auc(valid.label.numpy(), predict_proba(model, valid, device=device))}
    if valid_score is not None:
        model.eval()
        with torch.no_grad():
            value = valid_score(model, valid)
        out["valid_score"] = None if value is None else float(value)
    return out


def _fit_epochs(model, train, valid, cfg, device, opt, state, best_state, resumed_from, ckpt_path, loss_fn,
                on_epoch, show_progress, description, valid_score=None) -> TrainResult:
    n = len(train)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    planned = planned_steps(cfg, n)
    with_schedule = scheduled(cfg)
    progress = _progress(show_progress)
    task = progress.add_task(description, total=cfg.epochs * steps_per_epoch,
                             completed=state["epoch"] * steps_per_epoch) if progress else None
    try:
        for epoch in range(state["epoch"], cfg.epochs):
            model.train()
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout of this epoch
            order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
            total, count = 0.0, 0
            for start in range(0, n, cfg.batch_size):
                batch = train.index(order[start:start + cfg.batch_size]).to(device)
                loss = loss_fn(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{description}: loss became {loss.item()} at epoch {epoch + 1}; "
                                             "lower the learning rate or check the inputs for extreme values")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                if with_schedule:  # drops multiply the scheduled rate (see TrainConfig)
                    lr = lr_at(cfg, state["steps"], planned) * cfg.lr_drop_factor ** state.get("lr_drops", 0)
                    for group in opt.param_groups:
                        group["lr"] = lr
                opt.step()
                total += loss.item() * len(batch)
                count += len(batch)
                state["steps"] += 1
                if progress:
                    progress.advance(task)
                if cfg.max_steps and state["steps"] >= cfg.max_steps:
                    break
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "steps": state["steps"]}
            if with_schedule:
                record["lr"] = opt.param_groups[0]["lr"]  # the rate of the epoch's last step
            record["valid_auc"] = None
            if valid is not None and len(valid):
                record.update(_score(model, valid, device, valid_score))
            score = record.get("valid_score", record["valid_auc"])
            score = score if score is not None else -record["train_loss"]
            if score > state["best_auc"]:
                state.update(best_auc=score, best_epoch=epoch + 1, bad_epochs=0)
                best_state = copy.deepcopy(model.state_dict())
            else:
                state["bad_epochs"] += 1
            plateau = valid is not None and state["bad_epochs"] >= cfg.patience
            if plateau and state.get("lr_drops", 0) < cfg.lr_drops and epoch + 1 < cfg.epochs:
                # go on from the best weights with a smaller step instead of stopping
                state["lr_drops"] = state.get("lr_drops", 0) + 1
                state["bad_epochs"] = 0
                model.load_state_dict(best_state)
                for group in opt.param_groups:
                    group["lr"] *= cfg.lr_drop_factor
                record["lr_drop"] = state["lr_drops"]
                plateau = False
            state["history"].append(record)
            state["epoch"] = epoch + 1
            stop = plateau or (cfg.max_steps and state["steps"] >= cfg.max_steps)
            state["done"] = bool(stop) or state["epoch"] >= cfg.epochs
            if ckpt_path is not None:
                _save_checkpoint(ckpt_path, model, opt, best_state, state, cfg)
            if on_epoch:
                on_epoch(record)
            if stop:
                break
    finally:
        if progress:
            progress.stop()
    model.load_state_dict(best_state)
    if ckpt_path is not None and not state["done"]:
        state["done"] = True
        _save_checkpoint(ckpt_path, model, opt, best_state, state, cfg)
    return _result(state, resumed_from)


def _result(state: dict[str, Any], resumed_from: int | None) -> TrainResult:
    # the AUC of the kept epoch (the best score is that AUC unless fit had a valid_score)
    best = next((h.get("valid_auc") for h in state["history"] if h["epoch"] == state["best_epoch"]), None)
    return TrainResult(
        best_valid_auc=float(best) if best is not None else None,
        best_epoch=int(state["best_epoch"]),
        epochs_run=int(state["epoch"]),
        steps=int(state["steps"]),
        history=list(state["history"]),
        resumed_from=resumed_from,
    )


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     best_state: dict[str, torch.Tensor], state: dict[str, Any], cfg: TrainConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "best_model": best_state,
                "state": state, "config": config_to_dict(cfg)}, tmp)
    os.replace(tmp, path)


def _progress(show: bool):
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                 transient=True)
    p.start()
    return p
