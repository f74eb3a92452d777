"""The Nipype graph of tmstarget: ``init_*_wf`` factories and one module per processing step.

Each step module holds a pure numpy/nibabel function (testable without Nipype) and the thin
``SimpleInterface`` that adapts files to it.
"""

import os

# Nipype asks a web service for its latest version at import time; tmstarget never reaches the
# network while processing.
os.environ.setdefault("NIPYPE_NO_ET", "1")
