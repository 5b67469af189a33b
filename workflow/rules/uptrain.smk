"""Uptraining with distillation from the source (paper app. E, I), and early-exit
post-training (sec. 3.7). Both start one data-parallel process per GPU of the job through torchrun
(one process without a GPU): the same command for any number of GPUs of one node."""

# uptraining and early-exit post-training: one command, one data-parallel process per GPU
UPTRAIN = (
    "torchrun --standalone --nproc-per-node {params.processes} -m rrt uptrain"
    " --model {input.model} --teacher {input.teacher} --corpus {input.corpus}"
    " --tokenizer {input.tokenizer} --out {output} {params.recipe} {params.loss}"
    " --threads {threads} {params.track} > {log} 2>&1"
)


rule uptrain:
    """All weights train on the uptraining budget; the full-size baseline (base: source) with
    CE alone, every smaller model distilled from the source; a sweep variant overrides the
    budget, the distillation weight and the seed."""
    input:
        model=lambda w: model(w.base),  # a local source is the user's folder, not models/source
        teacher=model("source"),
        corpus=corpus(),
        tokenizer=tokenizer(),
    output:
        directory(model("{base}.up{variant}")),
    log:
        log("uptrain", "{base}{variant}"),
    conda:
        "../../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **job_resources(gpu=True),
    params:
        recipe=lambda w: flags.uptrain_recipe(config, w.variant),
        loss=lambda w: flags.uptrain_loss(config, w.base, w.variant),
        track=lambda w: flags.track("uptrain", base=w.base, variant=w.variant),
        processes=processes,
    shell:
        UPTRAIN


rule early_exit:
    """The aggressive early-exit loss: every loop's exit learns, the final loop keeps weight 1."""
    input:
        model=model("{base}.up"),
        teacher=model("source"),
        corpus=corpus(),
        tokenizer=tokenizer(),
    output:
        directory(model("{base}.up.ee")),
    log:
        log("early_exit", "{base}"),
    conda:
        "../../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **job_resources(gpu=True),
    params:
        recipe=flags.recipe(
            config,
            tokens=config["early_exit"]["tokens"],
            lr=config["early_exit"]["lr"],
        ),
        loss=flags.loss(config, early_exit=True),
        track=lambda w: flags.track("early_exit", base=w.base),
        processes=processes,
    shell:
        UPTRAIN
