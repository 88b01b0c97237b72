"""bench/model_card.py on canned pipeline outputs: the card's block is read from the files, never typed."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "model_card.py"


def _write(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def test_the_card_block_reads_the_concept_check_the_transfer_suite_and_the_benchmarks(tmp_path):
    spec = importlib.util.spec_from_file_location("model_card", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factor = {"named": 3, "values": 4, "accuracy": 0.5}
    _write(tmp_path / "models/tiny/card.json", {"images": 10, "named": 12, "concepts": 16,
                                                **{name: factor for name in module.FACTORS}})
    _write(tmp_path / "transfer/zeroshot/summary.json", {
        "targets": {"source": {"role": "source"}, "birds": {"role": "group"}},
        "seeds": {"0": {"source/acc_avg": 0.9, "birds/acc_avg": 0.8, "birds/acc_wg": 0.25}}})
    _write(tmp_path / "metrics/birds/zeroshot.json", {"acc_avg": {"mean": 0.8}, "acc_wg": {"mean": 0.25}})
    _write(tmp_path / "metrics/patches/zeroshot.json", {"acc_avg": {"mean": 0.97}, "acc_wg": {"mean": 0.913}})
    block = module.card_markdown(tmp_path)
    assert "**12 of 16**" in block and "kinds 3/4 (50.0%)" in block
    assert "| source | source | 90.0 | – |" in block and "| birds | group | 80.0 | 25.0 |" in block
    assert "| patches | group | 97.0 | 91.3 |" in block and block.count("| birds |") == 1
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:model-card:start -->\nold\n<!-- results:model-card:end -->\nb\n")
    subprocess.run([sys.executable, str(BENCH), "--pipeline", str(tmp_path), "--readme", str(readme)], check=True)
    assert "old" not in readme.read_text() and "**12 of 16**" in readme.read_text()
