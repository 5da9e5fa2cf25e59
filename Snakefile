# VirNucPro as a Snakemake pipeline: finds viral sequences in DNA reads or contigs.
#
#   snakemake --cores 16 --resources gpu=1                     # the built-in demo
#   snakemake --cores 16 --resources gpu=1 --config input=reads.fa expected_length=500
#   snakemake --cores 16 --resources gpu=1 train             # train a classifier (config: training)

from snakemake.io import is_flagged
from snakemake.logging import logger
from snakemake.utils import min_version

from virnucpro.resume import record_owner, remove_leftover_temp_files, remove_stale_lock

min_version("9.27")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# A killed run resumes with the same command (see virnucpro.resume; profiles/default reruns the
# jobs it left incomplete). Its lock is removed if the run that held it is gone,
if workflow.is_main_process and not workflow.dryrun:
    for owner in remove_stale_lock():
        logger.warning(
            f"Removed the lock of an earlier run that is gone (PID {owner['pid']} on {owner['host']})."
        )


onstart:
    record_owner()


# and the temporary files it made but did not get to delete are deleted once all is done.
onsuccess:
    if not workflow.storage_settings.notemp:
        leftovers = remove_leftover_temp_files(
            path
            for job in workflow.dag.jobs
            for path in job.output
            if is_flagged(path, "temp")
            and path not in workflow.dag.derived_targetfiles
        )
        for path in leftovers:
            logger.info(
                f"Removed temporary output {path}, left by an interrupted run."
            )


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
