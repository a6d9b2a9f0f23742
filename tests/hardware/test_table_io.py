"""Latency-table profiles: build, export/import between machines, concurrent writers, corrupt caches, CLI."""

import gzip
import json
import multiprocessing
import sqlite3
import threading
import time

import pytest
from helpers import assert_one_line_error
from helpers import run_cli as run

import hwprune.cli.profile as profile_mod
from hwprune.cli.main import build_parser, main
from hwprune.cli.profile import build_profile
from hwprune.core.errors import HwpruneError
from hwprune.hardware import table as table_mod
from hwprune.hardware.table import SCHEMA_VERSION, Entry, LatencyCache
from hwprune.hardware.table_io import FORMAT, export_profile, import_profile, read_profile_file

FP = {"cpu": "test", "threads": 1, "torch": "x", "dtype": "float32", "runtime": "formula"}


def _snapshot(cache_path):
    with LatencyCache(cache_path) as c:
        return c.devices(), {d: c.entries(d) for d in c.devices()}


def _seed(path, device="dev-a", entries=(), fp=FP):
    with LatencyCache(path) as c:
        c.register_device(device, fp)
        c.merge({device: (fp, list(entries))})


# -- export / import -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["table.json", "table.json.gz"])
def test_export_import_round_trip_is_exact(tmp_path, tiny_file, name):
    src = tmp_path / "src.sqlite"
    r = build_profile(f"{tiny_file}:tiny_cnn", target="analytic-test", cache=src, progress=False)
    # A second device in the same file, so the export carries more than one fingerprint.
    _seed(src, "dev-b", [Entry("sig", 4, 8, 1.5e-6, 1e-8, 20, 1000.0)], {"cpu": "other"})
    out = export_profile(tmp_path / name, cache=src)
    assert sorted(out.devices) == ["analytic-test", "dev-b"] and out.entries == r.device_entries + 1
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    doc = json.loads(gzip.decompress(raw) if name.endswith(".gz") else raw)
    assert doc["format"] == FORMAT and doc["schema_version"] == SCHEMA_VERSION

    dst = tmp_path / "fresh.sqlite"
    res = import_profile(tmp_path / name, cache=dst)
    assert (res.counts.added, res.counts.replaced, res.counts.kept) == (out.entries, 0, 0)
    assert res.counts.devices_added == 2
    assert _snapshot(dst) == _snapshot(src)  # identical devices, fingerprints and entries (floats exact)
    assert list(tmp_path.glob(".*tmp*")) == []  # the atomic write left no temporary file


def test_export_only_one_device_by_prefix(tmp_path, tiny_file):
    src = tmp_path / "src.sqlite"
    build_profile(f"{tiny_file}:tiny_cnn", target="analytic-test", cache=src, progress=False)
    _seed(src, "dev-b", [Entry("sig", 4, 8, 1.5e-6, 1e-8, 20, 1000.0)])
    out = export_profile(tmp_path / "b.json", cache=src, devices=["dev-"])
    assert out.devices == ["dev-b"] and out.entries == 1
    with pytest.raises(HwpruneError, match="is not a device"):
        export_profile(tmp_path / "c.json", cache=src, devices=["nope"])
    assert not (tmp_path / "c.json").exists()


def test_analytic_entry_values_survive_the_trip(tmp_path, tiny_file):
    """conv1 of tiny_cnn (3->16, 3x3, 8x8, batch 1): 16*64 outputs * 3*9 MACs = 27648 MACs -> 1 us + 276.48 ns."""
    build_profile(f"{tiny_file}:tiny_cnn", target="analytic-test", cache=tmp_path / "c.sqlite", progress=False)
    export_profile(tmp_path / "t.json", cache=tmp_path / "c.sqlite")
    entries = read_profile_file(tmp_path / "t.json")["analytic-test"][1]
    conv1 = [e for e in entries if e.cin == 3 and e.cout == 16]
    assert len(conv1) == 1 and conv1[0].median == pytest.approx(1e-6 + 27648e-11, rel=1e-12)


def test_import_merge_keeps_the_later_measurement(tmp_path):
    cache = tmp_path / "c.sqlite"
    _seed(
        cache,
        entries=[
            Entry("a", 1, 2, 1.0, 0.1, 20, 100.0),  # the file's copy is newer: replaced
            Entry("b", 1, 2, 2.0, 0.2, 20, 200.0),  # same time in the file: the cache's is kept
            Entry("c", 1, 2, 3.0, 0.3, 20, 300.0),  # the file's copy is older: kept
        ],
    )
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "devices": [
            {
                "device": "dev-a",
                "fingerprint": FP,
                "entries": [
                    {"signature": "a", "cin": 1, "cout": 2, "median": 1.5, "iqr": 0.0, "n": 30, "created": 150.0},
                    {"signature": "b", "cin": 1, "cout": 2, "median": 9.0, "iqr": 0.0, "n": 30, "created": 200.0},
                    {"signature": "c", "cin": 1, "cout": 2, "median": 9.0, "iqr": 0.0, "n": 30, "created": 250.0},
                    {"signature": "d", "cin": 1, "cout": 2, "median": 4.0, "iqr": 0.4, "n": 20, "created": 50.0},
                ],
            }
        ],
    }
    (tmp_path / "t.json").write_text(json.dumps(doc))
    res = import_profile(tmp_path / "t.json", cache=cache)
    assert (res.counts.added, res.counts.replaced, res.counts.kept, res.counts.devices_added) == (1, 1, 2, 0)
    with LatencyCache(cache) as c:
        assert {e.signature: (e.median, e.n, e.created) for e in c.entries("dev-a")} == {
            "a": (1.5, 30, 150.0),
            "b": (2.0, 20, 200.0),
            "c": (3.0, 20, 300.0),
            "d": (4.0, 20, 50.0),
        }


def test_import_refuses_a_device_key_with_another_fingerprint(tmp_path):
    cache = tmp_path / "c.sqlite"
    _seed(cache, entries=[Entry("a", 1, 2, 1.0, 0.1, 20, 100.0)])
    before = _snapshot(cache)
    other = {**FP, "threads": 8}
    doc = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "devices": []}
    doc["devices"].append(
        {
            "device": "dev-a",
            "fingerprint": other,
            "entries": [{"signature": "z", "cin": 1, "cout": 2, "median": 1, "iqr": 0, "n": 3, "created": 1}],
        }
    )
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(HwpruneError, match="different fingerprint"):
        import_profile(tmp_path / "t.json", cache=cache)
    assert _snapshot(cache) == before  # the transaction rolled back


def _good_doc():
    entry = {"signature": "s", "cin": 1, "cout": 2, "median": 1e-6, "iqr": 0.0, "n": 3, "created": 1.0}
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "devices": [{"device": "d", "fingerprint": FP, "entries": [entry]}],
    }


def _with(**patch):
    doc = _good_doc()
    doc["devices"][0]["entries"][0].update(patch)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"garbage", "not an hwprune latency table"),
        (gzip.compress(json.dumps(_good_doc()).encode())[:30], "not an hwprune latency table"),  # truncated gzip
        (b"\xff\xfe\x00", "not an hwprune latency table"),
        (json.dumps({"format": "something-else"}).encode(), "format tag"),
        (json.dumps([1, 2]).encode(), "format tag"),
        (json.dumps({**_good_doc(), "schema_version": 99}).encode(), "schema 99"),
        (json.dumps({**_good_doc(), "devices": {}}).encode(), "'devices' must be a list"),
        (_with(median=-1.0), "'median' must be a finite number"),
        (_with(cin=True), "'cin' must be an integer"),
        (_with(n=0), "'n' must be an integer >= 1"),
        (_with(signature=""), "signature"),
        (json.dumps(_good_doc()).replace('"created": 1.0', '"created": NaN').encode(), "'created'"),
    ],
)
def test_bad_import_file_is_one_line_and_writes_nothing(capsys, tmp_path, content, needle):
    cache = tmp_path / "c.sqlite"
    (tmp_path / "bad.json").write_bytes(content)
    code, _, err = run(capsys, "profile", "import", tmp_path / "bad.json", "--cache", cache)
    assert_one_line_error(code, err, needle)
    assert not cache.exists()  # validated before the cache is even opened


def test_good_doc_imports(tmp_path):
    """The fixture the bad-file cases are cut from is itself valid."""
    (tmp_path / "ok.json").write_text(json.dumps(_good_doc()))
    assert import_profile(tmp_path / "ok.json", cache=tmp_path / "c.sqlite").counts.added == 1


# -- the table file: concurrency, locks, corruption, schema ---------------------------------------------------


def _writer(path: str, device: str, barrier) -> None:
    barrier.wait()  # both processes open and write at the same moment, the worst case for locking
    cache = LatencyCache(path)
    for i in range(200):
        cache.put(device, f"layer{i % 7}", i, i + 1, 1e-6 * (i + 1), 0.0, 20)
    cache.close()


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("fork")  # the children touch only SQLite, never torch
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, dev, barrier)) for dev in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with LatencyCache(path) as c:
        assert c.count() == 400 and c.count("p1") == 200 and c.count("p2") == 200
        assert c.get("p2", "layer3", 199, 200) == (pytest.approx(200e-6), 0.0)


def test_write_retries_while_another_process_holds_the_lock(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = LatencyCache(path, timeout=0.02)  # the busy handler gives up quickly; the retry loop must carry on
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    t0 = time.monotonic()
    cache.put("d", "s", 1, 2, 1e-6, 0.0, 20)
    assert time.monotonic() - t0 >= 0.25  # it really waited for the lock
    assert cache.get("d", "s", 1, 2) == (1e-6, 0.0)
    release.join()
    holder.close()
    cache.close()


def test_write_gives_up_with_a_clear_error_when_locked_for_good(tmp_path, monkeypatch):
    monkeypatch.setattr(table_mod, "RETRY_S", 0.1)
    path = tmp_path / "c.sqlite"
    cache = LatencyCache(path, timeout=0.02)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(HwpruneError, match="stayed locked by another process"):
        cache.put("d", "s", 1, 2, 1e-6, 0.0, 20)
    holder.execute("ROLLBACK")
    holder.close()
    cache.close()


def test_corrupt_cache_names_the_file_and_the_fix_and_rebuild_moves_it_aside(tmp_path):
    bad = tmp_path / "latency.sqlite"
    junk = b"this is not sqlite" * 100
    bad.write_bytes(junk)
    (tmp_path / "latency.sqlite-wal").write_bytes(b"stale wal")  # must never be replayed into the fresh file
    with pytest.raises(HwpruneError) as e:
        LatencyCache(bad)
    msg = str(e.value)
    assert str(bad) in msg and "hwprune profile --rebuild" in msg and "delete the file" in msg
    assert "\n" not in msg

    cache = LatencyCache(bad, rebuild=True)
    aside = cache.moved_aside
    assert aside is not None and aside.name.startswith("latency.sqlite.corrupt-")
    assert aside.read_bytes() == junk
    wal = tmp_path / "latency.sqlite-wal"  # SQLite drops the junk WAL on close, or it was moved aside with the file
    assert not wal.exists() or wal.read_bytes() != b"stale wal"
    assert cache.count() == 0
    cache.put("d", "s", 1, 2, 1e-6, 0.0, 20)
    assert cache.get("d", "s", 1, 2) == (1e-6, 0.0)
    cache.close()


def test_damaged_page_is_found_on_open(tmp_path):
    """A valid header over a torn page: quick_check catches it before any lookup reads garbage."""
    path = tmp_path / "c.sqlite"
    with LatencyCache(path) as c:
        c.merge({"d": (FP, [Entry(f"sig{i}" * 20, i, i + 1, 1e-6, 0.0, 20, 1.0) for i in range(300)])})
    raw = bytearray(path.read_bytes())
    assert len(raw) > 4 * 4096
    raw[2 * 4096 + 8 : 3 * 4096] = b"\x55" * (4096 - 8)  # overwrite most of a b-tree page
    path.write_bytes(bytes(raw))
    with pytest.raises(HwpruneError, match="--rebuild"):
        LatencyCache(path)


def test_schema_mismatch_is_an_error_and_rebuild_moves_it_aside(tmp_path):
    path = tmp_path / "c.sqlite"
    LatencyCache(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(HwpruneError, match=f"has schema 2, this hwprune needs {SCHEMA_VERSION}.*--rebuild"):
        LatencyCache(path)
    cache = LatencyCache(path, rebuild=True)
    assert cache.moved_aside.name.startswith("c.sqlite.schema2-") and cache.count() == 0
    cache.close()
    with LatencyCache(path) as again:  # the fresh file carries this schema
        assert again.count() == 0


def test_rebuild_keeps_a_healthy_cache(tmp_path):
    path = tmp_path / "c.sqlite"
    with LatencyCache(path) as c:
        c.put("d", "s", 1, 2, 1e-6, 0.0, 20)
    with LatencyCache(path, rebuild=True) as c:
        assert c.moved_aside is None and c.count() == 1


# -- CLI ---------------------------------------------------------------------------------------------------------


def test_targets_lists_the_registry(capsys):
    code, out, _ = run(capsys, "targets")
    names = {line.split()[0] for line in out.splitlines()}
    assert code == 0 and {"cpu", "analytic-test"} <= names
    assert any(line.startswith("analytic-test") and "10 ps per MAC" in line for line in out.splitlines())


def test_profile_builds_then_reuses_the_table(capsys, tmp_path, tiny_file):
    args = ("profile", "--target", "analytic-test", "--model", f"{tiny_file}:tiny_cnn", "--quiet")
    code, out, _ = run(capsys, *args)
    assert code == 0
    with LatencyCache() as c:  # the default cache ($HWPRUNE_CACHE_DIR, isolated per test)
        n = c.count("analytic-test")
    assert n > 0 and f"{n} entries measured, 0 reused" in out and str(c.path) in out
    code, out, _ = run(capsys, *args)
    assert code == 0 and f"0 entries measured, {n} reused" in out and f"{n} entries for this device" in out

    code, out, _ = run(capsys, "profile", "info", "--target", "analytic-test")
    assert code == 0 and f"{n} entries, 1 device(s)" in out and "<- --target analytic-test here" in out
    assert "cpu analytic" in out and "1 threads" in out


def test_profile_build_export_import_cli(capsys, tmp_path, tiny_file):
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    model = f"{tiny_file}:tiny_resnet"
    # Flags before the action are kept (the build action's own defaults must not overwrite them).
    code, out, _ = run(
        capsys, "profile", "--target", "analytic-test", "--cache", a, "build", "--model", model, "--quiet"
    )
    assert code == 0 and "target analytic-test" in out
    code, out, _ = run(capsys, "profile", "export", tmp_path / "t.json.gz", "--cache", a)
    with LatencyCache(a) as c:
        n = c.count()
    assert code == 0 and f"{n} entries of 1 device(s)" in out
    code, out, _ = run(capsys, "profile", "import", tmp_path / "t.json.gz", "--cache", b)
    assert code == 0 and f"{n} entries added, 0 replaced" in out
    code, out, _ = run(capsys, "profile", "import", tmp_path / "t.json.gz", "--cache", b)
    assert code == 0 and f"0 entries added, 0 replaced by newer ones, {n} kept" in out
    assert _snapshot(a) == _snapshot(b)


def test_profile_defaults_to_the_demo_model_at_batch_64(monkeypatch, tmp_path, tiny_file):
    """`hwprune profile --target cpu` alone profiles example:mnist1d at batch 64 (its architecture is stubbed
    here by the tiny CNN: generating MNIST-1D for its shape takes ~12 s)."""
    from tiny_models import tiny_cnn

    seen = {}

    def fake(spec, batch, shape, progress):
        seen.update(spec=spec, batch=batch)
        model, x = tiny_cnn()
        return model, x[:1].expand(batch, *x.shape[1:])

    monkeypatch.setattr(profile_mod, "_architecture", fake)
    a = build_parser().parse_args(["profile", "--target", "analytic-test"])
    assert a.model is None and a.batch_size is None and a.fn.__name__ == "cmd_profile"
    r = build_profile(a.model, a.target, a.batch_size, cache=tmp_path / "c.sqlite", progress=False)
    assert seen == {"spec": "example:mnist1d", "batch": 64} and r.model == "example:mnist1d"
    assert r.input_shape[0] == 64
    build_profile(f"{tiny_file}:tiny_cnn", "analytic-test", cache=tmp_path / "c.sqlite", progress=False)
    assert seen["batch"] == 1  # a model of the user's own: batch 1, as prune's default


def test_profile_rebuild_from_the_cli(capsys, tmp_path, tiny_file):
    cache = tmp_path / "c.sqlite"
    cache.write_bytes(b"\x00not a database" * 64)
    args = ["profile", "--target", "analytic-test", "--model", f"{tiny_file}:tiny_cnn", "--quiet", "--cache", cache]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "run `hwprune profile --rebuild`")
    assert str(cache) in err
    code, out, _ = run(capsys, *args, "--rebuild")
    assert code == 0 and "moved the unreadable cache aside to" in out
    assert len(list(tmp_path.glob("c.sqlite.corrupt-*"))) == 1


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["profile", "--target", "nope", "--model", "{tiny}:tiny_cnn"], "unknown target 'nope'"),
        (["profile", "--target", "analytic-test", "--model", "nonsense"], "cannot understand model spec"),
        (["profile", "--target", "analytic-test", "--model", "example:nope"], "unknown example 'nope'"),
        (["profile", "--target", "analytic-test", "--model", "{tiny}:tiny_cnn", "--batch-size", "0"], "--batch-size"),
        (["profile", "--target", "analytic-test", "--model", "{tiny}:tiny_cnn", "--min-keep", "0"], "--min-keep"),
        (
            ["profile", "--model", "{tiny}:tiny_cnn", "--input-shape", "5x8x8", "--target", "analytic-test"],
            "does not fit",
        ),
        (["profile", "export", "{tmp}/t.json"], "no latency cache at"),
        (["profile", "info"], "no latency cache at"),
        (["profile", "import", "{tmp}/missing.json"], "not found"),
    ],
)
def test_profile_errors_are_one_line(capsys, tmp_path, tiny_file, argv, needle):
    argv = [a.replace("{tiny}", tiny_file).replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "t.json").exists()


def test_export_errors_are_one_line(capsys, tmp_path):
    cache = tmp_path / "c.sqlite"
    LatencyCache(cache).close()  # exists, but empty
    code, _, err = run(capsys, "profile", "export", tmp_path / "t.json", "--cache", cache)
    assert_one_line_error(code, err, "has no entries to export")
    _seed(cache, entries=[Entry("a", 1, 2, 1.0, 0.1, 20, 100.0)])
    code, _, err = run(capsys, "profile", "export", tmp_path / "t.json", "--cache", cache, "--device", "zzz")
    assert_one_line_error(code, err, "--device zzz is not a device")
    code, _, err = run(capsys, "profile", "export", tmp_path / "no" / "t.json", "--cache", cache)
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "t.json").exists()


def test_help_lists_the_new_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "targets" in out and "profile" in out
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    out = capsys.readouterr().out
    for word in ("build", "export", "import", "info", "--rebuild", "--target"):
        assert word in out
