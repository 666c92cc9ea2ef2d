"""Real-host test infrastructure: a Debian trixie chroot with GIMP 3.0 and Krita 5.2 (chroot.py)."""
