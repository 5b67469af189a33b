"""rrt: Relaxed Recursive Transformers (Bae et al., ICLR 2025) as a reproducible workflow.

Importing the package registers the recursive model with transformers' Auto classes, so a saved
model loads with ``AutoModelForCausalLM.from_pretrained``.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from rrt.modeling import RecursiveConfig, RecursiveForCausalLM

__version__ = "0.1.0"

AutoConfig.register(RecursiveConfig.model_type, RecursiveConfig, exist_ok=True)
AutoModelForCausalLM.register(RecursiveConfig, RecursiveForCausalLM, exist_ok=True)

__all__ = ["RecursiveConfig", "RecursiveForCausalLM", "__version__"]
