"""`sequential`: [tracers, steps, P + S] time-ordered trajectories (emulators), split by tracer."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "sequential"
    c.max_shard_mb = 256.0  # shard size bound (float32 .npy files)
    c.chunk_rows = 8192  # rows read per chunk of whole tracers (bounds peak memory)
    # Tracers of different lengths: "error", "crop" (cut all to the shortest) or "drop" (keep the
    # most common length and list the dropped tracers in the manifest).
    c.length_policy = "error"
    return c
