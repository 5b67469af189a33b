"""rrt: Relaxed Recursive Transformers (Bae et al., ICLR 2025) as a reproducible workflow."""

__version__ = "0.1.0"
