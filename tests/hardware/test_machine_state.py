"""Machine-state awareness (hardware.stability): steal time, clock changes, the dense model's drift."""

import hwprune.hardware.stability as st


def _stat(path, steal, total_busy):
    # user nice system idle iowait irq softirq steal
    path.write_text(f"cpu  {total_busy} 0 0 1000 0 0 0 {steal} 0 0\ncpu0 1 0 0 0 0 0 0 0\n")


def test_steal_time_and_drift_are_measured_and_judged(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    _stat(stat, 0, 1000)
    monkeypatch.setattr(st, "_PROC_STAT", stat)
    monkeypatch.setattr(st, "_CPUFREQ", tmp_path / "none")
    mon = st.MachineMonitor()
    _stat(stat, 300, 1700)  # 300 of the 1000 jiffies since the start were stolen
    state = mon.state([0.010, 0.0105, 0.0140])
    assert state.steal_fraction == 0.3
    assert abs(state.dense_drift - 0.40) < 1e-9 and not state.stable
    assert any("stolen" in w for w in state.warnings) and any("drifted 40%" in w for w in state.warnings)


def test_a_steady_run_has_no_warning_and_missing_counters_are_none(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "_PROC_STAT", tmp_path / "absent")
    monkeypatch.setattr(st, "_CPUFREQ", tmp_path / "none")
    state = st.MachineMonitor().state([0.010, 0.0102, 0.0099])
    assert state.stable and not state.warnings
    assert state.steal_fraction is None and state.freq_mhz_low is None and state.dense_drift < 0.04


def test_clock_changes_are_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "_PROC_STAT", tmp_path / "absent")
    freq = tmp_path / "cpu0" / "cpufreq"
    freq.mkdir(parents=True)
    (freq / "scaling_cur_freq").write_text("3000000\n")
    monkeypatch.setattr(st, "_CPUFREQ", tmp_path)
    mon = st.MachineMonitor()
    (freq / "scaling_cur_freq").write_text("2000000\n")
    state = mon.state([])
    assert (state.freq_mhz_low, state.freq_mhz_high) == (2000, 3000) and "2000 and 3000 MHz" in state.warnings[0]
