"""Few-shot evaluation through lm-eval (paper app. E): every model, and every exit loop of the
early-exit models (sec. 3.7)."""


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        evaluation("{name}"),
    log:
        log("evaluate", "{name}"),
    conda:
        "../../envs/eval.yaml"
    threads: config["resources"]["threads"]
    resources:
        **job_resources(gpu=True),
    params:
        options=flags.evaluation(config, TASK_DIRS),
        track=lambda w: flags.track("evaluate", name=w.name),
    shell:
        "python -m rrt evaluate --model {input.model} --out {output} {params.options}"
        " --threads {threads} {params.track} > {log} 2>&1"


rule evaluate_exit:
    input:
        unpack(evaluation_inputs),
    output:
        exit_evaluation("{name}", "{exit}"),
    log:
        log("evaluate", "{name}-exit{exit}"),
    conda:
        "../../envs/eval.yaml"
    threads: config["resources"]["threads"]
    resources:
        **job_resources(gpu=True),
    params:
        options=flags.evaluation(config, TASK_DIRS),
        track=lambda w: flags.track("evaluate_exit", name=w.name, exit=w.exit),
    shell:
        "python -m rrt evaluate --model {input.model} --exit-loop {wildcards.exit} --out {output}"
        " {params.options} --threads {threads} {params.track} > {log} 2>&1"
