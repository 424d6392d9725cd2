"""Command-line tools for a running slowfast-serve: predict, start/stop, status and scaling."""
