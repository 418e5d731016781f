"""Quality studies; run each as ``python -m experiments.<name>`` from the repository root (docs/benchmarks.md)."""
