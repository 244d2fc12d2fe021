"""Benchmarks of gemkr-llamaindex: one script per question, run from the repository root as
``python -m benchmarks.NAME`` (catalogue: ``benchmarks/README.md``). Not part of the installed package."""
