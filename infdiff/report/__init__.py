"""Reporting: metric records to table rows (:mod:`.rows`), tables as CSV / Markdown / LaTeX (:mod:`.tables`),
PDF figures (:mod:`.figures`) and the metric history plot (:mod:`.history_plot`).

Nothing is imported here, so that importing one of them (an evaluate job needs only the row labels) does
not load pandas or matplotlib.
"""
