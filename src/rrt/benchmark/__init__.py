"""The throughput benchmark: one workload served by every system (paper sec. 4), with the
machine's measured ceilings and each system's roofline."""
