"""Thin wrapper: `python scripts/interpolate.py ...` == `flowvae interpolate ...` (see flowvae/cli.py for the options)."""
import sys

from flowvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["interpolate", *sys.argv[1:]]))
