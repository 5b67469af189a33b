"""Training: corpus folders and packed token files, the trainer (checkpoints, resume, tracking),
the uptraining objective (CE, forward-KL distillation, early-exit loss; paper sec. 3.3, 3.7),
uptraining and pretraining from scratch."""
