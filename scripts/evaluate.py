"""Thin wrapper: `python scripts/evaluate.py ...` == `flowvae evaluate ...` (see flowvae/cli.py for the options)."""
import sys

from flowvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
