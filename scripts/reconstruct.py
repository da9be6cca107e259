"""Thin wrapper: `python scripts/reconstruct.py ...` == `flowvae reconstruct ...` (see flowvae/cli.py for the options)."""
import sys

from flowvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["reconstruct", *sys.argv[1:]]))
