"""The rrt workflow: a source model to recursive and relaxed models, uptrained and evaluated.

    snakemake --cores all                                   # the embedded default
    snakemake --cores all --configfile config/smoke.yaml    # any other experiment

Every default is in workflow/schemas/config.schema.yaml; an experiment's config file says what
differs from them. config/config.yaml (the embedded default) is read only when no --configfile is given,
so an experiment never inherits another's settings.
"""

from snakemake.utils import min_version

from rrt.config import check_experiment

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# Defaults filled in from workflow/schemas/config.schema.yaml and every value checked, against
# the schema and beyond it (loops dividing the source's layers, ...), before any job runs: a bad
# value stops the run with one line naming its key and what is allowed.
check_experiment(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/source.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/relax.smk"
include: "workflow/rules/uptrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        rules.report.output,
        evaluations(),
        benchmarks(),
        models(),
        swept_models(),
