"""`python -m gcctl …`, and `torchrun … -m gcctl extract …` where `gcctl` on PATH is not a Python script."""

from gcctl.cli import main

main()
