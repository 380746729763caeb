"""Helpers shared by test packages: real servers and test images (no pytest dependency)."""
