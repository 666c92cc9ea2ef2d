"""The generator and everything that reads checkpoints into it (torch, nothing above)."""
