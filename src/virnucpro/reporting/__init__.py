"""What people read about a run: the timing report from the telemetry, the results summaries, figures and HTML pages."""
