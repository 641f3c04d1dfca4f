"""Sizes on the command line: `16M`, `512m`, `1G`, `1.5G`, `4096`, `64k`, `2GiB`.

Binary units, case-insensitive (podman's and docker's convention): k = 1024, m = 1024**2, g = 1024**3,
t = 1024**4; an optional trailing `b`/`ib` is accepted (`2MB`, `2MiB`). Fractions are exact, rounded down to
whole bytes. No `re` (import cost on the start-up path); only the errors module is imported.
"""
from runtime.errors import SpecError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MAX = (1 << 63) - 1   # the kernel's page_counter takes up to LONG_MAX bytes
_DIGITS = "0123456789"


def parse_size(text, option=None):
    """`text` -> bytes (int >= 0). Raises SpecError with a one-line message for anything else."""
    s = text.strip() if isinstance(text, str) else ""
    i = 0
    while i < len(s) and (s[i] in _DIGITS or s[i] == "."):
        i += 1
    number, unit = s[:i], s[i:].strip().lower()
    if unit.endswith("ib") and len(unit) == 3:
        unit = unit[0]
    elif unit.endswith("b") and len(unit) == 2:
        unit = unit[0]
    whole, dot, frac = number.partition(".")
    if (unit not in _UNITS or not (whole or frac) or "." in frac
            or (dot and not frac) or not (whole + frac).isdigit() or not (whole + frac).isascii()):
        raise SpecError(_where(option) + f"invalid size {str(text)[:40]!r}: expected a number with an optional unit "
                        "k, m, g or t (1k = 1024 bytes), e.g. 512m or 1.5G")
    if len(whole.lstrip("0")) > 19:           # past any size a host has; also keeps int() within its digit limit
        raise SpecError(_where(option) + f"invalid size {str(text)[:40]!r}: too large (at most {_MAX} bytes)")
    frac = frac[:30]                          # finer than a byte at any unit
    mult = _UNITS[unit]
    value = int(whole or "0") * mult
    if frac:
        value += int(frac) * mult // 10 ** len(frac)
    if value > _MAX:
        raise SpecError(_where(option) + f"invalid size {str(text)[:40]!r}: too large (at most {_MAX} bytes)")
    return value


def format_size(n):
    """Bytes -> a short human form for messages: 16777216 -> '16M', 1610612736 -> '1.5G', 300 -> '300B'."""
    for unit, mult in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= mult:
            text = f"{n / mult:.1f}"
            if text.endswith(".0"):
                text = text[:-2]
            return text + unit
    return f"{n}B"


def _where(option):
    return f"{option}: " if option else ""
