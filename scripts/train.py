"""Thin wrapper: `python scripts/train.py ...` == `flowvae train ...` (see flowvae/cli.py for the options)."""
import sys

from flowvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
