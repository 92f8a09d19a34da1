"""qkcopy: image copy detection descriptors learned with QK Iteration."""

__version__ = "0.1.0"
