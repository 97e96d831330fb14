"""Source adapters, the annotate stage, the runner and the `build-dataset` command line."""
