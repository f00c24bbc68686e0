"""Benchmarks run by ``make bench``; each module writes JSON under bench/results/."""
