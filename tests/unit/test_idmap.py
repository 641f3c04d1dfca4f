"""Subordinate ID ranges and newuidmap arguments."""
from runtime.idmap import _map_args, subid_ranges


def test_subid_ranges_by_name_or_uid(tmp_path):
    f = tmp_path / "subuid"
    f.write_text("alice:100000:65536\nbob:165536:65536\n1001:300000:1000\nbroken line\nalice:x:1\n"
                 "alice:400000:0\n")
    assert subid_ranges(f, "alice", 1000) == [(100000, 65536)]
    assert subid_ranges(f, "carol", 1001) == [(300000, 1000)]
    assert subid_ranges(f, "nobody", 5) == []
    assert subid_ranges(tmp_path / "missing", "alice", 1000) == []


def test_map_args_put_the_user_at_0_and_ranges_after():
    assert _map_args(1000, [(100000, 65536)]) == ["0", "1000", "1", "1", "100000", "65536"]
    assert _map_args(7, [(10, 5), (50, 3)]) == ["0", "7", "1", "1", "10", "5", "6", "50", "3"]
