"""The tasks: train, evaluate, demo, check, browse, stats. Each is a function of the composed
Hydra config, the only code that reads `cfg`; instseg.cli wraps them as commands."""
