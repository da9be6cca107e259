"""``python -m flowvae ...`` == ``flowvae ...``."""
import sys

from .cli import main

sys.exit(main())
