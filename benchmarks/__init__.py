"""Developer tools that measure the project (not shipped with the `ablation` package)."""
