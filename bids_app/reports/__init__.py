"""The participant's HTML report and the pieces the group page shares with it.

Modules, one idea each:

- :mod:`~tmstarget.reports.participant`: ``sub-<label>.html`` from the files a run wrote, and its
  Nipype node :class:`ParticipantReport`;
- :mod:`~tmstarget.reports.plan`: the treatment plan the report opens with (and prints);
- :mod:`~tmstarget.reports.quality`: warnings, reliability and data sufficiency in words;
- :mod:`~tmstarget.reports.figures` and :mod:`~tmstarget.reports.head`: the figures (matplotlib and
  nilearn are imported only when a report is drawn);
- :mod:`~tmstarget.reports.methods`: the methods paragraph (``CITATION.md``) and software versions;
- :mod:`~tmstarget.reports.html`: page, style (screen and print), tables;
- :mod:`~tmstarget.reports.palette`: the targets' colours and names.
"""

from tmstarget.reports.html import page, parse_report_targets, sections_html, targets_html
from tmstarget.reports.methods import boilerplate, software_versions
from tmstarget.reports.palette import COLOUR_NAMES, DPI, TARGET_COLOURS, WIDTH_IN
from tmstarget.reports.participant import ParticipantReport, write_participant_report

#: What drawing the figures imports (about 1.5-2.8 s): a run with workers imports it ahead, while
#: they compute (:class:`tmstarget.execution.ImportAhead`).
DRAWING_MODULES = ("tmstarget.reports.figures", "tmstarget.reports.head", "tmstarget.reports.efield",
                   "nilearn.plotting", "nilearn.image", "mpl_toolkits.mplot3d")

__all__ = ["COLOUR_NAMES", "DPI", "DRAWING_MODULES", "ParticipantReport", "TARGET_COLOURS", "WIDTH_IN",
           "boilerplate", "page", "parse_report_targets", "sections_html", "software_versions", "targets_html",
           "write_participant_report"]
