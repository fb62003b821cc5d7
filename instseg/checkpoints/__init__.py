"""Checkpoints: atomic writes and the resume point (io), the run record every checkpoint
carries (record), the checks before one is loaded (fit), and modules built from checkpoints
or published weights (build)."""
