# VirNucPro as a Snakemake pipeline. The workflow is defined in workflow/Snakefile (see there),
# where the Snakemake workflow catalog and snakedeploy expect it; this file runs it with
# `snakemake` from the top of a checkout.


include: "workflow/Snakefile"


# The rules of an included file are never the default target; this one is, and it asks for what
# the workflow's `all` asks for.
rule default:
    default_target: True
    input:
        rules.all.input,


localrules:
    default,
