"""adinstruct: anomaly-detection releases in, instruction-tuning data and benchmarks out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adinstruct")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
