"""`timeless`: [rows, S] shuffled abundance rows (autoencoders), split by tracer."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "timeless"
    c.max_shard_mb = 256.0
    c.chunk_rows = 8192
    c.shuffle_bucket_mb = 128.0  # external shuffle: rows go to random buckets of about this size
    return c
