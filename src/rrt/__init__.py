"""rrt: Relaxed Recursive Transformers (Bae et al., ICLR 2025) as a reproducible workflow.

Importing the package registers the recursive model with transformers' Auto classes (through
:mod:`rrt.model`), so a saved model loads with ``AutoModelForCausalLM.from_pretrained``. The
method in two calls::

    import rrt
    recursive = rrt.convert(source_model, loops=2, init="stepwise")
    relaxed = rrt.relax(recursive, source_model, rank=64)
"""

from rrt.method.convert import convert
from rrt.method.relax import relax
from rrt.model import RecursiveConfig, RecursiveForCausalLM

__version__ = "0.1.0"

__all__ = ["RecursiveConfig", "RecursiveForCausalLM", "__version__", "convert", "relax"]
