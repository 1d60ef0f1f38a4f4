"""A stand-in for timm's train.py / validate.py / benchmark.py: like them it parses ``--model`` and calls
``timm.create_model(args.model)``, and knows nothing of vitzoo."""
import argparse

import timm

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args()
    model = timm.create_model(args.model, num_classes=args.num_classes)
    print(f"created {args.model} with {model.num_classes} classes")
