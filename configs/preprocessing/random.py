"""`random`: [rows, S] shuffled rows split train/val at random *regardless of tracer*.

A leakage ablation: validation rows come from the same trajectories as training rows, so its
scores are optimistic. Use `timeless` to measure generalisation.
"""

from configs.preprocessing import timeless


def get_config():
    c = timeless.get_config()
    c.method = "random"
    return c
