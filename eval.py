"""Evaluate a checkpoint or model: a thin wrapper around ``vitzoo.train.cli.eval_main`` (same as ``vitzoo-eval``)."""
from vitzoo.train.cli import eval_main

if __name__ == "__main__":
    eval_main()
