"""segadapt: domain-adaptive semantic segmentation toolkit."""

__version__ = "0.1.0"
