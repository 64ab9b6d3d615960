"""longtail: ALT for long-tail scenarios."""
__version__ = "0.1.0"
