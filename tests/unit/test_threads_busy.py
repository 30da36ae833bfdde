"""How busy the CPUs are, as thread choice sees it: work at normal priority counts, niced
batch work (which yields to ours) does not, unless this process is niced itself."""

from __future__ import annotations

from attnops.models.threads import _cpu_jiffies

# /proc/stat: user nice system idle iowait irq softirq steal (ticks since boot)
STAT = """cpu  300 700 60 2000 20 0 0 0
cpu0 100 400 30 1000 10 0 0 0
cpu1 200 300 30 1000 10 0 0 0
intr 12345
"""


def test_niced_ticks_are_busy_only_for_a_niced_caller(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    # total = 1540 + 1540; busy = total - idle - iowait (- nice when not counted)
    assert _cpu_jiffies(None, count_nice=True, stat=stat) == (1060, 3080)
    assert _cpu_jiffies(None, count_nice=False, stat=stat) == (360, 3080)
    assert _cpu_jiffies({1}, count_nice=False, stat=stat) == (230, 1540)


def test_no_stat_file_means_unknown(tmp_path):
    assert _cpu_jiffies(None, count_nice=False, stat=tmp_path / "missing") is None
