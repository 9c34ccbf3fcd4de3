"""Scripts around the byol library: benchmarks, the papers' tables, plots."""
