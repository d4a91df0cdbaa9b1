"""`ingest_window`, `FileCatalog`, `landed_partitions` and row validation on hand-made landing dirs.

Every test builds a tiny landing dir under `tmp_path`, so the expected rows, rejections and
reasons are known exactly.
"""

import datetime as dt
import math
import os
from pathlib import Path

import polars as pl
import pytest

from ct_assets.lib import files
from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.ingest import (
    FileCatalog,
    IngestResult,
    ingest_window,
    keys_between,
    landed_partitions,
    plan_chunks,
)
from ct_assets.lib.validation import (
    CHECK,
    PARTITION,
    REASON,
    REJECTED_SCHEMA,
    raw_schema,
    reject_duplicate_ids,
    validate_rows,
)

HEADER = "id,ts,amount,kind,label"
COLUMNS = {
    "id": {"type": "string", "nullable": False},
    "ts": "timestamp",
    "amount": {"type": "float", "min": 0, "max": 1000},
    "kind": "category",
    "label": "int",
}
DAY1, DAY2, DAY3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)
# Two good rows wrapped around every bad row of the row-level tests.
GOOD_BEFORE = "g1,2026-01-02T08:00:00,10.5,a,0"
GOOD_AFTER = "g2,2026-01-02T09:00:00,20,b,1"


def make_config(tmp_path: Path, **dataset: object) -> Config:
    raw = {
        "dataset": {"source": "files", "landing_dir": "landing", "columns": COLUMNS,
                    "timestamp": "ts", "target": "label", "id": "id", **dataset},
        "partitions": {"start": "2026-01-01"},
        "storage": {"dir": "data"},
    }
    config = config_from_dict(raw, base_dir=tmp_path)
    config.landing_dir.mkdir(parents=True, exist_ok=True)
    return config


def write_csv(config: Config, name: str, *lines: str, header: str = HEADER) -> Path:
    path = config.landing_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def good_frame(ids: list[str], day: dt.date = DAY2) -> pl.DataFrame:
    start = dt.datetime.combine(day, dt.time(6))
    return pl.DataFrame({
        "id": ids,
        "ts": [start + dt.timedelta(hours=i) for i in range(len(ids))],
        "amount": [float(i + 1) for i in range(len(ids))],
        "kind": ["a"] * len(ids),
        "label": [i % 2 for i in range(len(ids))],
    })


def write_parquet(config: Config, name: str, frame: pl.DataFrame) -> Path:
    path = config.landing_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def ingest(config: Config, first: dt.date = DAY2, days: int = 1,
           catalog: FileCatalog | None = None) -> IngestResult:
    catalog = catalog if catalog is not None else FileCatalog(config.landing_catalog_path)
    return ingest_window(config, utc(first), utc(first + dt.timedelta(days=days)), catalog)


def all_rejected(result: IngestResult) -> pl.DataFrame:
    """Rejected rows of a window, with those that have no partition (unusable timestamp)."""
    return pl.concat([result.rejected_rows, *result.unplaced_rows.values()]).sort(
        "_source_file", "_row_number")


def ids(result: IngestResult) -> list[str]:
    return sorted(result.rows["id"].to_list())


def rejected_file_reasons(result: IngestResult) -> dict[str, str]:
    return {file.relpath: reason for file, reason in result.rejected_files}


# --- good data -------------------------------------------------------------------------------


def test_good_csv_rows_are_typed_and_placed_in_their_partition(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "day.csv", GOOD_BEFORE, GOOD_AFTER, "g3,2026-01-02 23:59:59.5,0,a,1")
    result = ingest(config)
    assert ids(result) == ["g1", "g2", "g3"]
    assert result.rows.schema == pl.Schema(raw_schema(config.dataset))
    assert result.rows["amount"].to_list() == [10.5, 20.0, 0.0]
    assert result.rows["label"].to_list() == [0, 1, 1]
    assert set(result.rows[PARTITION]) == {"2026-01-02"}
    assert result.rows["_row_number"].to_list() == [1, 2, 3]
    assert all_rejected(result).is_empty() and result.rejected_files == []
    assert result.good_files == ["day.csv"] and result.files_read == 1


# --- bad rows --------------------------------------------------------------------------------

BAD_ROWS = {
    # name: (bad line, check, words the reason must contain, placed in the window's partition)
    "unparsable timestamp": ("x1,not-a-time,5,a,1", "unparsable_timestamp",
                             ["'ts'", "not-a-time"], False),
    "wrong type float": ("x1,2026-01-02T10:00:00,abc,a,1", "wrong_type",
                         ["'amount'", "'abc'", "float"], True),
    "wrong type int target": ("x1,2026-01-02T10:00:00,5,a,yes", "wrong_type",
                              ["'label'", "'yes'", "int"], True),
    "fractional int": ("x1,2026-01-02T10:00:00,5,a,0.5", "wrong_type",
                       ["'label'", "'0.5'"], True),
    "null id": (",2026-01-02T10:00:00,5,a,1", "null_column", ["'id'", "null"], True),
    "null timestamp": ("x1,,5,a,1", "null_timestamp", ["'ts'", "null"], False),
    "invalid target": ("x1,2026-01-02T10:00:00,5,a,3", "invalid_target",
                       ["'label'", "3", "not 0 or 1"], True),
    "inf": ("x1,2026-01-02T10:00:00,inf,a,1", "non_finite", ["'amount'", "inf"], True),
    "minus inf": ("x1,2026-01-02T10:00:00,-inf,a,1", "non_finite", ["'amount'", "-inf"], True),
    "nan": ("x1,2026-01-02T10:00:00,NaN,a,1", "non_finite", ["'amount'", "NaN"], True),
    "below min": ("x1,2026-01-02T10:00:00,-0.01,a,1", "out_of_range",
                  ["'amount'", "-0.01", "below min 0"], True),
    "above max": ("x1,2026-01-02T10:00:00,1000.5,a,1", "out_of_range",
                  ["'amount'", "1000.5", "above max 1000"], True),
    "before partitions.start": ("x1,2025-12-31T23:59:59,5,a,1", "before_start",
                                ["2025-12-31T23:59:59", "partitions.start 2026-01-01"], False),
    "too many fields": ("x1,2026-01-02T10:00:00,5,a,1,surplus", "malformed_row",
                        ["6 fields", "expected 5"], False),
    "too few fields": ("x1,2026-01-02T10:00:00,5,a", "malformed_row",
                       ["4 fields", "expected 5"], False),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_is_rejected_with_its_reason_and_the_good_rows_land(tmp_path, kind):
    bad_line, check, words, placed = BAD_ROWS[kind]
    config = make_config(tmp_path)
    write_csv(config, "day.csv", GOOD_BEFORE, bad_line, GOOD_AFTER)
    result = ingest(config)

    assert ids(result) == ["g1", "g2"]
    assert result.rows["_row_number"].to_list() == [1, 3]
    assert result.rejected_files == []
    rejected = all_rejected(result)
    assert rejected.height == 1, rejected
    row = rejected.row(0, named=True)
    assert row[CHECK] == check
    for word in words:
        assert word in row[REASON], (word, row[REASON])
    assert row["_source_file"] == "day.csv"
    assert row["_row_number"] == 2
    if placed:  # a usable timestamp: the row is recorded against its partition
        assert row[PARTITION] == "2026-01-02"
        assert result.rejected_rows.height == 1
        assert result.unplaced_rows["day.csv"].is_empty()
    else:  # no usable timestamp: kept per file, outside every partition
        assert row[PARTITION] is None
        assert result.rejected_rows.is_empty()
        assert result.unplaced_rows["day.csv"].height == 1


def test_a_row_without_its_label_lands_unless_the_target_is_declared_non_null(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "day.csv", GOOD_BEFORE, "u1,2026-01-02T10:00:00,5,a,", GOOD_AFTER)
    result = ingest(config)
    assert ids(result) == ["g1", "g2", "u1"]  # its label may come later: scored, not trained on
    assert result.rows.filter(pl.col("id") == "u1")["label"].to_list() == [None]
    assert all_rejected(result).is_empty()
    strict = make_config(tmp_path / "strict", columns={
        **COLUMNS, "label": {"type": "int", "nullable": False}})
    write_csv(strict, "day.csv", GOOD_BEFORE, "u1,2026-01-02T10:00:00,5,a,", GOOD_AFTER)
    rejected = all_rejected(ingest(strict))
    assert rejected[CHECK].to_list() == ["null_target"]
    assert "target 'label' is null" in rejected[REASON][0]


def test_rejected_row_keeps_the_original_values(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "day.csv", GOOD_BEFORE, "x1,2026-01-02T10:00:00,abc,zz,1")
    rejected = all_rejected(ingest(config))
    assert rejected["row"].to_list() == [
        '{"id":"x1","ts":"2026-01-02T10:00:00","amount":"abc","kind":"zz","label":"1"}']
    assert rejected.schema == pl.Schema(REJECTED_SCHEMA)


def test_every_bad_row_of_one_file_is_rejected_with_its_own_check(tmp_path):
    config = make_config(tmp_path)
    lines = [GOOD_BEFORE] + [line for line, *_ in BAD_ROWS.values()] + [GOOD_AFTER]
    # distinct ids, so no bad row is also a duplicate
    lines = [line.replace("x1,", f"x{n},", 1) for n, line in enumerate(lines)]
    write_csv(config, "mixed.csv", *lines)
    result = ingest(config)
    assert ids(result) == ["g1", "g2"]
    rejected = all_rejected(result)
    assert rejected["_row_number"].to_list() == list(range(2, len(BAD_ROWS) + 2))
    assert rejected[CHECK].to_list() == [check for _, check, *_ in BAD_ROWS.values()]


def test_bad_rows_in_parquet_are_rejected_like_csv_rows(tmp_path):
    config = make_config(tmp_path)
    frame = pl.DataFrame({
        "id": ["p1", "p2", "p3", "p4", "p5"],
        "ts": [dt.datetime(2026, 1, 2, h) for h in range(1, 6)],
        "amount": [1.0, float("inf"), 2.0, -5.0, 3.0],
        "kind": ["a"] * 5,
        "label": [0, 1, None, 1, 7],
    })
    write_parquet(config, "typed.parquet", frame)
    result = ingest(config)
    assert ids(result) == ["p1", "p3"]  # p3's label comes later
    rejected = all_rejected(result)
    assert rejected["_row_number"].to_list() == [2, 4, 5]
    assert rejected[CHECK].to_list() == ["non_finite", "out_of_range", "invalid_target"]
    assert "target 'label': 7 is not 0 or 1" in rejected[REASON][2]
    assert set(rejected["_source_file"]) == {"typed.parquet"}


def test_non_finite_is_accepted_where_allowed(tmp_path):
    columns = {**COLUMNS, "ratio": {"type": "float", "allow_non_finite": True}}
    config = make_config(tmp_path, columns=columns)
    header = HEADER + ",ratio"
    write_csv(config, "day.csv",
              "n1,2026-01-02T01:00:00,1,a,0,inf",
              "n2,2026-01-02T02:00:00,1,a,0,-inf",
              "n3,2026-01-02T03:00:00,1,a,0,nan",
              "n4,2026-01-02T04:00:00,1,a,0,0.5",
              "n5,2026-01-02T05:00:00,inf,a,0,1",  # amount does not allow it
              header=header)
    result = ingest(config)
    assert ids(result) == ["n1", "n2", "n3", "n4"]
    ratio = result.rows.sort("id")["ratio"].to_list()
    assert ratio[0] == math.inf and ratio[1] == -math.inf and math.isnan(ratio[2])
    assert ratio[3] == 0.5
    rejected = all_rejected(result)
    assert rejected.select(CHECK, "_row_number").rows() == [("non_finite", 5)]
    assert "'amount'" in rejected[REASON][0]


def test_duplicate_id_within_one_file_keeps_the_first_row(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "day.csv", GOOD_BEFORE, "g1,2026-01-02T07:00:00,99,z,1", GOOD_AFTER)
    result = ingest(config)
    assert ids(result) == ["g1", "g2"]
    kept = result.rows.filter(pl.col("id") == "g1")
    assert kept.select("_row_number", "amount").rows() == [(1, 10.5)]  # row 1, though later
    rejected = all_rejected(result)
    assert rejected.select(CHECK, "_source_file", "_row_number", PARTITION).rows() == [
        ("duplicate_id", "day.csv", 2, "2026-01-02")]
    assert rejected[REASON][0] == "duplicate id 'g1' (first seen at day.csv:1)"


def test_duplicate_id_across_files_keeps_the_first_by_file_then_row(tmp_path):
    config = make_config(tmp_path)
    # b.csv holds the earlier event, but a.csv sorts first: a.csv:2 is kept.
    write_csv(config, "b.csv", "d1,2026-01-02T01:00:00,1,b,0", "b2,2026-01-02T02:00:00,1,b,0")
    write_csv(config, "a.csv", "a1,2026-01-02T05:00:00,2,a,1", "d1,2026-01-02T20:00:00,2,a,1")
    result = ingest(config)
    assert ids(result) == ["a1", "b2", "d1"]
    kept = result.rows.filter(pl.col("id") == "d1")
    assert kept.select("_source_file", "_row_number").rows() == [("a.csv", 2)]
    rejected = all_rejected(result)
    assert rejected.select(CHECK, "_source_file", "_row_number").rows() == [
        ("duplicate_id", "b.csv", 1)]
    assert "duplicate id 'd1'" in rejected[REASON][0]
    assert "first seen at a.csv:2" in rejected[REASON][0]


def test_same_id_in_different_partitions_is_not_a_duplicate(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "two.csv", "s1,2026-01-02T05:00:00,1,a,0", "s1,2026-01-03T05:00:00,1,a,0")
    result = ingest(config, DAY2, days=2)
    assert result.rows["id"].to_list() == ["s1", "s1"]
    assert all_rejected(result).is_empty()


def test_reject_duplicate_ids_without_an_id_column_keeps_everything(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "day.csv", GOOD_BEFORE, GOOD_BEFORE)
    frame = files.read_landed_file(files.discover(config.landing_dir)[0], list(COLUMNS))
    good, _ = validate_rows(frame, config.dataset, config.partitions)
    kept, rejected = reject_duplicate_ids(good, None)
    assert kept.height == 2 and rejected.is_empty()
    kept, rejected = reject_duplicate_ids(good, "id")
    assert kept.height == 1 and rejected[CHECK].to_list() == ["duplicate_id"]


# --- bad files -------------------------------------------------------------------------------


def _good_parquet_bytes(tmp_path: Path) -> bytes:
    scratch = tmp_path / "scratch.parquet"
    good_frame([f"q{i}" for i in range(50)]).write_parquet(scratch)
    return scratch.read_bytes()


def _bad_empty(config: Config, tmp_path: Path) -> str:
    (config.landing_dir / "empty.csv").write_bytes(b"")
    return "empty.csv"


def _bad_empty_parquet(config: Config, tmp_path: Path) -> str:
    (config.landing_dir / "empty.parquet").write_bytes(b"")
    return "empty.parquet"


def _bad_truncated_parquet(config: Config, tmp_path: Path) -> str:
    data = _good_parquet_bytes(tmp_path)
    (config.landing_dir / "cut.parquet").write_bytes(data[: len(data) // 2])
    return "cut.parquet"


def _bad_corrupt_parquet(config: Config, tmp_path: Path) -> str:
    (config.landing_dir / "noise.parquet").write_bytes(os.urandom(512))
    return "noise.parquet"


def _bad_corrupt_parquet_body(config: Config, tmp_path: Path) -> str:
    # right magic bytes at both ends, garbage in between
    (config.landing_dir / "garbled.parquet").write_bytes(b"PAR1" + os.urandom(512) + b"PAR1")
    return "garbled.parquet"


def _bad_png_as_csv(config: Config, tmp_path: Path) -> str:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06"
    (config.landing_dir / "image.csv").write_bytes(png)
    return "image.csv"


def _bad_wrong_delimiter(config: Config, tmp_path: Path) -> str:
    write_csv(config, "semicolons.csv", "s1;2026-01-02T10:00:00;5;a;1",
              header="id;ts;amount;kind;label")
    return "semicolons.csv"


def _bad_missing_column(config: Config, tmp_path: Path) -> str:
    write_csv(config, "nokind.csv", "m1,2026-01-02T10:00:00,5,1", header="id,ts,amount,label")
    return "nokind.csv"


def _bad_latin1(config: Config, tmp_path: Path) -> str:
    text = f"{HEADER}\nl1,2026-01-02T10:00:00,5,caf\xe9,1\nl2,2026-01-02T11:00:00,5,a,1\n"
    (config.landing_dir / "latin1.csv").write_bytes(text.encode("latin-1"))
    return "latin1.csv"


def _bad_latin1_at_the_end(config: Config, tmp_path: Path) -> str:
    text = f"{HEADER}\nl1,2026-01-02T10:00:00,5,a,1\nl2,2026-01-02T11:00:00,5,caf\xe9,1\n"
    (config.landing_dir / "latin1_end.csv").write_bytes(text.encode("latin-1"))
    return "latin1_end.csv"


def _bad_latin1_far_in(config: Config, tmp_path: Path) -> str:
    # beyond the 64 KiB sniffed up front: polars meets the bad byte while parsing
    good = "".join(f"f{i},2026-01-02T10:00:00,5,a,1\n" for i in range(3000))
    text = f"{HEADER}\n{good}l1,2026-01-02T11:00:00,5,caf\xe9,1\n"
    (config.landing_dir / "latin1_far.csv").write_bytes(text.encode("latin-1"))
    return "latin1_far.csv"


def _bad_symlink_inside(config: Config, tmp_path: Path) -> str:
    (config.landing_dir / "sub").mkdir()
    os.symlink(config.landing_dir / "good.csv", config.landing_dir / "sub" / "alias.csv")
    return "sub/alias.csv"


def _bad_symlink_outside(config: Config, tmp_path: Path) -> str:
    outside = tmp_path / "elsewhere.csv"
    outside.write_text(f"{HEADER}\no1,2026-01-02T10:00:00,5,a,1\n", encoding="utf-8")
    os.symlink(outside, config.landing_dir / "outside.csv")
    return "outside.csv"


def _bad_symlinked_directory(config: Config, tmp_path: Path) -> str:
    other = tmp_path / "other_dir"
    other.mkdir()
    (other / "inner.csv").write_text(f"{HEADER}\no1,2026-01-02T10:00:00,5,a,1\n",
                                     encoding="utf-8")
    os.symlink(other, config.landing_dir / "linked_dir")
    return "linked_dir"


def _bad_unsupported_extension(config: Config, tmp_path: Path) -> str:
    write_csv(config, "notes.txt", "u1,2026-01-02T10:00:00,5,a,1")
    return "notes.txt"


def _bad_no_extension(config: Config, tmp_path: Path) -> str:
    write_csv(config, "README", "u1,2026-01-02T10:00:00,5,a,1")
    return "README"


def _bad_header_only_blank(config: Config, tmp_path: Path) -> str:
    (config.landing_dir / "blank.csv").write_text("\n\n", encoding="utf-8")
    return "blank.csv"


BAD_FILES = {
    # name: (how to make it, a word its reason must contain)
    "empty csv": (_bad_empty, "empty"),
    "empty parquet": (_bad_empty_parquet, "empty"),
    "truncated parquet": (_bad_truncated_parquet, "truncated"),
    "random bytes parquet": (_bad_corrupt_parquet, "not a Parquet file"),
    "corrupt parquet body": (_bad_corrupt_parquet_body, "corrupt Parquet"),
    "png as csv": (_bad_png_as_csv, "binary"),
    "wrong delimiter": (_bad_wrong_delimiter, "';'-separated, expected ','"),
    "missing column": (_bad_missing_column, "missing required column(s) kind"),
    "latin-1": (_bad_latin1, "UTF-8"),
    "latin-1 last row": (_bad_latin1_at_the_end, "UTF-8"),
    "latin-1 after 64 KiB": (_bad_latin1_far_in, "UTF-8"),
    "symlink inside": (_bad_symlink_inside, "symlink"),
    "symlink outside": (_bad_symlink_outside, "symlink"),
    "symlinked directory": (_bad_symlinked_directory, "symlinked directory"),
    "txt": (_bad_unsupported_extension, "unsupported file type '.txt'"),
    "no extension": (_bad_no_extension, "unsupported file type"),
    "blank lines only": (_bad_header_only_blank, "empty"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_is_rejected_whole_and_the_other_files_land(tmp_path, kind):
    make, word = BAD_FILES[kind]
    config = make_config(tmp_path)
    write_csv(config, "good.csv", GOOD_BEFORE, GOOD_AFTER)
    write_parquet(config, "zz_good.parquet", good_frame(["p1", "p2"]))
    bad = make(config, tmp_path)
    result = ingest(config)

    reasons = rejected_file_reasons(result)
    assert list(reasons) == [bad]
    assert word in reasons[bad], reasons[bad]
    assert "\n" not in reasons[bad]
    assert ids(result) == ["g1", "g2", "p1", "p2"]
    assert result.good_files == ["good.csv", "zz_good.parquet"]
    assert bad in result.present_files
    assert all_rejected(result).is_empty()  # no row of the bad file leaks in
    rejected = next(file for file, _ in result.rejected_files)
    assert rejected.relpath == bad


def test_a_path_resolving_outside_the_landing_dir_is_a_problem(tmp_path):
    config = make_config(tmp_path)
    root = config.landing_dir
    (tmp_path / "outside.csv").write_text(f"{HEADER}\n", encoding="utf-8")
    found = files._inspect(root / ".." / "outside.csv", root)
    assert found.problem == "path resolves outside the landing dir"
    inside = write_csv(config, "in.csv", GOOD_BEFORE)
    assert files._inspect(inside, root).problem is None


def test_hidden_and_in_flight_files_are_neither_read_nor_rejected(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "good.csv", GOOD_BEFORE)
    for name in (".x.csv", "a.csv.tmp", "b.parquet.part", "c.csv.partial", "d.csv.crdownload",
                 ".staging/e.csv", "sub/.f.csv"):
        write_csv(config, name, "h1,2026-01-02T10:00:00,5,a,1")
    (config.landing_dir / ".junk.csv").write_bytes(b"\x00\x01 not even text")
    result = ingest(config)
    assert ids(result) == ["g1"]
    assert result.rejected_files == []
    assert result.present_files == ["good.csv"]
    assert [file.relpath for file in files.discover(config.landing_dir)] == ["good.csv"]


def test_missing_landing_dir_ingests_nothing(tmp_path):
    config = make_config(tmp_path)
    config.landing_dir.rmdir()
    result = ingest(config)
    assert result.rows.is_empty() and result.rejected_files == []
    assert result.rows.schema == pl.Schema(raw_schema(config.dataset))


# --- formats, layout, time zones and windows -------------------------------------------------


def test_csv_and_parquet_in_nested_directories_land_together(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "2026/01/02/events.csv", GOOD_BEFORE, GOOD_AFTER)
    write_parquet(config, "exports/deep/er/part-0.parquet", good_frame(["p1", "p2"]))
    write_parquet(config, "top.parquet", good_frame(["p3"]))
    result = ingest(config)
    assert ids(result) == ["g1", "g2", "p1", "p2", "p3"]
    by_file = dict(result.rows.group_by("_source_file").len().iter_rows())
    assert by_file == {"2026/01/02/events.csv": 2, "exports/deep/er/part-0.parquet": 2,
                       "top.parquet": 1}
    assert result.rows.schema == pl.Schema(raw_schema(config.dataset))
    assert result.files_read == 3


def test_parquet_with_text_columns_is_cast_like_csv(tmp_path):
    config = make_config(tmp_path)
    frame = pl.DataFrame({"id": ["t1", "t2"], "ts": ["2026-01-02T01:00:00", "2026-01-02"],
                          "amount": ["1.5", "x"], "kind": ["a", "b"], "label": ["1", "0"]})
    write_parquet(config, "text.parquet", frame)
    result = ingest(config)
    assert result.rows.select("id", "amount", "label").rows() == [("t1", 1.5, 1)]
    assert all_rejected(result).select(CHECK, "_row_number").rows() == [("wrong_type", 2)]


def test_csv_timestamps_with_offsets_are_converted_to_utc(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "zones.csv",
              "z1,2026-01-02T10:00:00,1,a,0",          # naive: taken as UTC
              "z2,2026-01-02T13:00:00+02:00,1,a,0",    # 11:00 UTC
              "z3,2026-01-02T01:30:00+02:00,1,a,0",    # 2026-01-01 23:30 UTC: previous day
              "z4,2026-01-01T22:00:00-05:00,1,a,0",    # 2026-01-02 03:00 UTC: next day
              "z5,2026-01-02T12:00:00Z,1,a,0",
              "z6,2026-01-02 14:15:00.250+0530,1,a,0",  # 08:45:00.250 UTC
              "z7,2026-01-02,1,a,0")                   # a date: midnight UTC
    result = ingest(config)
    got = dict(result.rows.select("id", "ts").iter_rows())
    assert got == {
        "z1": dt.datetime(2026, 1, 2, 10, tzinfo=dt.UTC),
        "z2": dt.datetime(2026, 1, 2, 11, tzinfo=dt.UTC),
        "z4": dt.datetime(2026, 1, 2, 3, tzinfo=dt.UTC),
        "z5": dt.datetime(2026, 1, 2, 12, tzinfo=dt.UTC),
        "z6": dt.datetime(2026, 1, 2, 8, 45, 0, 250000, tzinfo=dt.UTC),
        "z7": dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
    }
    assert all_rejected(result).is_empty()
    previous = ingest(config, DAY1)
    assert previous.rows.select("id", "ts", PARTITION).rows() == [
        ("z3", dt.datetime(2026, 1, 1, 23, 30, tzinfo=dt.UTC), "2026-01-01")]


def test_offset_timestamps_first_then_naive_ones_all_parse(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "zones.csv", "y1,2026-01-02T13:00:00+02:00,1,a,0",
              "y2,2026-01-02T10:00:00,1,a,0", "y3,2026-01-02T10:00:00Z,1,a,0")
    result = ingest(config)
    assert result.rows.sort("id")["ts"].dt.hour().to_list() == [11, 10, 10]
    assert all_rejected(result).is_empty()


def test_parquet_timestamps_in_other_zones_are_converted_to_utc(tmp_path):
    config = make_config(tmp_path)
    zoned = good_frame(["k1"]).with_columns(
        pl.lit(dt.datetime(2026, 1, 2, 9)).dt.replace_time_zone("America/New_York").alias("ts"))
    write_parquet(config, "ny.parquet", zoned)  # 09:00 New York = 14:00 UTC
    naive_ms = good_frame(["k2"]).with_columns(pl.col("ts").dt.cast_time_unit("ms"))
    write_parquet(config, "naive.parquet", naive_ms)
    dates = good_frame(["k3"]).with_columns(pl.col("ts").dt.date())
    write_parquet(config, "dates.parquet", dates)
    result = ingest(config)
    got = dict(result.rows.select("id", "ts").iter_rows())
    assert got == {"k1": dt.datetime(2026, 1, 2, 14, tzinfo=dt.UTC),
                   "k2": dt.datetime(2026, 1, 2, 6, tzinfo=dt.UTC),
                   "k3": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)}
    assert result.rows["ts"].dtype == pl.Datetime("us", "UTC")


def test_timestamp_format_is_honoured(tmp_path):
    config = make_config(tmp_path, timestamp_format="%d/%m/%Y %H:%M")
    write_csv(config, "eu.csv", "e1,02/01/2026 10:30,1,a,0", "e2,2026-01-02T10:30:00,1,a,0")
    result = ingest(config)
    assert result.rows.select("id", "ts").rows() == [
        ("e1", dt.datetime(2026, 1, 2, 10, 30, tzinfo=dt.UTC))]
    assert all_rejected(result)[CHECK].to_list() == ["unparsable_timestamp"]


def _three_days(config: Config) -> None:
    write_csv(config, "span.csv",
              "s1,2026-01-01T10:00:00,1,a,0", "s2,2026-01-02T10:00:00,1,a,0",
              "s3,2026-01-02T23:59:59.999999,1,a,0", "s4,2026-01-03T00:00:00,1,a,0",
              "s5,2026-01-01T11:00:00,-1,a,0", "s6,2026-01-02T11:00:00,-1,a,0",
              "s7,2026-01-03T11:00:00,-1,a,0")


def test_a_window_selects_only_its_partitions_rows_and_rejections(tmp_path):
    config = make_config(tmp_path)
    _three_days(config)
    day2 = ingest(config, DAY2)
    assert ids(day2) == ["s2", "s3"]
    assert day2.rejected_rows.select("_row_number", PARTITION).rows() == [(6, "2026-01-02")]
    day1_2 = ingest(config, DAY1, days=2)
    assert ids(day1_2) == ["s1", "s2", "s3"]
    assert sorted(day1_2.rejected_rows[PARTITION].to_list()) == ["2026-01-01", "2026-01-02"]
    day3 = ingest(config, DAY3)
    assert ids(day3) == ["s4"]
    assert day3.rows[PARTITION].to_list() == ["2026-01-03"]
    empty = ingest(config, dt.date(2026, 1, 10))
    assert empty.rows.is_empty() and empty.rejected_rows.is_empty()


def test_hourly_partitions_cut_rows_by_hour(tmp_path):
    raw = {"dataset": {"source": "files", "landing_dir": "landing", "columns": COLUMNS,
                       "timestamp": "ts", "target": "label", "id": "id"},
           "partitions": {"start": "2026-01-01", "granularity": "hourly"}}
    config = config_from_dict(raw, base_dir=tmp_path)
    config.landing_dir.mkdir()
    write_csv(config, "h.csv", "h1,2026-01-02T10:05:00,1,a,0", "h2,2026-01-02T11:05:00,1,a,0")
    start = dt.datetime(2026, 1, 2, 11, tzinfo=dt.UTC)
    result = ingest_window(config, start, start + dt.timedelta(hours=1),
                           FileCatalog(config.landing_catalog_path))
    assert result.rows.select("id", PARTITION).rows() == [("h2", "2026-01-02-11:00")]


# --- the file catalog ------------------------------------------------------------------------


def test_catalog_skips_files_that_cannot_overlap_and_rereads_changed_ones(tmp_path):
    config = make_config(tmp_path)
    day1 = write_csv(config, "day1.csv", "a1,2026-01-01T10:00:00,1,a,0")
    write_csv(config, "day3.csv", "c1,2026-01-03T10:00:00,1,a,0", "c2,not-a-time,1,a,0")
    write_csv(config, "nothing.csv", "n1,garbage,1,a,0")  # readable, no placeable row
    catalog = FileCatalog(config.landing_catalog_path)

    first = ingest(config, DAY1, catalog=catalog)
    assert ids(first) == ["a1"]
    assert (first.files_read, first.files_skipped) == (3, 0)
    fingerprints = {key.rsplit(":", 2)[0]: value for key, value in catalog.entries.items()}
    assert fingerprints == {"day1.csv": ["2026-01-01", "2026-01-01"],
                            "day3.csv": ["2026-01-03", "2026-01-03"], "nothing.csv": []}
    catalog.save()
    reloaded = FileCatalog(config.landing_catalog_path)
    assert reloaded.entries == catalog.entries

    third = ingest(config, DAY3, catalog=reloaded)
    assert ids(third) == ["c1"]
    assert (third.files_read, third.files_skipped) == (1, 2)  # day1.csv and nothing.csv
    assert third.good_files == ["day3.csv"]
    assert list(third.unplaced_rows) == ["day3.csv"]

    # day1.csv now also holds a row of day 3: new size and mtime, so it is read again
    day1.write_text(f"{HEADER}\na1,2026-01-01T10:00:00,1,a,0\na3,2026-01-03T12:00:00,1,a,0\n",
                    encoding="utf-8")
    again = ingest(config, DAY3, catalog=reloaded)
    assert ids(again) == ["a3", "c1"]
    assert (again.files_read, again.files_skipped) == (2, 1)
    day1_entries = [key for key in reloaded.entries if key.startswith("day1.csv:")]
    assert len(day1_entries) == 1  # the stale version is forgotten
    assert reloaded.entries[day1_entries[0]] == ["2026-01-01", "2026-01-03"]


def test_catalog_rereads_a_file_whose_mtime_alone_changed(tmp_path):
    config = make_config(tmp_path)
    path = write_csv(config, "day1.csv", "a1,2026-01-01T10:00:00,1,a,0")
    catalog = FileCatalog(config.landing_catalog_path)
    ingest(config, DAY1, catalog=catalog)
    assert ingest(config, DAY3, catalog=catalog).files_skipped == 1
    # same size, new content and mtime: the row moves to day 3
    path.write_text(f"{HEADER}\na1,2026-01-03T10:00:00,1,a,0\n", encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    moved = ingest(config, DAY3, catalog=catalog)
    assert (moved.files_read, moved.files_skipped) == (1, 0)
    assert ids(moved) == ["a1"]


def test_bad_files_are_never_catalogued_so_a_fix_is_read(tmp_path):
    config = make_config(tmp_path)
    bad = config.landing_dir / "late.csv"
    bad.write_bytes(b"")
    catalog = FileCatalog(config.landing_catalog_path)
    assert "late.csv" in rejected_file_reasons(ingest(config, catalog=catalog))
    assert catalog.entries == {}
    bad.write_text(f"{HEADER}\nl1,2026-01-02T10:00:00,1,a,0\n", encoding="utf-8")
    fixed = ingest(config, catalog=catalog)
    assert ids(fixed) == ["l1"] and fixed.rejected_files == []


def test_corrupt_catalog_file_is_treated_as_empty(tmp_path):
    config = make_config(tmp_path)
    config.landing_catalog_path.parent.mkdir(parents=True)
    config.landing_catalog_path.write_text("{not json", encoding="utf-8")
    assert FileCatalog(config.landing_catalog_path).entries == {}


def test_landed_partitions_reports_new_files_pending_and_known_ones_landed(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "a.csv", "a1,2026-01-01T10:00:00,1,a,0", "a2,2026-01-03T10:00:00,1,a,0")
    write_parquet(config, "b.parquet", good_frame(["b1"], DAY2))
    (config.landing_dir / "bad.csv").write_bytes(b"")  # quarantined, not a partition
    write_csv(config, "old.csv", "o1,2025-06-01T10:00:00,1,a,0")  # before start only
    catalog = FileCatalog(config.landing_catalog_path)

    landed, pending = landed_partitions(config, catalog)
    assert landed == {"2026-01-01", "2026-01-02", "2026-01-03"}  # a.csv's range is filled in
    assert pending == landed

    ingest(config, DAY1, days=3, catalog=catalog)
    landed, pending = landed_partitions(config, catalog)
    assert landed == {"2026-01-01", "2026-01-02", "2026-01-03"}
    assert pending == set()

    write_csv(config, "new.csv", "n1,2026-01-05T10:00:00,1,a,0")
    landed, pending = landed_partitions(config, catalog)
    assert pending == {"2026-01-05"}
    assert landed == {"2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05"}

    # b.parquet changes: its old partition and its new one are pending
    write_parquet(config, "b.parquet", good_frame(["b1", "b2"], dt.date(2026, 1, 7)))
    _, pending = landed_partitions(config, catalog)
    assert pending == {"2026-01-02", "2026-01-05", "2026-01-07"}

    # a deleted file leaves its old partitions pending (they must be rebuilt without it)
    (config.landing_dir / "a.csv").unlink()
    landed, pending = landed_partitions(config, catalog)
    assert pending == {"2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05", "2026-01-07"}
    assert landed == {"2026-01-05", "2026-01-07"}


def test_chunks_follow_the_bytes_of_the_files_they_read(tmp_path):
    """Chunks of whole days grow while their files fit the budget; a file larger than the
    budget is read by one chunk, not once per partition; a window that fits is one chunk
    without reading any file."""
    config = make_config(tmp_path)
    days = [DAY1 + dt.timedelta(days=offset) for offset in range(4)]
    keys = [day.isoformat() for day in days]
    for day in days:
        write_csv(config, f"day_{day}.csv", *(f"{day}-{n},{day}T{n % 24:02d}:00:00,1,a,0"
                                              for n in range(50)))
    sizes = [(config.landing_dir / f"day_{day}.csv").stat().st_size for day in days]
    catalog = FileCatalog(tmp_path / "catalog.json")
    assert plan_chunks(config, catalog, keys, max_bytes=sum(sizes)) == [keys]
    assert catalog.entries == {}  # decided from the listing: nothing read
    assert plan_chunks(config, catalog, keys, max_bytes=max(sizes) * 2) == [keys[:2], keys[2:]]
    assert plan_chunks(config, catalog, keys, max_bytes=1) == [[key] for key in keys]
    assert plan_chunks(config, catalog, [], max_bytes=1) == []

    everything = "\n".join(f"big-{n},{days[n % 4]}T01:00:00,1,a,0" for n in range(400))
    for day in days:
        (config.landing_dir / f"day_{day}.csv").unlink()
    write_csv(config, "all_days.csv", everything)
    assert plan_chunks(config, catalog, keys, max_bytes=10) == [keys]


@pytest.mark.parametrize(("granularity", "first", "last", "expected"), [
    ("daily", "2026-01-30", "2026-01-30", ["2026-01-30"]),
    ("daily", "2026-01-30", "2026-02-02",
     ["2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"]),
    ("daily", "2026-1-5", "2026-1-5", ["2026-01-05"]),  # not canonical: written canonically
    ("hourly", "2026-01-01-23:00", "2026-01-02-01:00",
     ["2026-01-01-23:00", "2026-01-02-00:00", "2026-01-02-01:00"]),
    ("hourly", "2026-01-01-23:00", "2026-01-01-23:00", ["2026-01-01-23:00"]),
    ("weekly", "2026-01-05", "2026-01-19", ["2026-01-05", "2026-01-12", "2026-01-19"]),
    ("monthly", "2026-01-01", "2026-03-01", ["2026-01-01", "2026-02-01", "2026-03-01"]),
])
def test_keys_between_lists_every_key_of_the_range_once_computed_or_not(
        tmp_path, granularity, first, last, expected):
    config = config_from_dict({
        "dataset": {"source": "files", "landing_dir": "landing", "columns": COLUMNS,
                    "timestamp": "ts", "target": "label"},
        "partitions": {"start": "2026-01-01", "granularity": granularity},
    }, base_dir=tmp_path)
    assert keys_between(config, first, last) == expected
    assert keys_between(config, first, last) == expected  # the cached answer, not shared
    keys_between(config, first, last).append("x")
    assert keys_between(config, first, last) == expected
