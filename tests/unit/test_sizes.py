"""runtime.sizes: the size syntax shared by --memory and --memory-swap."""
import pytest

from runtime.errors import SpecError
from runtime.sizes import format_size, parse_size

M = 1 << 20


@pytest.mark.parametrize("text,value", [
    ("16M", 16 * M), ("2M", 2 * M), ("512m", 512 * M), ("1G", 1 << 30), ("1.5G", 3 << 29),
    ("1.5g", 3 << 29), ("4096", 4096), ("0", 0), ("64k", 65536), ("64K", 65536), ("100b", 100),
    ("2MB", 2 * M), ("2MiB", 2 * M), ("2mib", 2 * M), (" 16M ", 16 * M), ("1.5 G", 3 << 29),
    ("1T", 1 << 40), ("0.5k", 512), ("1.0001k", 1024), (".5M", M // 2), ("007m", 7 * M),
])
def test_valid_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", [
    "", " ", "abc", "M", "-1", "-1M", "1e3", "1E3", "1.5.5G", "1.", ".", "1x", "1MBB", "1 M B", "+5",
    "1,5G", "0x10", "inf", "nan", "١٢", "16Mi", "1P",
])
def test_invalid_sizes_are_one_line_spec_errors(text):
    with pytest.raises(SpecError) as e:
        parse_size(text)
    line = e.value.line()
    assert "\n" not in line and repr(text) in line and "512m" in line
    assert e.value.exit_code == 125


def test_option_name_in_message():
    with pytest.raises(SpecError) as e:
        parse_size("lots", option="--memory")
    assert e.value.line().startswith("--memory: invalid size 'lots'")


def test_too_large():
    with pytest.raises(SpecError, match="too large"):
        parse_size("9000000000G")


def test_not_a_string():
    with pytest.raises(SpecError):
        parse_size(None)


@pytest.mark.parametrize("n,text", [(16 * M, "16M"), (3 << 29, "1.5G"), (300, "300B"), (1536, "1.5K"),
                                    (12902400, "12.3M")])
def test_format_size(n, text):
    assert format_size(n) == text
