"""How throughput figures are worded, the same on the Runs page and in comparison tables.

Plain Python (no pandas, no torch): the web app's services import it on every page load.
"""


def rate(value: float) -> str:
    """Tokens or images per second: whole numbers with thousands separators from 100 up ("40,960", never
    4.096e+04), three significant digits below ("45.1")."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def percent(fraction: float) -> str:
    """A fraction (MFU, 0..1) as a percentage, "38%"; with a decimal below 10%, so that a small MFU does not read 0%."""
    return f"{fraction:.0%}" if fraction >= 0.1 else f"{fraction:.1%}"
