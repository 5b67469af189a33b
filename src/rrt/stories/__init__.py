"""The embedded default's own world: a generated story corpus, its tokenizer, offline few-shot
tasks, n-gram baselines and pretraining from scratch, so that the whole method runs offline on a
CPU with no hub access. Nothing in the method's modules depends on it."""
