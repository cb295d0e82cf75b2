"""Reporting: result tables (CSV / Markdown / LaTeX) built from metric JSONs and the paper's reported numbers."""

from infdiff.report.tables import TABLE_COLUMNS, build_table, load_paper_results, read_table, write_table

__all__ = ["TABLE_COLUMNS", "build_table", "write_table", "read_table", "load_paper_results"]
