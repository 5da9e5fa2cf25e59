"""VirNucPro as a Snakemake pipeline: the logic behind each rule."""
