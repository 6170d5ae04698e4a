"""`python -m gateway` → the `sluice` CLI."""

from __future__ import annotations

from gateway.cli import main

main()
