"""Source -> recursive model: K = N/B shared layers looped B times (paper sec. 2.2)."""


rule convert:
    input:
        model("source"),
    output:
        directory(model("recursive-B{loops}-{init}")),
    log:
        log("convert", "B{loops}-{init}"),
    conda:
        "../../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **job_resources(gpu=True),
    params:
        device=config["device"],
        seed=config["recursive"]["seed"],
        track=lambda w: flags.track("convert", loops=w.loops, init=w.init),
    shell:
        "python -m rrt convert --source {input} --loops {wildcards.loops} --init {wildcards.init}"
        " --seed {params.seed} --device {params.device} --threads {threads} --out {output}"
        " {params.track}"
        " > {log} 2>&1"
