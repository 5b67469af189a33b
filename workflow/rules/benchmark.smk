"""Throughput (paper sec. 4, made real): every early-exit model served by each system on one
held-out workload, beside the full-size source (rrt benchmark). A benchmark is timed, so it takes
every core and runs alone, and its torch threads wait passively: spinning threads collapse when
anything else runs beside them (measured: 341-460 against 1,153 tokens/s with one busy process).
"""


rule benchmark:
    input:
        model=model("{name}"),
        baseline=model("source"),
        corpus=corpus(),
    output:
        benchmark_result("{name}"),
    log:
        log("benchmark", "{name}"),
    conda:
        "../../envs/rrt.yaml"
    threads: every_core()
    resources:
        **job_resources(gpu=True),
    params:
        options=as_flags(config["benchmark"]),
        track=lambda w: track("benchmark", name=w.name),
    shell:
        "OMP_WAIT_POLICY=PASSIVE rrt benchmark --model {input.model} --baseline {input.baseline}"
        " --data {input.corpus}"
        " --out {output} {params.options} --threads {threads} {params.track} > {log} 2>&1"
