"""Bad latency tables and bad target specs: each is one line naming the fix, and nothing the user owns is altered.

`--cache` naming another program's SQLite file, a corrupt or truncated table, a directory or an unwritable
place; a `--target board.yaml` / `calibrate --spec` file with a missing, absurd or mistyped field, binary
content, nothing in it, or a list instead of a mapping.
"""

import hashlib
import sqlite3

import pytest
import yaml
from helpers import assert_one_line_error, run_cli, toy_spec

from hwprune.core.errors import HwpruneError
from hwprune.hardware.sim import load_spec
from hwprune.hardware.table import APPLICATION_ID, LatencyCache


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _other_program_db(path):
    """An SQLite file of some other tool, in rollback-journal mode (SQLite's default)."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users (name) VALUES ('ada'), ('grace')")
    db.commit()
    db.close()
    return path


def _table_with_entries(path, n=200):
    with LatencyCache(path) as c:
        c.register_device("dev", {"cpu": "x"})
        for i in range(n):
            c.put("dev", "linear|x=(1, -1)", i, 8, 1e-5 * (i + 1), 1e-7, 3)
    return path


# -- --cache is not a latency table ---------------------------------------------------------------------------


@pytest.mark.parametrize("rebuild", [[], ["--rebuild"]])
def test_another_programs_sqlite_file_is_refused_untouched(tmp_path, capsys, tiny_file, rebuild):
    other = _other_program_db(tmp_path / "app.db")
    before = _digest(other)
    code, _, err = run_cli(capsys, "profile", "build", "--model", f"{tiny_file}:tiny_cnn", "--cache", other, *rebuild)
    assert_one_line_error(code, err, "not an hwprune latency table")
    assert "(users)" in err and "left untouched" in err
    # Same bytes, still in rollback-journal mode (no WAL switched on), no sidecar files, nothing moved aside.
    assert _digest(other) == before and sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]
    db = sqlite3.connect(other)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]
    db.close()


def test_another_programs_application_id_is_refused_by_info_and_import(tmp_path, capsys):
    other = tmp_path / "tagged.db"
    db = sqlite3.connect(other)
    db.execute("PRAGMA application_id=1234")  # e.g. a GeoPackage or an MBTiles file sets its own id
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")  # same table name as ours, not ours
    db.commit()
    db.close()
    before = _digest(other)
    code, _, err = run_cli(capsys, "profile", "info", "--cache", other)
    assert_one_line_error(code, err, "application id 0x4d2")
    exported = tmp_path / "t.json"
    assert run_cli(capsys, "profile", "export", exported, "--cache", _table_with_entries(tmp_path / "t.sqlite"))[0] == 0
    code, _, err = run_cli(capsys, "profile", "import", exported, "--cache", other)
    assert_one_line_error(code, err, "not an hwprune latency table")
    assert _digest(other) == before


def test_a_new_table_carries_the_application_id_and_an_old_one_still_opens(tmp_path):
    path = _table_with_entries(tmp_path / "t.sqlite", n=3)
    assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID
    db = sqlite3.connect(path)
    db.execute("PRAGMA application_id=0")  # as written before the id was set: recognised by its tables
    db.commit()
    db.close()
    with LatencyCache(path) as c:
        assert c.count("dev") == 3 and c.get("dev", "linear|x=(1, -1)", 2, 8) == (1e-5 * 3, 1e-7)
    assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID


# -- corrupt and truncated tables -------------------------------------------------------------------------------


def test_a_file_that_is_not_sqlite_is_kept_until_rebuild_moves_it_aside(tmp_path, capsys):
    bad = tmp_path / "t.sqlite"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    before = _digest(bad)
    code, _, err = run_cli(capsys, "profile", "info", "--cache", bad)
    assert_one_line_error(code, err, "no SQLite header")
    assert "--rebuild" in err and _digest(bad) == before
    with LatencyCache(bad, rebuild=True) as c:
        assert c.count() == 0 and c.moved_aside.name.startswith("t.sqlite.corrupt-")
        assert _digest(c.moved_aside) == before


@pytest.mark.parametrize("cut", [lambda n: n // 2, lambda n: 40])  # half the pages; inside the 100-byte header
def test_a_truncated_table_is_a_one_line_error_and_is_left_as_it_is(tmp_path, capsys, cut):
    path = _table_with_entries(tmp_path / "t.sqlite", n=2000)
    data = path.read_bytes()
    assert len(data) > 4 * 4096  # several pages, so half of them is a real torn file
    path.write_bytes(data[: cut(len(data))])
    before = _digest(path)
    code, _, err = run_cli(capsys, "profile", "info", "--cache", path)
    assert_one_line_error(code, err, "--rebuild")
    assert "corrupt" in err and _digest(path) == before
    with pytest.raises(HwpruneError, match="corrupt"):
        LatencyCache(path)


# -- where the table would go ---------------------------------------------------------------------------------


def test_cache_that_is_a_directory(tmp_path, capsys, tiny_file):
    code, _, err = run_cli(capsys, "profile", "build", "--model", f"{tiny_file}:tiny_cnn", "--cache", tmp_path)
    assert_one_line_error(code, err, "is a directory; pass --cache a file")
    assert str(tmp_path / "latency.sqlite") in err and list(tmp_path.iterdir()) == []


def test_cache_below_a_regular_file_is_an_unwritable_location(tmp_path, capsys, tiny_file):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cache = blocker / "sub" / "t.sqlite"
    code, _, err = run_cli(capsys, "profile", "build", "--model", f"{tiny_file}:tiny_cnn", "--cache", cache)
    assert_one_line_error(code, err, "cannot create the latency cache's directory")
    assert "a file is in the way" in err and blocker.read_text() == "x"


def test_unwritable_default_cache_dir(tmp_path, capsys, monkeypatch, tiny_file):
    blocker = tmp_path / "home-cache"
    blocker.write_text("")
    monkeypatch.setenv("HWPRUNE_CACHE_DIR", str(blocker))
    code, _, err = run_cli(capsys, "profile", "build", "--model", f"{tiny_file}:tiny_cnn")
    assert_one_line_error(code, err, "(or set HWPRUNE_CACHE_DIR)")


# -- target spec files ----------------------------------------------------------------------------------------


def _spec(**over) -> dict:
    return toy_spec(**{"name": "board", **over})


def _fp32(**over) -> dict:
    return {"fp32": {"peak_ops": 2.0e12, "tile_in": 8, "tile_out": 8, "energy_per_mac": 1.0e-12, **over}}


BAD_SPECS = [
    ({k: v for k, v in _spec().items() if k != "memory_bandwidth"}, "missing field 'memory_bandwidth'"),
    (_spec(dtypes={"fp32": {"tile_in": 8, "tile_out": 8, "energy_per_mac": 0}}), "missing field 'dtypes.fp32.peak_"),
    (_spec(memory_bandwidth=-1e9), "'memory_bandwidth' must be a number in (0, 1e+15] bytes/s, got -1000000000.0"),
    (_spec(dtypes=_fp32(peak_ops=0)), "'dtypes.fp32.peak_ops' must be a number in (0, 1e+18] ops/s, got 0"),
    (_spec(memory_capacity=float("nan")), "'memory_capacity' must be a number in (0, 1e+15] bytes, got nan"),
    (_spec(op_overhead="fast"), "'op_overhead' must be a number in [0, 1] s, got 'fast'"),
    (_spec(memory_bandwidth=3.35e21), "'memory_bandwidth' must be a number in (0, 1e+15] bytes/s"),
    (_spec(efficiency={"compute": 0.5, "bandwidth": 0}), "'efficiency.bandwidth' must be a number in (0, 1000]"),
    (_spec(dtypes=_fp32(tile_out=1e9)), "'dtypes.fp32.tile_out' must be a number in [1, 65536] channels"),
    (_spec(sparsity={"2:4": -0.5}), "'sparsity.2:4' must be a number in (0, 10]"),
    (_spec(calibration=["fitted"]), "field 'calibration' must be a mapping"),
]


@pytest.mark.parametrize("doc, needle", BAD_SPECS)
def test_bad_spec_field_names_the_field_and_its_range(tmp_path, capsys, doc, needle):
    board = tmp_path / "my-board.yaml"
    board.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(capsys, "profile", "build", "--target", board, "--cache", tmp_path / "t.sqlite")
    assert_one_line_error(code, err, needle)
    assert str(board) in err and not (tmp_path / "t.sqlite").exists()  # refused before the cache is opened


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "the file is empty; a spec is a YAML mapping of fields"),
        (b"# only a comment\n", "the file is empty"),
        (yaml.safe_dump([_spec()]).encode(), "the top level is a list; a spec is a YAML mapping"),
        (b"just a sentence", "the top level is a str"),
        (bytes(range(128, 256)) * 4, "not a text file (byte 0 is not UTF-8)"),
        (b"name: board\n\x00\x01\x02", "not valid YAML (a control or binary character at byte 12)"),
        (b"name: [board\n", "not valid YAML"),
    ],
)
def test_spec_file_that_is_not_a_mapping(tmp_path, capsys, content, needle):
    board = tmp_path / "board.yaml"
    board.write_bytes(content)
    code, _, err = run_cli(capsys, "calibrate", "--spec", board, "--model", "example:mnist1d")
    assert_one_line_error(code, err, needle)
    with pytest.raises(ValueError, match="hardware spec"):  # HwpruneError is a ValueError for Python callers
        load_spec(board)


def test_yaml_1_1_numbers_and_the_largest_catalog_figures_stay_valid(tmp_path):
    board = tmp_path / "b.yaml"
    text = yaml.safe_dump(_spec(memory_bandwidth=3.35e12, op_overhead=0)).replace("3350000000000.0", "3.35e12")
    board.write_text(text.replace("100000000000.0", "1e11"))
    spec = load_spec(board)
    assert spec.memory_bandwidth == 3.35e12 and spec.op_overhead == 0.0
