"""Fine-tuning the whole CLIP on a dataset's train split: FT (FLYP) and StarFT, resumable and data-parallel.

A run directory holds
- `state.pt`: everything to continue after the last finished epoch (weights, optimizer, schedule, curve,
  the selection so far, and the run's identity: its config, templates, base weights and data);
- `best.pt`: the weights of the best validation epoch so far, renamed to `model.pt` when the run ends;
- `dvclive/`: the curve as DVCLive logs (gcctl.curves), one step per epoch (0: the zero-shot start), rewritten
  from the state when a run resumes, so it never holds an epoch twice or one the state does not;
- at the end, `model.pt` (loads with `build_clip(model, "DIR/model.pt")`) and `summary.json` (with `base`, the
  model reference of the starting weights, their path relative to the run directory).

Running the same command again continues an interrupted run from its last finished epoch; a directory
holding a run of another config is refused, or discarded with `restart=True` (always) or
`restart_if_changed=True` (only then: what a pipeline stage that keeps its output between runs wants).
A directory holding anything else is never written into, and one process at a time writes a run directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gcctl import __version__
from gcctl.clip.checkpoint import MODEL_FILE, SUMMARY_FILE, save_checkpoint
from gcctl.clip.contrastive import WEIGHT_DECAY_RULE, ContrastiveOptimiser
from gcctl.clip.factory import build_clip
from gcctl.clip.preprocess import train_transform
from gcctl.clip.text import class_words, logit_scale
from gcctl.curves import CURVE_DIR, CurveLog
from gcctl.datasets.images import ImageDataset, image_loader
from gcctl.datasets.table import DatasetTable
from gcctl.distributed import World, barrier, join_world, leave_world, process_device
from gcctl.errors import GcctlError
from gcctl.evaluation.checkpoints import split_rows, zeroshot_metrics
from gcctl.files import (
    check_output,
    load_resume_state,
    output_lock,
    refuse_inside,
    read_timings,
    save_torch_file,
    sha256_file,
    write_json,
    write_timings,
)
from gcctl.finetune.config import LAST_EPOCH, METHODS, FinetuneConfig
from gcctl.finetune.losses import ZeroShotHead, flyp_loss, starft_regulariser
from gcctl.finetune.parallel import gather
from gcctl.finetune.pools import draw_templates, fill, read_pools
from gcctl.finetune.teacher import Teacher
from gcctl.runtime import (
    autocast,
    epoch_seed,
    progress,
    resolve_device,
    seed_everything,
)

log = logging.getLogger(__name__)


STATE, BEST = "state.pt", "best.pt"
CURVE = CURVE_DIR
MODEL, SUMMARY = MODEL_FILE, SUMMARY_FILE


def finetune(
    table: DatasetTable,
    out: str | os.PathLike,
    *,
    model_name: str,
    pretrained: str,
    config: FinetuneConfig = FinetuneConfig(),
    device: str = "auto",
    workers: int = 0,
    restart: bool = False,
    restart_if_changed: bool = False,
    teacher_cache: bool = True,
    teacher_features: str | os.PathLike | None = None,
) -> dict:
    """Fine-tune `model_name` with weights `pretrained` on `table`'s train split into the run directory `out`.

    Under `torchrun` each process trains on its share of every global batch (DistributedDataParallel)
    and only rank 0 writes. StarFT's teacher encodes each training image once (`teacher_cache`; from the
    feature store `teacher_features` when given) unless the config augments. Returns the summary (also
    written to `out/summary.json`).
    """
    config.check()
    out = Path(out)
    refuse_inside(out, table.root, "the dataset root")
    world = join_world(resolve_device(device))
    try:
        with output_lock(out) if world.is_main else contextlib.nullcontext():  # only the main process writes
            # its own earlier run is resumed (or discarded with restart): what --overwrite is elsewhere
            check_output(out, "finetune", is_own=_is_finetune_run, replace_own=True)
            run = FinetuneRun(table, out, model_name=model_name, pretrained=pretrained, config=config,
                              device=process_device(resolve_device(device), world), world=world,
                              workers=workers, restart=restart, restart_if_changed=restart_if_changed,
                              teacher_cache=teacher_cache, teacher_features=teacher_features)
            return run.train()
    finally:
        leave_world(world)


def _is_finetune_run(out: Path) -> bool:
    """A folder a fine-tuning run wrote, finished or not (the curve appears before the first state)."""
    return out.is_dir() and any((out / name).exists() for name in (STATE, BEST, MODEL, SUMMARY, CURVE))


class _Encoder(nn.Module):
    """Both towers in one forward call, so DistributedDataParallel sees one forward per step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None):
        image_features = self.model.encode_image(images, normalize=True)
        text_features = self.model.encode_text(tokens, normalize=True) if tokens is not None else None
        return image_features, text_features, self.model.logit_scale.exp()


class FinetuneRun:
    """One fine-tuning run: the model, its frozen zero-shot copy, the optimisation state and the run directory.

    `finetune` is the way to run one; `step` is public for benchmarks that time a single optimisation step.
    """

    def __init__(self, table: DatasetTable, out: Path, *, model_name: str, pretrained: str, config: FinetuneConfig,
                 device: torch.device, world: World = World(), workers: int = 0, restart: bool = False,
                 restart_if_changed: bool = False, teacher_cache: bool = True, teacher_features: str | os.PathLike | None = None):
        self.table, self.out, self.model_name, self.config = table, out, model_name, config
        self.device, self.world, self.workers = device, world, workers
        self.train_rows = torch.as_tensor(split_rows(table, "train"))
        split_rows(table, "val")  # selection needs a val split: fail before any training
        self.batch_size = min(config.batch_size, len(self.train_rows))
        if self.batch_size % world.size:
            raise GcctlError(f"the batch of {self.batch_size} does not split evenly over {world.size} processes; choose a multiple")
        self.steps_per_epoch = len(self.train_rows) // self.batch_size
        seed_everything(config.seed)
        self.bundle = build_clip(model_name, pretrained, device=device, seed=config.seed)
        self.model = self.bundle.model
        aligns = METHODS[config.method].aligns_spurious
        self.templates = read_pools(config.pools) if aligns else []
        self.identity = self._identity()
        self.labels = torch.tensor(table.frame["y"].to_numpy(), dtype=torch.long)
        self._prepare_texts()
        self.head = self._zero_shot_head() if config.loss == "ce" else None
        self.train_transform = train_transform(self.model, config.crop_scale) if config.augment else self.bundle.preprocess
        # StarFT's reference, the initial model (None for FT): made before any weight is loaded or trained.
        self.teacher = self._teacher(teacher_cache, teacher_features) if aligns else None
        self.trainable = self._set_trainable()
        self._make_optimiser()
        self.curve: list[dict] = []
        self.best: dict | None = None
        self.start_epoch = self._resume(restart, restart_if_changed)
        # Seconds per finished epoch, beside the run (gcctl.files.timings_path), never inside it.
        earlier = read_timings(self.out).get("epoch_seconds", {}) if self.start_epoch else {}
        self.epoch_seconds = {epoch: seconds for epoch, seconds in earlier.items() if int(epoch) <= self.start_epoch}
        self.encoder = _Encoder(self.model)
        if world.distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            self.encoder = nn.parallel.DistributedDataParallel(self.encoder, device_ids=device_ids)

    # ------------------------------------------------------------------ set-up

    def _identity(self) -> dict:
        """What makes two runs the same run: resuming is only allowed when this is equal.
        The base model counts by its identity, so moving the checkpoint file does not matter."""
        config = asdict(self.config)
        config["pools"] = list(config["pools"])
        return {
            "config": config,
            "templates": self.templates,
            "model": self.bundle.reference.identity(),
            "dataset": self.table.dataset,
            "dataset_fingerprint": self.table.fingerprint(),
            "weight_decay_rule": WEIGHT_DECAY_RULE,
        }

    def _prepare_texts(self) -> None:
        """Tokens of the class captions and of every (class, template) spurious caption, made once."""
        tokenizer = self.bundle.tokenizer
        captions = [self.config.caption.format(word) for word in class_words(None, self.table.class_names)]
        self.class_tokens = tokenizer(captions).to(self.device)
        spurious = [fill(template, caption) for caption in captions for template in self.templates]
        self.spurious_tokens = tokenizer(spurious).to(self.device) if spurious else None
        if spurious:
            full = int((self.spurious_tokens[:, -1] != 0).sum())
            if full:
                log.warning("%d of %d spurious captions fill the model's whole text context (%d tokens) and may be cut; "
                            "shorten the templates", full, len(spurious), self.spurious_tokens.shape[1])

    def _zero_shot_head(self) -> ZeroShotHead:
        with torch.no_grad():
            class_features = self.model.encode_text(self.class_tokens, normalize=True).float()
        return ZeroShotHead(class_features, logit_scale(self.model)).to(self.device)

    def _teacher(self, cache: bool, features: str | os.PathLike | None) -> Teacher:
        """The frozen initial model, its image features of the training images cached when nothing random
        changes them (see `gcctl.finetune.teacher`)."""
        teacher = Teacher(self.model, self.spurious_tokens, len(self.table.class_names), self.device)
        rows = self.train_rows.numpy()
        if self.config.augment:
            if features is not None:
                raise GcctlError("--teacher-features needs the same images every epoch; drop --augment or --teacher-features")
            teacher.no_image_cache("--augment: the training images differ every epoch")
        elif features is not None:
            teacher.read_image_cache(features, self.table, rows, self.bundle.reference)
        elif cache:
            teacher.compute_image_cache(self.table, rows, self.train_transform, batch_size=self.batch_size // self.world.size,
                                        workers=self.workers, world=self.world)
        else:
            teacher.no_image_cache("--no-teacher-cache")
        return teacher

    def _set_trainable(self) -> list[nn.Parameter]:
        """Freeze what the loss cannot train: a tower not chosen, the text tower when no loss term reads it,
        the temperature unless the contrastive loss uses it."""
        config = self.config
        text_used = config.loss == "contrastive" or METHODS[config.method].aligns_spurious
        for name, parameter in self.model.named_parameters():
            if name.startswith("logit_"):
                parameter.requires_grad_(config.loss == "contrastive")
            elif name.startswith("visual."):
                parameter.requires_grad_(config.towers in ("both", "image"))
            else:
                parameter.requires_grad_(config.towers in ("both", "text") and text_used)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        trainable += list(self.head.parameters()) if self.head is not None else []
        if not any(p.requires_grad for p in self.model.parameters()):
            raise GcctlError(f"nothing of the model trains with --towers {config.towers}, --loss {config.loss} and "
                             f"--method {config.method}; the text tower only trains with a loss that reads captions")
        return trainable

    def _make_optimiser(self) -> None:
        self.optimiser = ContrastiveOptimiser(self.model, self.trainable, lr=self.config.lr, weight_decay=self.config.weight_decay,
                                              total_steps=self.config.epochs * self.steps_per_epoch,
                                              warmup=self.config.warmup, device=self.device)

    # ------------------------------------------------------------------ resume

    def _resume(self, restart: bool, restart_if_changed: bool) -> int:
        """The first epoch to train: after the last finished one of a run with the same identity."""
        state = load_resume_state(self.out / STATE, self.identity, restart=restart, restart_if_changed=restart_if_changed)
        if state is None:
            return 0
        self.model.load_state_dict(state["model"])
        if self.head is not None:
            self.head.load_state_dict(state["head"])
        self.optimiser.load_state_dict(state)
        self.curve, self.best = state["curve"], state["best"]
        return state["epoch"]

    def _save_state(self, epoch: int) -> None:
        state = {
            "identity": self.identity,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "head": self.head.state_dict() if self.head is not None else {},
            **self.optimiser.state_dict(),
            "curve": self.curve,
            "best": self.best,
        }
        save_torch_file(self.out / STATE, state)

    # ------------------------------------------------------------------ training

    def train(self) -> dict:
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.start_epoch == 0:
                for name in (STATE, BEST, MODEL, SUMMARY):  # a fresh run leaves nothing of an older one
                    (self.out / name).unlink(missing_ok=True)
                self.curve = [{"epoch": 0, "val": self._validate()}]  # the zero-shot starting point
            self.curve_log = CurveLog(self.out / CURVE)  # starts empty, then holds the state's epochs
            self.curve_log.log_records(map(_curve_point, self.curve), step_key="epoch")
        with progress() as bar:
            task = bar.add_task(f"{self.config.method} {self.model_name}", total=self.config.epochs * self.steps_per_epoch,
                                completed=self.start_epoch * self.steps_per_epoch, visible=self.world.is_main)
            for epoch in range(self.start_epoch, self.config.epochs):
                started = time.perf_counter()
                record = self._epoch(epoch, lambda loss: bar.update(task, advance=1, description=f"{self.config.method} loss {loss:.3f}"))
                seconds = time.perf_counter() - started
                if self.world.is_main:
                    self._finish_epoch(record, seconds)
                barrier(self.world)
        return self._finalize() if self.world.is_main else {}

    def _epoch(self, epoch: int, on_step) -> dict:
        reg_lambda = self.config.lambda_at(epoch)
        seed = epoch_seed(self.config.seed, epoch)
        order = torch.randperm(len(self.train_rows), generator=torch.Generator().manual_seed(seed))
        batches = order[: self.steps_per_epoch * self.batch_size].view(self.steps_per_epoch, self.batch_size)
        local = [self.world.share(self.train_rows[batch]).tolist() for batch in batches]
        templates = draw_templates(len(self.table.frame), max(1, len(self.templates)), seed)
        loader = image_loader(ImageDataset(self.table, self.train_transform), workers=self.workers, device=self.device,
                              batch_sampler=local)
        totals = {"loss": 0.0, "base_loss": 0.0, "regulariser": 0.0}
        self.model.train()
        for images, rows in loader:
            losses = self.step(images.to(self.device), rows, templates[rows].to(self.device), reg_lambda)
            for key in totals:
                totals[key] += losses[key]
            on_step(losses["loss"])
        self.model.eval()
        return {
            "epoch": epoch + 1,
            "lambda": reg_lambda,
            "lr_end": self.optimiser.last_lr(),
            **{key: value / self.steps_per_epoch for key, value in totals.items()},
            "steps": self.steps_per_epoch,
        }

    def step(self, images: torch.Tensor, rows: torch.Tensor, templates: torch.Tensor, reg_lambda: float) -> dict:
        """One optimisation step on this process's share of a batch: `images` of the table rows `rows` (a CPU tensor),
        `templates` indexing each one's spurious template."""
        labels = self.labels[rows].to(self.device)
        tokens = [self.class_tokens] if self.config.loss == "contrastive" else []
        if self.teacher is not None:
            # Each distinct spurious caption of the batch is encoded once; `which` maps samples to them.
            distinct, which = torch.unique(labels * len(self.templates) + templates, return_inverse=True)
            tokens.append(self.spurious_tokens[distinct])
        with autocast(self.device):
            image_features, text_features, scale = self.encoder(images, torch.cat(tokens) if tokens else None)
        all_images, all_labels = gather(image_features, self.world), gather(labels, self.world)
        if self.config.loss == "contrastive":
            captions = gather(text_features[: len(self.class_tokens)][labels], self.world)
            base_loss = flyp_loss(all_images, captions, scale)
        else:
            base_loss = F.cross_entropy(self.head(all_images), all_labels)
        regulariser = torch.zeros((), device=self.device)
        if self.teacher is not None:
            spurious = text_features[len(text_features) - len(distinct) :][which]
            regulariser = self._regulariser(images, rows, labels, templates, all_images, all_labels, spurious)
        loss = base_loss + reg_lambda * regulariser
        self.optimiser.step(loss)
        return {"loss": loss.item(), "base_loss": base_loss.item(), "regulariser": regulariser.item()}

    def _regulariser(self, images, rows, labels, templates, all_images, all_labels, spurious) -> torch.Tensor:
        """StarFT's term for the global batch; the frozen model's features of the local share are gathered."""
        return starft_regulariser(
            all_images,
            gather(spurious, self.world),
            gather(self.teacher.image_features(images, rows), self.world),
            gather(self.teacher.spurious[labels, templates], self.world),
            all_labels,
            self.teacher.scale,
            mask_same_class=self.config.regulariser == "star",
        )


    # ------------------------------------------------------------------ selection and outputs

    def _validate(self) -> dict:
        return zeroshot_metrics(self.bundle, self.table, "val", device=self.device, templates=[self.config.caption],
                                batch_size=self.batch_size, workers=self.workers)

    def _finish_epoch(self, record: dict, seconds: float) -> None:
        """Validate, keep the weights if they are the best so far, checkpoint the epoch, then log it (and its
        training seconds, beside the run)."""
        record["val"] = self._validate()
        self.curve.append(record)
        value = record["epoch"] if self.config.select_by == LAST_EPOCH else record["val"][self.config.select_by]
        if self.best is None or value > self.best["value"]:
            self.best = {"epoch": record["epoch"], "value": value}
            save_checkpoint(self.model, self.out / BEST, self.model_name)
        self._save_state(record["epoch"])  # after best.pt: a state never points at a best.pt not yet written
        self.curve_log.log_records([_curve_point(record)], step_key="epoch")
        self.epoch_seconds[str(record["epoch"])] = round(seconds, 3)
        write_timings(self.out, {"epoch_seconds": self.epoch_seconds})

    def _finalize(self) -> dict:
        if (self.out / BEST).is_file():
            os.replace(self.out / BEST, self.out / MODEL)
        kept = next(record for record in self.curve if record["epoch"] == self.best["epoch"])
        trained = [record for record in self.curve if record["epoch"] > 0]
        summary = {
            "method": self.config.method,
            "base": self.bundle.reference.recorded_for(self.out).to_dict(),
            "config": self.identity["config"],
            "dataset": self.table.dataset,
            "dataset_fingerprint": self.identity["dataset_fingerprint"],
            "templates": len(self.templates),
            "teacher_cache": self.teacher.cache if self.teacher is not None else None,
            "processes": self.world.size,
            "best_epoch": self.best["epoch"],
            "select_by": LAST_EPOCH if self.config.select_by == LAST_EPOCH else f"val_{self.config.select_by}",
            "val_acc_avg": kept["val"]["acc_avg"],
            "val_acc_wg": kept["val"]["acc_wg"],
            "zeroshot_val_acc_avg": self.curve[0]["val"]["acc_avg"],
            "zeroshot_val_acc_wg": self.curve[0]["val"]["acc_wg"],
            "steps": sum(record["steps"] for record in trained),
            "model_sha256": sha256_file(self.out / MODEL),
            "gcctl_version": __version__,
        }
        write_json(self.out / SUMMARY, summary)
        seconds = sum(self.epoch_seconds.values())
        return {"run": str(self.out), **summary, "seconds": round(seconds, 2),
                "seconds_per_step": round(seconds / max(1, summary["steps"]), 4)}


def _curve_point(record: dict) -> dict:
    """A curve record with its validation metrics as `val_<name>` fields (per-group accuracies left out)."""
    flat = {key: value for key, value in record.items() if key != "val"}
    return {**flat, **{f"val_{name}": value for name, value in record["val"].items() if name != "per_group"}}
