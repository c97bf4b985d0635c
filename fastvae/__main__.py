"""`python -m fastvae ...` is the `fastvae` command line."""
import sys

from .cli import main

sys.exit(main())
