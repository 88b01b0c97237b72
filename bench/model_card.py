"""The zero-shot model's card as a Markdown block, read from what `dvc repro` wrote (nothing typed):

- the concept check (`pipeline/models/tiny/card.json`, stage `card@tiny`): how many of the world's kinds,
  colours, backgrounds and fills the tiny CLIP names zero-shot;
- its zero-shot accuracy on each transfer target (`pipeline/transfer/zeroshot/`, stage `transfer_zeroshot`);
- its zero-shot worst-group and average accuracy on each group benchmark (`pipeline/metrics/<dataset>/zeroshot.json`).

    python bench/model_card.py --readme README.md   # after `dvc repro`; the block between results:model-card markers
    python bench/model_card.py --pipeline /elsewhere/pipeline   # print it for another run's outputs
"""

from __future__ import annotations

import json
from pathlib import Path


FACTORS = ("kind", "colour", "background", "fill")


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def card_markdown(pipeline: Path) -> str:
    card = json.loads((pipeline / "models/tiny/card.json").read_text())
    transfer = json.loads((pipeline / "transfer/zeroshot/summary.json").read_text())
    seed = next(iter(transfer["seeds"]))
    scores = transfer["seeds"][seed]
    lines = [f"Concepts named zero-shot (`gcctl models card`, {card['images']} fresh images): "
             f"**{card['named']} of {card['concepts']}**; "
             + ", ".join(f"{factor}s {card[factor]['named']}/{card[factor]['values']} ({_percent(card[factor]['accuracy'])}%)"
                         for factor in FACTORS) + ".", "",
             "| task | role | zero-shot avg | zero-shot worst-group |", "|---|---|---:|---:|"]
    for name, target in transfer["targets"].items():
        worst = scores.get(f"{name}/acc_wg")
        lines.append(f"| {name} | {target['role']} | {_percent(scores[f'{name}/acc_avg'])} | "
                     f"{'–' if worst is None else _percent(worst)} |")
    for metrics_file in sorted((pipeline / "metrics").glob("*/zeroshot.json")):
        metrics = json.loads(metrics_file.read_text())
        if metrics_file.parent.name not in transfer["targets"]:
            lines.append(f"| {metrics_file.parent.name} | group | {_percent(metrics['acc_avg']['mean'])} | "
                         f"{_percent(metrics['acc_wg']['mean'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from blocks import block_main  # bench/ is on the path when this runs as a script

    block_main(__doc__.split("\n\n")[0], "model-card", card_markdown)
