"""polytask benchmarks: polytask against its peers, measured in the same run."""
