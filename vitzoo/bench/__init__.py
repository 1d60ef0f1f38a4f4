"""Speed benchmarks: the throughput / latency / memory sweep (``vitzoo-bench``) and the side-by-side comparison."""
