"""tmstarget: connectivity-guided left-DLPFC TMS targets from fMRIPrep outputs (a BIDS App)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tmstarget")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
