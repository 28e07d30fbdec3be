"""What the report's modules share without importing the package: its error."""


class ReportError(Exception):
    """Nothing to report (no store, experiment or runs) or a bad option; the message says how to fix it."""
