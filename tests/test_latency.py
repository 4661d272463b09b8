"""devices/ (profiles, roofline, timing, lut): device profiles, the per-layer roofline, host timing, LUT files."""

from __future__ import annotations

from pathlib import Path

import pytest
from _training import one_thread

from gatesearch.devices import profiles
from gatesearch.devices.lut import LutRow, lut_lookup, read_lut, write_lut
from gatesearch.devices.profiles import DEVICES, device_profiles, get_device
from gatesearch.devices.roofline import bytes_moved, predict_ms, trace_layers
from gatesearch.devices.timing import measure_ms, measure_unit_ms
from gatesearch.errors import UserError
from gatesearch.models import create_model
from gatesearch.patterns import SkipPattern, all_patterns

SHIPPED = ["jetson-orin-nano", "jetson-orin-nano-super", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx",
           "a100", "h100", "host"]


_one_thread = pytest.fixture(autouse=True)(one_thread)  # tiny convs: one thread is faster


def test_profiles_registered_with_sources() -> None:
    assert sorted(p.name for p in device_profiles()) == sorted(SHIPPED)
    assert DEVICES.get("jetson") is DEVICES.get("jetson-orin-nano")
    for p in device_profiles():
        assert p.source, p.name
        if not p.measure:
            assert p.peak_tflops_fp16 > 0 and p.peak_tflops_fp32 > 0 and p.mem_bandwidth_gbs > 0
            assert 0 < p.efficiency <= 1


def test_unknown_device_is_user_error() -> None:
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        get_device("tpu")


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "host"])
def test_model_latency_orders_patterns(name: str) -> None:
    model = create_model("resnet20", 10).eval()
    prof = get_device(name)
    lat = {str(p): predict_ms(trace_layers(model, p, (1, 3, 32, 32)), prof) for p in all_patterns(3)}
    assert lat["TTT"] < lat["FTT"] < lat["FFT"] < lat["FFF"]
    assert all(v > 0 for v in lat.values())


def test_trace_counts_flops_and_bytes() -> None:
    model = create_model("resnet20", 10).eval()
    layers = trace_layers(model, SkipPattern.parse("FFF"), (1, 3, 32, 32))
    from gatesearch.cost import count_macs

    assert sum(layer.flops for layer in layers) == 2 * count_macs(model, None, (1, 3, 32, 32))
    assert sum(1 for layer in layers if layer.kind == "add") == 9  # one residual add per block
    base = trace_layers(model, SkipPattern.parse("TTT"), (1, 3, 32, 32))
    assert bytes_moved(base) < bytes_moved(layers)
    assert bytes_moved(layers, 2) * 2 == bytes_moved(layers, 4)


def test_host_profile_is_measured_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(threads: int) -> tuple:
        calls.append(threads)
        return 1e11, 2e10, 3e-6, 0.8, 1e-6, 2e-5

    monkeypatch.setattr(profiles, "_host_figures", fake)
    prof = get_device("host")
    assert prof.peak_tflops_fp32 == pytest.approx(0.1) and prof.precision == "fp32" and not prof.fused_elementwise
    assert prof.launch_overhead_us == pytest.approx(3.0) and prof.conv_overhead_us == pytest.approx(20.0)


def test_measure_returns_median_and_p90() -> None:
    model = create_model("resnet20", 10).eval()
    out = measure_ms(model, [SkipPattern.parse("FFF"), SkipPattern.parse("TTT")], (1, 3, 16, 16), warmup=1, runs=5)
    assert len(out) == 2 and all(0 < med <= p90 for med, p90 in out)
    units = measure_unit_ms(model, (1, 3, 16, 16), warmup=1, runs=3)
    assert len(units) == 3 and all(med > 0 for med, _ in units)


def test_lut_roundtrip_and_errors(tmp_path: Path) -> None:
    rows = [LutRow("FFT", 1, 1.5, 1.7, 10, "jetson-orin-nano"), LutRow("unit:0", 1, 0.2, 0.3, 10, "jetson-orin-nano")]
    path = write_lut(tmp_path / "lut.csv", rows)
    assert path.read_text().splitlines()[0] == "pattern,batch,median_ms,p90_ms,runs,device"
    back = read_lut(path)
    assert back == rows
    assert lut_lookup(back, 3, 1) == {"FFT": rows[0]}
    with pytest.raises(UserError, match="has 3 units; this model has 4"):
        lut_lookup(back, 4, 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("pattern,batch,median_ms,p90_ms,runs,device\nFXT,1,1.0,1.0,3,x\n")
    with pytest.raises(UserError, match="line 2"):
        read_lut(bad)
    bad.write_text("pattern,median\nFFT,1\n")
    with pytest.raises(UserError, match="missing columns"):
        read_lut(bad)
    with pytest.raises(UserError, match="does not exist"):
        read_lut(tmp_path / "nope.csv")


def test_lut_compose_from_units() -> None:
    from gatesearch.devices.lut import lut_compose

    rows = [LutRow("TTT", 1, 1.0, 1.2, 5, "d"), LutRow("unit:0", 1, 0.5, 0.6, 5, "d"),
            LutRow("unit:2", 1, 0.25, 0.3, 5, "d")]
    assert lut_compose(rows, "FTF", 1) == pytest.approx((1.75, 2.1))
    assert lut_compose(rows, "FFT", 1) is None  # unit 1 not measured
    assert lut_compose(rows, "FTF", 8) is None  # other batch
