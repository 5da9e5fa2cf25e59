# VirNucPro as a Snakemake pipeline: finds viral sequences in DNA reads or contigs.
#
#   snakemake --cores 16 --resources gpu=1                     # the built-in demo
#   snakemake --cores 16 --resources gpu=1 --config input=reads.fa expected_length=500
#   snakemake --cores 16 --resources gpu=1 train             # train a classifier (config: training)

from snakemake.utils import min_version

min_version("9.27")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/check.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/train.smk"


# Target rules and the small report jobs run where Snakemake runs, not as cluster jobs.
localrules:
    all,
    train,
    run_summary,
    timing_report,


rule all:
    default_target: True
    input:
        expand(
            "results/{sample}/{name}",
            sample=SAMPLES,
            name=["read_predictions.parquet", "viral_regions.tsv", "summary.tsv"],
        ),
        "results/run_summary.tsv",
        "results/timing_report.md",
        expand(
            "results/{sample}/{name}",
            sample=SAMPLES if WRITE_FASTA else [],
            name=["chunked.fa", "identified_nucleotide.fa", "identified_protein.faa"],
        ),
