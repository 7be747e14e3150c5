"""alignbench's Hydra configs, installed as the package ``alignbench_conf``."""
