"""The one training recipe, checkpoints, one cell's training, paired-run initial weights, DDP plumbing (the data
it trains on is :mod:`attn_zoo.data`)."""
