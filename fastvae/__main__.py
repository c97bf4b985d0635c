"""`python -m fastvae ...` is the `fastvae` command line."""
from .cli import run

run()
