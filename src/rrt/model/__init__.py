"""The recursive model: its config, looped layers with per-position views, the table of family
differences, its shape and parameter counts (paper sec. 2-3).

Importing it registers the recursive model with transformers' Auto classes, so a saved model
loads with ``AutoModelForCausalLM.from_pretrained``.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM

AutoConfig.register(RecursiveConfig.model_type, RecursiveConfig, exist_ok=True)
AutoModelForCausalLM.register(RecursiveConfig, RecursiveForCausalLM, exist_ok=True)

__all__ = ["RecursiveConfig", "RecursiveForCausalLM"]
