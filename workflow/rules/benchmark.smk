"""Throughput (paper sec. 4, made real): every early-exit model served by each system on one
held-out workload, beside the full-size source (rrt benchmark). A benchmark is timed, so it holds
every core and runs alone, with resources.threads torch threads (measured on 2 cores with the
embedded models: 1 thread served every system faster than 2, e.g. sequence_continuous 2,332-2,449
against 1,739 tokens/s), waiting passively (spinning threads collapsed to 341-460 tokens/s from
1,153 beside one busy process).
"""


rule benchmark:
    input:
        model=lambda w: model(names.parse_benchmark(w.stem).model),
        baseline=model("source"),
        corpus=corpus(),
    output:
        benchmark_result("{stem}"),
    log:
        log("benchmark", "{stem}"),
    conda:
        "../../envs/serve.yaml"
    threads: every_core()
    resources:
        **job_resources(gpu=True),
    params:
        options=lambda w: flags.benchmark(config, w.stem),
        torch_threads=config["resources"]["threads"],
        track=lambda w: flags.track("benchmark", stem=w.stem),
    shell:
        "OMP_WAIT_POLICY=PASSIVE python -m rrt benchmark --model {input.model} --baseline {input.baseline}"
        " --data {input.corpus}"
        " --out {output} {params.options} --threads {params.torch_threads}"
        " {params.track} > {log} 2>&1"
