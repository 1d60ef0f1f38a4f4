"""Train a vitzoo/timm model: a thin wrapper around ``vitzoo.train.cli.train_main`` (the ``vitzoo-train`` script)."""
from vitzoo.train.cli import train_main

if __name__ == "__main__":
    train_main()
