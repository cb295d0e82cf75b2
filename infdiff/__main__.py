"""Entry point of ``python -m infdiff``."""
import sys

from infdiff.cli import main

sys.exit(main())
