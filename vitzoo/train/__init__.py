"""Training and evaluation on accelerate: configs, data, checkpoints, the loop and the command-line entry points."""
