"""instseg's Hydra configs, installed as the package `instseg.conf` (setup.cfg: package_dir);
read through instseg/configs.py. conf/local/ (git-ignored) holds a developer's own overrides
and never ships."""
