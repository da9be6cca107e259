"""Thin wrapper: `python scripts/swap.py ...` == `flowvae swap ...` (see flowvae/cli.py for the options)."""
import sys

from flowvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["swap", *sys.argv[1:]]))
