"""The synthetic world: procedural images, a captioned pretraining corpus, and benchmarks written in the
real datasets' layouts, so every stage runs without downloads."""

from gcctl.synth.benchmarks import write_multiceleba, write_scattered, write_waterbirds
from gcctl.synth.corpus import Corpus, load_corpus, write_corpus
from gcctl.synth.render import BACKGROUNDS, COLOURS, FILLS, SHAPES, render, render_scene

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "FILLS",
    "SHAPES",
    "Corpus",
    "load_corpus",
    "render",
    "render_scene",
    "write_corpus",
    "write_multiceleba",
    "write_scattered",
    "write_waterbirds",
]
