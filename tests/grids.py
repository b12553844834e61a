"""Benchmark grids the tests share (TOML text)."""

#: two rounds of five clients, no attack and IPM, the mean and the median: the smallest useful grid
TINY = """
[run]
rounds = 2
clients = 5
local_epochs = 1
batch_size = 32
seeds = [0]
attackers = [0.2]
partitions = ["iid"]

[attacks]
none = {}
ipm = { update = { kind = "ipm", epsilon = 10.0 } }

[defences]
mean = { kind = "mean" }
median = { kind = "median" }
"""
