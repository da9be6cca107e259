"""Thin wrapper: `python scripts/resample_level.py ...` == `flowvae resample-level ...` (see flowvae/cli.py for the options)."""
import sys

from flowvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["resample-level", *sys.argv[1:]]))
