"""A model reference: the one record of which model an artifact was made with, and how to get it again.

`build_clip` resolves a `--pretrained` value once into a `ModelRef` (architecture, weights source, sha256 of
the weights, preprocessing; random weights record the seed they were drawn from and are hashed as drawn).
Stores, runs, fine-tuning summaries and metrics carry it whole (`to_dict`); whatever needs the model again
rebuilds it from the reference (`factory.build_from_reference`), which verifies the weights by their hash. A
file or folder source is recorded relative to the folder of the artifact that carries it (`recorded_for`) when
it lies in the project, so a copied pipeline folder still finds its weights; `anchor` is that folder once the
reference is read back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gcctl.errors import GcctlError

_LOCAL_KINDS = ("file", "local-dir")  # sources that are paths on this machine
LOCAL_DIR, HF_HUB = "local-dir:", "hf-hub:"  # the --pretrained prefixes of model folders and hub repos
_PREFIXES = {"local-dir": LOCAL_DIR, "hf-hub": HF_HUB}
NO_WEIGHTS = "none"  # the sha256 that records made before random weights were seeded hold


@dataclass(frozen=True)
class ModelRef:
    architecture: str  # the model name (a registered config, or a model folder's own name)
    kind: str  # tag, file, local-dir, hf-hub or none
    source: str  # the tag, the file or folder path, the hub repo id; "" for kind none
    sha256: str  # of the weights file; for random weights, of the drawn weights (`factory.state_dict_sha256`)
    preprocess: dict = field(default_factory=dict)  # the eval transform (`describe_preprocess`)
    seed: int | None = None  # the seed random weights (kind none) were drawn from; None for weights from a source
    anchor: Path | None = field(default=None, compare=False)  # the folder a relative `source` is relative to

    def to_dict(self) -> dict:
        """The one serialisation: what artifacts store (the anchor is where they are, so it is not stored)."""
        seed = {"seed": self.seed} if self.seed is not None else {}
        return {"architecture": self.architecture, "kind": self.kind, "source": self.source,
                "sha256": self.sha256, "preprocess": self.preprocess, **seed}

    @classmethod
    def from_dict(cls, record: dict, anchor: str | os.PathLike | None = None) -> "ModelRef":
        """The reference an artifact recorded; `anchor` is the artifact's folder."""
        try:
            fields = {key: record[key] for key in ("architecture", "kind", "source", "sha256", "preprocess")}
        except (KeyError, TypeError):
            where = f" in {anchor}" if anchor is not None else ""
            raise GcctlError(f"the model reference recorded{where} is incomplete ({record!r:.80}); "
                             "rerun the stage that wrote it") from None
        return cls(**fields, seed=record.get("seed"), anchor=Path(anchor) if anchor is not None else None)

    def identity(self) -> dict:
        """What makes two models the same model, wherever their weights lie: features made with one are
        features of the other (random weights count by their hash, so two seeds are two models). Resume and
        compatibility checks compare this and nothing else."""
        return {"architecture": self.architecture, "sha256": self.sha256, "preprocess": self.preprocess}

    def recorded_for(self, folder: str | os.PathLike) -> "ModelRef":
        """This reference as an artifact in `folder` records it: a path inside the project (the current
        directory) or inside `folder` becomes relative to `folder`, any other path stays absolute."""
        if self.kind not in _LOCAL_KINDS:
            return self
        folder = Path(folder).resolve()
        path = self._absolute()
        if _inside(path, Path.cwd().resolve()) or _inside(path, folder):
            return self._moved(os.path.relpath(path, folder), folder)
        return self._moved(str(path), folder)

    def pretrained(self) -> str:
        """The `--pretrained` value that builds this model, its path found first (see `locate`)."""
        if self.kind in _LOCAL_KINDS:
            return _PREFIXES.get(self.kind, "") + str(self.locate())
        return _PREFIXES.get(self.kind, "") + (self.source or "none")

    def locate(self) -> Path:
        """The file or folder of a local source: the recorded path if absolute, else relative to the anchor,
        else relative to the current directory (where a pipeline runs)."""
        recorded = Path(self.source).expanduser()
        candidates = [recorded] if recorded.is_absolute() else [*([self.anchor / recorded] if self.anchor else []), recorded]
        exists = Path.is_file if self.kind == "file" else Path.is_dir
        for candidate in candidates:
            if exists(candidate):
                return candidate
        where = f"{self.source} relative to {self.anchor} or to the current directory" if len(candidates) > 1 else self.source
        raise GcctlError(
            f"cannot find the weights of {self.architecture} ({where}); "
            f"pass --pretrained with where they are now (sha256 {self.sha256[:16]})"
        )

    def check_built(self, built: "ModelRef", pretrained: str, recorded_in: str) -> None:
        """Refuse weights other than the recorded ones; a record of unseeded random weights accepts any."""
        if self.sha256 != NO_WEIGHTS and built.sha256 != self.sha256:
            raise GcctlError(
                f"the weights {pretrained} hash to {built.sha256[:16]}, but {recorded_in} was made with {self.sha256[:16]}; "
                "pass --pretrained with the weights it was made with"
            )

    def _absolute(self) -> Path:
        path = Path(self.source).expanduser()
        return (path if path.is_absolute() else (self.anchor or Path.cwd()) / path).resolve()

    def _moved(self, source: str, anchor: Path) -> "ModelRef":
        return ModelRef(self.architecture, self.kind, source, self.sha256, self.preprocess, self.seed, anchor)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
