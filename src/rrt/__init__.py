"""rrt: Relaxed Recursive Transformers (Bae et al., ICLR 2025) as a reproducible workflow.

Importing the package registers the recursive model with transformers' Auto classes, so a saved
model loads with ``AutoModelForCausalLM.from_pretrained``. The method in two calls::

    import rrt
    recursive = rrt.convert(source_model, loops=2, init="stepwise")
    relaxed = rrt.relax(recursive, source_model, rank=64)
"""

from transformers import AutoConfig, AutoModelForCausalLM

from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM

__version__ = "0.1.0"

AutoConfig.register(RecursiveConfig.model_type, RecursiveConfig, exist_ok=True)
AutoModelForCausalLM.register(RecursiveConfig, RecursiveForCausalLM, exist_ok=True)

from rrt.method.convert import convert  # noqa: E402  (after the registration it relies on)
from rrt.method.relax import relax  # noqa: E402

__all__ = ["RecursiveConfig", "RecursiveForCausalLM", "__version__", "convert", "relax"]
