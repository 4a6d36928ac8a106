"""``python -m ppfr.cli``: the ``ppfr`` command (``torchrun ... -m ppfr.cli train`` too)."""

from ppfr.cli import app

app()
