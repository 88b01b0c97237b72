"""Contrastive pretraining of a CLIP from scratch on an image-caption corpus (symmetric InfoNCE), resumable.

While a run trains, `state.pt` in its folder holds everything to continue it (weights, optimiser, schedule,
random state, the curve so far, and the run's identity: its settings, initial weights and corpus); it is saved
every `checkpoint_every` steps and at the end of every epoch, and removed once `model.pt` is written. Running
the same command again continues from it to the same final weights as an uninterrupted run (bit for bit on
CPU); a state of other settings is refused, or discarded with `restart` (always) or `restart_if_changed`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gcctl.clip.checkpoint import MODEL_FILE, SUMMARY_FILE, write_checkpoint
from gcctl.clip.contrastive import ContrastiveOptimiser, symmetric_infonce
from gcctl.clip.factory import fresh_clip
from gcctl.clip.preprocess import preprocess_uint8
from gcctl.clip.schedule import WARMUP_HELP, check_warmup
from gcctl.curves import CURVE_DIR, CurveLog
from gcctl.errors import GcctlError
from gcctl.files import (
    atomic_path,
    check_output,
    load_resume_state,
    output_lock,
    save_torch_file,
    sha256_file,
    write_json,
    write_timings,
)
from gcctl.runtime import (
    autocast,
    epoch_seed,
    progress,
    resolve_device,
    seed_everything,
)
from gcctl.settings import setting

OUTPUTS = (MODEL_FILE, SUMMARY_FILE, "loss.png")
STATE = "state.pt"  # the resumable state of an unfinished run
CURVE = CURVE_DIR  # the loss and learning rate per step, as DVCLive logs (gcctl.curves)


@dataclass(frozen=True)
class PretrainConfig:
    """What a pretraining run is: every field enters its identity (device and checkpointing do not)."""

    model: str = setting("gcctl-tiny", help="Architecture name (see `gcctl models`).")
    epochs: int = setting(5, help="Passes over the corpus.")
    batch_size: int = setting(256, help="Pairs per step; each pair's negatives are the rest of the batch.")
    lr: float = setting(2e-3, help="Peak AdamW learning rate.")
    weight_decay: float = setting(0.1, help="AdamW weight decay (on weight matrices: gcctl.clip.contrastive).")
    warmup: float = setting(0.1, help=WARMUP_HELP)
    seed: int = setting(0, help="Seeds initial weights and batch order.")


def pretrain(
    corpus: Path,
    out: Path,
    config: PretrainConfig = PretrainConfig(),
    *,
    device: str = "auto",
    plot: Callable[[list[dict], Path, str], None] | None = None,
    overwrite: bool = False,
    checkpoint_every: int = 100,
    restart: bool = False,
    restart_if_changed: bool = False,
) -> dict:
    """Train `config.model` from random weights (drawn from `config.seed`) on `corpus` (an .npz with uint8 `images`
    [N,S,S,3] and `captions` [N]); write model.pt, summary.json, the curve `dvclive/` and, drawn by
    `plot(history, path, model name)` (e.g. `gcctl.report.plot_pretraining_loss`), loss.png to `out`; return the summary.

    Batches are full (the last partial batch of an epoch is dropped): InfoNCE depends on batch size.
    The learning rate warms up linearly over `warmup` (a fraction of the steps, or a step count), then decays on a cosine.
    The curve grows at every checkpoint, so an unfinished run shows its progress (model.pt marks a finished one).
    A finished run in `out` is replaced only with `overwrite`; a folder holding anything else never.
    """
    _check_settings(config, checkpoint_every)
    corpus, out = Path(corpus), Path(out)
    with output_lock(out):
        check_output(out, "pretrain", is_own=_is_pretrain_run, replace_own=overwrite or not (out / MODEL_FILE).exists())
        return _train(corpus, out, config, device, plot, checkpoint_every, restart, restart_if_changed)


def _is_pretrain_run(out: Path) -> bool:
    """A folder a pretraining run wrote, finished (model.pt) or not (its curve)."""
    return out.is_dir() and any((out / name).exists() for name in (*OUTPUTS, STATE, CURVE))


def _train(corpus: Path, out: Path, config: PretrainConfig, device, plot, checkpoint_every, restart, restart_if_changed) -> dict:
    """`pretrain` once its --out is this process's."""
    images, captions = _load_pairs(corpus)
    torch_device = resolve_device(device)
    seed_everything(config.seed)
    bundle = fresh_clip(config.model, torch_device, seed=config.seed)
    settings = {**asdict(config), "batch_size": min(config.batch_size, len(images))}
    identity = {"config": settings, "model": bundle.reference.identity(), "corpus_sha256": sha256_file(corpus)}
    run = _Run(bundle.model, settings, len(images), torch_device)
    state = load_resume_state(out / STATE, identity, restart=restart, restart_if_changed=restart_if_changed)
    for name in OUTPUTS if state else (*OUTPUTS, STATE):  # an interrupted run must not leave another run's files behind
        (out / name).unlink(missing_ok=True)
    if state:
        run.load(state)
    curve = CurveLog(out / CURVE)  # rewritten from the state: it never holds a step twice, or one the state lacks
    if run.history:
        curve.log_records(run.history, step_key="step")
    logged = len(run.history)

    def checkpoint() -> None:
        nonlocal logged
        if len(run.history) < run.total_steps:  # the last step's state is model.pt itself
            save_torch_file(out / STATE, run.state(identity))
        curve.log_records(run.history[logged:], step_key="step")
        logged = len(run.history)

    tokens = _tokenize(bundle.tokenizer, captions).to(torch_device)
    pixels = torch.from_numpy(images).to(torch_device)
    with progress() as bar:
        task = bar.add_task(f"pretrain {config.model}", total=run.total_steps, completed=len(run.history))
        run.train(pixels, tokens, checkpoint_every, checkpoint,
                  on_step=lambda loss: bar.update(task, advance=1, description=f"pretrain {config.model} loss {loss:.3f}"))
    summary = _write_outputs(run, out, corpus, identity, torch_device, plot)
    (out / STATE).unlink(missing_ok=True)  # model.pt is complete: nothing is left to resume
    return summary


class _Run:
    """The model and everything that changes while it trains; `state` and `load` make a run resumable."""

    def __init__(self, model: torch.nn.Module, settings: dict, corpus_size: int, device: torch.device):
        self.model, self.settings, self.device = model, settings, device
        self.batch = settings["batch_size"]
        self.steps_per_epoch = corpus_size // self.batch
        self.total_steps = settings["epochs"] * self.steps_per_epoch
        self.corpus_size = corpus_size
        # CLIP's pretraining betas and eps (Radford et al. 2021)
        self.optimiser = ContrastiveOptimiser(model, model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"],
                                              total_steps=self.total_steps, warmup=settings["warmup"], device=device,
                                              betas=(0.9, 0.98), eps=1e-6)
        self.history: list[dict] = []  # one record per step taken: step, loss, lr
        self.seconds = 0.0  # training time over every session of the run

    def train(self, pixels: torch.Tensor, tokens: torch.Tensor, checkpoint_every: int, checkpoint: Callable[[], None],
              on_step: Callable[[float], None]) -> None:
        """The steps not yet taken; `checkpoint` after every `checkpoint_every` steps and every epoch."""
        self.model.train()
        first_epoch, done_in_epoch = divmod(len(self.history), self.steps_per_epoch)
        for epoch in range(first_epoch, self.settings["epochs"]):
            for rows in self._epoch_batches(epoch)[done_in_epoch if epoch == first_epoch else 0 :]:
                started = time.perf_counter()
                step_lr = self.optimiser.last_lr()
                loss = self._loss(preprocess_uint8(pixels[rows], self.model), tokens[rows])
                self.optimiser.step(loss)
                loss = loss.item()
                self.seconds += time.perf_counter() - started
                self.history.append({"step": len(self.history) + 1, "loss": loss, "lr": step_lr})
                on_step(loss)
                if len(self.history) % checkpoint_every == 0 or len(self.history) % self.steps_per_epoch == 0:
                    checkpoint()
        self.model.eval()

    def _loss(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        with autocast(self.device):
            image_features = self.model.encode_image(images, normalize=True)
            text_features = self.model.encode_text(tokens, normalize=True)
            return symmetric_infonce(self.model.logit_scale.exp() * image_features @ text_features.T)

    def _epoch_batches(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s batches of corpus rows: a function of the seed and the epoch, so a resumed run
        draws the same ones."""
        shuffler = torch.Generator().manual_seed(epoch_seed(self.settings["seed"], epoch))
        order = torch.randperm(self.corpus_size, generator=shuffler)[: self.steps_per_epoch * self.batch]
        return order.view(self.steps_per_epoch, self.batch).to(self.device)

    def state(self, identity: dict) -> dict:
        random_state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            random_state["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "identity": identity,
            "model": self.model.state_dict(),
            **self.optimiser.state_dict(),
            "random": random_state,
            "history": self.history,
            "seconds": self.seconds,
        }

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state)
        torch.set_rng_state(state["random"]["cpu"])
        if "cuda" in state["random"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["random"]["cuda"], self.device)
        self.history, self.seconds = state["history"], state["seconds"]


def _write_outputs(run: _Run, out: Path, corpus: Path, identity: dict, device: torch.device, plot) -> dict:
    """summary.json, loss.png, then model.pt: renamed into place last, so its presence means every other
    output is complete."""
    settings, history = run.settings, run.history
    tail = [record["loss"] for record in history[-10:]]
    summary = {
        "model": settings["model"],
        "corpus": str(corpus),
        "corpus_sha256": identity["corpus_sha256"],
        "images": run.corpus_size,
        "epochs": settings["epochs"],
        "batch_size": run.batch,
        "steps": run.total_steps,
        "lr": settings["lr"],
        "weight_decay": settings["weight_decay"],
        "warmup": settings["warmup"],
        "seed": settings["seed"],
        "init_sha256": identity["model"]["sha256"],
        "device": str(device),
        "first_loss": history[0]["loss"],
        "final_loss": float(np.mean(tail)),  # mean of the last 10 steps: one batch is noisy
        "logit_scale": round(run.model.logit_scale.detach().exp().item(), 3),
    }
    with atomic_path(out / MODEL_FILE) as model_tmp:
        write_checkpoint(run.model, model_tmp, settings["model"])
        summary["model_sha256"] = sha256_file(model_tmp)
        if plot is not None:
            plot(history, out / "loss.png", settings["model"])
        write_json(out / SUMMARY_FILE, summary)
    timings = {"seconds": round(run.seconds, 2), "seconds_per_step": round(run.seconds / run.total_steps, 4)}
    write_timings(out, timings)  # beside the folder: model.pt and summary.json are pure functions of the inputs
    return {**summary, **timings}


def _tokenize(tokenizer, captions: np.ndarray) -> torch.Tensor:
    """Each distinct caption once: a procedural corpus repeats few captions many times."""
    distinct, index = np.unique(captions, return_inverse=True)
    return tokenizer(distinct.tolist())[torch.from_numpy(index.reshape(-1))]


def _load_pairs(corpus: Path) -> tuple[np.ndarray, np.ndarray]:
    if not corpus.is_file():
        raise GcctlError(f"corpus file {corpus} not found; write it with `gcctl data synth` or check the path")
    try:
        with np.load(corpus, allow_pickle=False) as data:
            missing = [name for name in ("images", "captions") if name not in data.files]
            if missing:
                raise GcctlError(f"corpus {corpus} has no {' or '.join(missing)} array; it needs images [N,S,S,3] uint8 and captions [N]")
            images, captions = data["images"], data["captions"]
    except (OSError, ValueError) as error:
        raise GcctlError(f"cannot read corpus {corpus} ({error}); it must be an .npz with images and captions") from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise GcctlError(f"corpus images must be uint8 [N, S, S, 3], got {images.dtype} {list(images.shape)}; write the corpus again")
    if len(captions) != len(images) or len(images) < 2:
        raise GcctlError(f"corpus needs at least 2 images and one caption each, got {len(images)} images and {len(captions)} captions")
    return images, captions.astype(str)


def _check_settings(config: PretrainConfig, checkpoint_every: int) -> None:
    if config.epochs < 1 or checkpoint_every < 1:
        raise GcctlError(f"--epochs and --checkpoint-every must be at least 1, got {config.epochs} and {checkpoint_every}")
    if config.batch_size < 2:
        raise GcctlError(f"--batch-size must be at least 2 (contrastive pairs need negatives), got {config.batch_size}")
    if config.lr <= 0 or config.weight_decay < 0:
        raise GcctlError(f"--lr must be > 0 and --weight-decay >= 0, got {config.lr} and {config.weight_decay}")
    check_warmup(config.warmup)
