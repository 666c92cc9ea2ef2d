"""The editing algorithms: drag, inversion, image preparation, paste-back (uses model/)."""
