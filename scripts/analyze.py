"""Thin wrapper: `python scripts/analyze.py ...` == `flowvae analyze ...` (see flowvae/cli.py for the options)."""
import sys

from flowvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
