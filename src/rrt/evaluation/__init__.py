"""Few-shot evaluation through lm-evaluation-harness: the runner (a model at full depth or at an
early exit), the task suites, parameter counts beside the scores."""
