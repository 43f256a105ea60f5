"""Traffic generator with ground-truth personas, benchmarks and quality reports."""
