"""Recursive -> relaxed model: a LoRA per looped position from the SVD of what sharing lost
(paper sec. 2.3)."""


rule relax:
    input:
        source=model("source"),
        recursive=model("recursive-B{loops}-{init}"),
    output:
        directory(model("relaxed-B{loops}-{init}-r{rank}")),
    log:
        log("relax", "B{loops}-{init}-r{rank}"),
    conda:
        "../../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **job_resources(gpu=True),
    params:
        vectors="--relax-vectors" if config["relaxed"]["relax_vectors"] else "",
        device=config["device"],
        seed=config["relaxed"]["seed"],
        track=lambda w: flags.track("relax", loops=w.loops, init=w.init, rank=w.rank),
    shell:
        "python -m rrt relax --source {input.source} --recursive {input.recursive} --rank {wildcards.rank}"
        " {params.vectors} --seed {params.seed} --device {params.device} --threads {threads}"
        " --out {output}"
        " {params.track} > {log} 2>&1"
