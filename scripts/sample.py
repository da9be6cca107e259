"""Thin wrapper: `python scripts/sample.py ...` == `flowvae sample ...` (see flowvae/cli.py for the options)."""
import sys

from flowvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
