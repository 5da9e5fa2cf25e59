"""Running the workflow: the config turned into rule inputs, telemetry, GPU leases, resuming an interrupted run."""
