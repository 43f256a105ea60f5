"""Traffic generator, benchmarks and quality reports."""
