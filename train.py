"""Train a vitzoo/timm model: a thin wrapper around ``vitzoo.cli.train_main`` (same as the ``vitzoo-train`` script)."""
from vitzoo.cli import train_main

if __name__ == "__main__":
    train_main()
