"""What a fine-tuning run is: the method registry (FT, StarFT) and `FinetuneConfig`, every field of which is a
`gcctl finetune` option (`gcctl.settings`) and enters the run's identity."""

from __future__ import annotations

from dataclasses import dataclass

from gcctl.clip.captions import DEFAULT_CAPTION, check_template
from gcctl.clip.schedule import WARMUP_HELP, check_warmup
from gcctl.errors import GcctlError
from gcctl.metrics import PSEUDO_SELECTION, SELECT_BY
from gcctl.settings import check_settings, setting


@dataclass(frozen=True)
class FinetuneMethod:
    """A whole-model fine-tuning method of the registry `METHODS`."""

    summary: str
    aligns_spurious: bool  # adds StarFT's regulariser: a frozen teacher and the spurious captions of the pools


METHODS = {
    "ft": FinetuneMethod("the base loss alone (FLYP's contrastive loss, or cross-entropy)", aligns_spurious=False),
    "starft": FinetuneMethod("the base loss plus StarFT's spuriosity alignment to the zero-shot model", aligns_spurious=True),
}
LOSSES = ("contrastive", "ce")
LAMBDA_SCHEDULES = ("linear", "paper", "constant")
REGULARISERS = ("star", "kl")
TOWERS = ("both", "image", "text")
LAST_EPOCH = "last"  # --select-by: keep the last epoch, whatever validation says


@dataclass(frozen=True)
class FinetuneConfig:
    """What a fine-tuning run is: every field enters the run's identity (device and workers do not)."""

    method: str = setting("starft", choices=tuple(METHODS), help="; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items()) + ".")
    loss: str = setting("contrastive", choices=LOSSES,
                        help="contrastive (FLYP: image vs class caption) or ce (cross-entropy via a zero-shot head).")
    towers: str = setting("both", choices=TOWERS, help="Which towers train: both, image or text.")
    reg_lambda: float = setting(0.5, flag="--lambda", help="Weight of the StarFT regulariser.")
    regulariser: str = setting("star", choices=REGULARISERS, help=(
        "StarFT's term: star (the KL over spurious captions of other classes, same-class ones masked) or kl "
        "(the authors' unmasked ablation, --spurious-type kl in their code)."))
    lambda_schedule: str = setting("linear", choices=LAMBDA_SCHEDULES, help=(
        "The weight over epochs e = 0..E-1: linear λ(1-e/E), paper λ(1-(e+1)/E) (the authors' code: 0 in the last "
        "epoch, so a 1-epoch run is FT), or constant λ."))
    augment: bool = setting(False, flag="--augment/--no-augment", help=(
        "Train on open_clip's random resized crops (what the StarFT authors train with) instead of the eval "
        "transform; StarFT's teacher then encodes every batch."))
    pools: tuple[str, ...] = setting(("background",), flag="--pool", help=(
        "Spurious templates: a shipped pool (background, texture, resolution, synthetic), a text file of one "
        "template with {} per line, or a .pt file of a list of them (the StarFT authors' keywords/*.pt); repeat "
        "to join pools."))
    caption: str = setting(DEFAULT_CAPTION, help="Each image's class caption; {} is the class name.")
    epochs: int = setting(10, help="Passes over the train split.")
    batch_size: int = setting(256, help="Global batch (split over torchrun processes).")
    lr: float = setting(1e-5, help="Peak AdamW learning rate.")
    weight_decay: float = setting(0.1, help="AdamW weight decay (on weight matrices: gcctl.clip.contrastive).")
    crop_scale: float = setting(0.9, help=(
        "With --augment: the smallest share of the image's area a random resized crop keeps (crops cover [s, 1]; "
        "the StarFT authors: 0.9)."))
    warmup: float = setting(0.1, help=WARMUP_HELP)
    # acc_wg_pseudo reads a feature run's --val-groups, which fine-tuning does not take.
    select_by: str = setting("acc_wg", choices=(*(rule for rule in SELECT_BY if rule != PSEUDO_SELECTION), LAST_EPOCH), help=(
        "What picks the kept epoch: validation acc_wg, acc_avg or acc_worst_class, or last (every epoch checkpointed, the last kept: "
        "the StarFT authors' protocol, which needs no validation labels)."))
    seed: int = setting(0, help="Seeds batch order, template draws and the random weights of --pretrained none.")

    def check(self) -> None:
        check_settings(self)
        if self.epochs < 1 or self.batch_size < 2:
            raise GcctlError(f"--epochs must be ≥ 1 and --batch-size ≥ 2 (contrastive pairs need negatives), got {self.epochs} and {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0 or self.reg_lambda < 0:
            raise GcctlError(f"--lr must be > 0, --weight-decay and --lambda ≥ 0, got {self.lr}, {self.weight_decay}, {self.reg_lambda}")
        if not 0 < self.crop_scale <= 1:
            raise GcctlError(f"--crop-scale is a share of the image's area in (0, 1], got {self.crop_scale}")
        check_warmup(self.warmup)
        check_template(self.caption, "in --caption")

    def lambda_at(self, epoch: int) -> float:
        """The regulariser's weight in epoch `epoch` (0-based) of E:

        - linear: λ·(1 − e/E), from λ down to λ/E in the last epoch;
        - paper: λ·(1 − (e+1)/E), the authors' code (`--diminishing`): already below λ in the first epoch, 0 in
          the last one, so a one-epoch run is plain FT;
        - constant: λ throughout.
        """
        if not METHODS[self.method].aligns_spurious:
            return 0.0
        done = {"linear": epoch, "paper": epoch + 1, "constant": 0}[self.lambda_schedule]
        return self.reg_lambda * (1 - done / self.epochs)
