"""The local crash lab: an AWS-compatible endpoint over simulated guests and real QEMU guests."""
