"""OmegaConf resolvers used by conf/: importing this module registers them.

`${cwd:}` is the absolute directory the command runs in. Hydra's `${hydra:runtime.cwd}` is
the same inside a job, but is not set yet when a multirun launcher resolves its sweep dir.
"""

import os

from omegaconf import OmegaConf

if not OmegaConf.has_resolver("cwd"):
    OmegaConf.register_new_resolver("cwd", os.getcwd)
