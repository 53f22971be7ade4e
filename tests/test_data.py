"""Tests for `pkpd_jax.data`: NONMEM table reading/validation/writing and the padded `Dataset`."""

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402

from pkpd_jax.data import (  # noqa: E402
    Dataset,
    DataSummary,
    DataValidationError,
    read_nonmem,
    validate,
    write_nonmem,
)
from pkpd_jax.dosing import Regimen, stack_regimens  # noqa: E402


HEADER = ["ID", "TIME", "AMT", "DV", "EVID", "MDV", "CMT", "DVID", "BW", "COMED"]
# Data rows 1..6 (row numbers in error messages are 1-based data rows, header excluded).
BASE = [
    ["1", "0", "100", ".", "1", "1", "1", ".", "70", "0"],  # row 1: dose
    ["1", "1", "0", "2.5", "0", "0", "0", "1", "70", "0"],  # row 2: conc
    ["1", "2", "0", "1.8", "0", "0", "0", "2", "70", "0"],  # row 3: PD
    ["2", "0", "200", ".", "1", "1", "1", ".", "82.5", "1"],  # row 4: dose
    ["2", "1", "0", "4.1", "0", "0", "0", "1", "82.5", "1"],  # row 5: conc
    ["2", "3", "0", "3.3", "0", "0", "0", "1", "82.5", "1"],  # row 6: conc
]


def _csv(rows=None, header=None, edits=None) -> str:
    """CSV text of BASE (or `rows`) with `edits` = {(row, column): text} applied."""
    header = list(HEADER if header is None else header)
    rows = [list(r) for r in (BASE if rows is None else rows)]
    for (row, col), text in (edits or {}).items():
        rows[row - 1][header.index(col)] = text
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def _without(col: str, rows=None) -> str:
    k = HEADER.index(col)
    rows = BASE if rows is None else rows
    return _csv([r[:k] + r[k + 1:] for r in rows], HEADER[:k] + HEADER[k + 1:])


def _with_column(name: str, values: list[str]) -> str:
    return _csv([r + [v] for r, v in zip(BASE, values)], HEADER + [name])


def _write(tmp_path, content, name="data.csv"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# ----------------------------------------------------------------------------- catalogue
# (case id, file content, regex the message must match, expected .row, expected .column)
CATALOGUE = [
    ("empty-file", b"", r"is empty \(0 bytes\)", None, None),
    ("whitespace-only", "\n  \n", r"is empty", None, None),
    ("header-only", ",".join(HEADER) + "\n", r"has a header \(ID, TIME.*\) but no data rows",
     None, None),
    ("binary-nul", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"not a text CSV file .*NUL byte",
     None, None),
    ("not-utf8", b"ID,TIME\n1,\xff\xfe\n", r"not a UTF-8 text CSV file", None, None),
    ("ragged-row", _csv().replace("1,2,0,1.8,0,0,0,2,70,0", "1,2,0,1.8,0,0,0,2,70,0,9"),
     r"row 3: has 11 fields but the header has 10 columns", 3, None),
    ("semicolon-separated", _csv().replace(",", ";"),
     r"column ID: required columns ID, TIME, AMT, DV, EVID are missing.*comma-separated",
     None, "ID"),
    ("duplicate-column-after-upper", _csv(header=HEADER[:-1] + ["time"]),
     r"column TIME: .*two columns named 'TIME' and 'time'", None, "TIME"),
    ("empty-column-name", _csv(header=HEADER[:-1] + [""]),
     r"column 10 in the header .* has an empty name", None, None),
    ("unsupported-addl", _with_column("ADDL", ["0"] * 6),
     r"column ADDL: additional doses \(ADDL\) are not supported", None, "ADDL"),
    ("text-in-time", _csv(edits={(2, "TIME"): "1h"}),
     r"row 2, column TIME: value '1h' is not a number", 2, "TIME"),
    ("text-in-covariate", _csv(edits={(5, "BW"): "heavy"}),
     r"row 5, column BW: value 'heavy' is not a number", 5, "BW"),
    ("id-missing", _csv(edits={(3, "ID"): "."}),
     r"row 3, column ID: value is missing; every row needs a subject identifier", 3, "ID"),
    ("time-missing", _csv(edits={(2, "TIME"): ""}),
     r"row 2, column TIME: value is missing", 2, "TIME"),
    ("time-nan", _csv(edits={(2, "TIME"): "nan"}),
     r"row 2, column TIME: value nan is not a finite number", 2, "TIME"),
    ("time-inf", _csv(edits={(5, "TIME"): "inf"}),
     r"row 5, column TIME: value inf is not a finite number", 5, "TIME"),
    ("time-negative", _csv(edits={(2, "TIME"): "-1.5"}),
     r"^row 2, column TIME: value -1.5 is negative; times must be >= 0 \(hours since first "
     r"dose\)$", 2, "TIME"),
    ("time-backwards", _csv(edits={(3, "TIME"): "0.5"}),
     r"row 3, column TIME: value 0.5 is earlier than the previous row of subject '1' "
     r"\(row 2, TIME 1\)", 3, "TIME"),
    ("subject-not-contiguous", _csv(rows=BASE + [["1", "5", "0", "1.0", "0", "0", "0", "1",
                                                  "70", "0"]]),
     r"row 7, column ID: value '1' appears again after rows of other subjects \(its earlier "
     r"rows end at row 3\)", 7, "ID"),
    ("evid-missing", _csv(edits={(2, "EVID"): "."}),
     r"row 2, column EVID: value is missing", 2, "EVID"),
    ("evid-2", _csv(edits={(2, "EVID"): "2"}),
     r"row 2, column EVID: value 2 is not a supported event type; use EVID 0 \(observation\) "
     r"or 1 \(dose\); EVID 2 .* 3 .* and 4 .* are not supported", 2, "EVID"),
    ("evid-3", _csv(edits={(3, "EVID"): "3"}), r"row 3, column EVID: value 3 is not a supported",
     3, "EVID"),
    ("evid-4", _csv(edits={(4, "EVID"): "4"}), r"row 4, column EVID: value 4 is not a supported",
     4, "EVID"),
    ("mdv-not-binary", _csv(edits={(2, "MDV"): "2"}),
     r"row 2, column MDV: value 2 is not 0 or 1", 2, "MDV"),
    ("mdv-0-on-dose", _csv(edits={(4, "MDV"): "0"}),
     r"row 4, column MDV: value 0 is on a dose row \(EVID 1\); dose rows must have MDV 1",
     4, "MDV"),
    ("dose-amt-missing", _csv(edits={(4, "AMT"): "."}),
     r"row 4, column AMT: value is missing on a dose row \(EVID 1\)", 4, "AMT"),
    ("dose-amt-zero", _csv(edits={(1, "AMT"): "0"}),
     r"row 1, column AMT: value 0 is not a positive dose amount", 1, "AMT"),
    ("dose-amt-negative", _csv(edits={(4, "AMT"): "-50"}),
     r"row 4, column AMT: value -50 is not a positive dose amount", 4, "AMT"),
    ("amt-on-observation", _csv(edits={(5, "AMT"): "100"}),
     r"row 5, column AMT: value 100 is on an observation row \(EVID 0\).*set EVID 1", 5, "AMT"),
    ("dv-missing", _csv(edits={(5, "DV"): "."}),
     r"row 5, column DV: value is missing on an observation row \(EVID 0, MDV 0\).*set MDV 1",
     5, "DV"),
    ("dv-nan", _csv(edits={(2, "DV"): "NaN"}),
     r"row 2, column DV: value nan is not a finite number on an observation row", 2, "DV"),
    ("dvid-unknown", _csv(edits={(6, "DVID"): "3"}),
     r"row 6, column DVID: value 3 is not a supported observation type; DVID must be 1 "
     r"\(drug concentration, mg/L\) or 2 \(PD response\)", 6, "DVID"),
    ("dvid-not-integer", _csv(edits={(2, "DVID"): "1.5"}),
     r"row 2, column DVID: value 1.5 is not a whole number", 2, "DVID"),
    ("dvid-missing-on-observation", _csv(edits={(3, "DVID"): "."}),
     r"row 3, column DVID: value is missing on an observation row", 3, "DVID"),
    ("cmt-negative", _csv(edits={(1, "CMT"): "-1"}),
     r"row 1, column CMT: value -1 is not a valid compartment number; CMT must be a whole "
     r"number >= 1", 1, "CMT"),
    ("cmt-not-integer", _csv(edits={(4, "CMT"): "1.5"}),
     r"row 4, column CMT: value 1.5 is not a valid compartment number", 4, "CMT"),
    ("rate-negative", _with_column("RATE", ["-10", ".", ".", "0", ".", "."]),
     r"row 1, column RATE: value -10 is negative", 1, "RATE"),
    ("rate-modelled", _with_column("RATE", ["0", ".", ".", "-2", ".", "."]),
     r"row 4, column RATE: value -2 is negative \(NONMEM's -1/-2 for modelled rates", 4, "RATE"),
    ("dur-negative", _with_column("DUR", ["0", "0", "0", "-1", "0", "0"]),
     r"row 4, column DUR: value -1 is negative", 4, "DUR"),
    ("rate-dur-inconsistent", _csv(
        [r + x for r, x in zip(BASE, [["50", "3"], [".", "."], [".", "."], ["0", "0"],
                                      [".", "."], [".", "."]])], HEADER + ["RATE", "DUR"]),
     r"row 1, column DUR: value 3 does not match AMT/RATE = 100/50 = 2 h", 1, "DUR"),
    ("blq-not-binary", _with_column("BLQ", ["0", "0", "2", "0", "0", "0"]),
     r"row 3, column BLQ: value 2 is not 0 or 1", 3, "BLQ"),
    ("lloq-negative", _with_column("LLOQ", [".", "-0.1", "0.1", ".", "0.1", "0.1"]),
     r"row 2, column LLOQ: value -0.1 is negative", 2, "LLOQ"),
    ("covariate-missing", _csv(edits={(5, "BW"): "."}),
     r"row 5, column BW: value is missing in covariate column BW", 5, "BW"),
    ("covariate-nan", _with_column("AGE", ["30", "30", "nan", "41", "41", "41"]),
     r"row 3, column AGE: value is missing in covariate column AGE", 3, "AGE"),
    ("covariate-inf", _with_column("AGE", ["30", "30", "30", "inf", "41", "41"]),
     r"row 4, column AGE: value inf is not a finite number", 4, "AGE"),
    ("comed-not-binary", _csv(edits={(6, "COMED"): "2"}),
     r"row 6, column COMED: value 2 is not 0 or 1; COMED is a co-medication flag", 6, "COMED"),
    ("bw-zero", _csv(edits={(1, "BW"): "0"}),
     r"row 1, column BW: value 0 is not positive; BW is a body weight \(kg\) and must be > 0",
     1, "BW"),
    ("bw-negative", _csv(edits={(4, "BW"): "-82.5"}),
     r"row 4, column BW: value -82.5 is not positive", 4, "BW"),
    ("duplicate-rows", _csv(rows=BASE[:3] + [BASE[2]] + BASE[3:]),
     r"row 4: is a duplicate of row 3", 4, None),
    ("subject-without-observations", _csv(rows=BASE + [["3", "0", "50", ".", "1", "1", "1", ".",
                                                        "60", "0"]]),
     r"row 7, column ID: value '3' is a subject with no observation rows \(EVID 0\) \(row 7\)",
     7, "ID"),
]


@pytest.mark.parametrize(
    "content, match, row, column", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE]
)
def test_catalogue_csv(tmp_path, content, match, row, column):
    path = _write(tmp_path, content)
    with pytest.raises(DataValidationError, match=match) as err:
        read_nonmem(path)
    assert err.value.row == row
    assert err.value.column == column
    assert isinstance(err.value, ValueError)


def test_catalogue_is_large_and_distinct():
    assert len(CATALOGUE) >= 22
    assert len({c[0] for c in CATALOGUE}) == len(CATALOGUE)
    assert len({c[2] for c in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("col", ["ID", "TIME", "AMT", "DV", "EVID"])
def test_missing_required_column_is_named(tmp_path, col):
    with pytest.raises(DataValidationError, match=rf"required column {col} is missing") as err:
        read_nonmem(_write(tmp_path, _without(col)))
    assert err.value.column == col
    assert err.value.row is None


def test_error_value_attribute(tmp_path):
    with pytest.raises(DataValidationError) as err:
        read_nonmem(_write(tmp_path, _csv(edits={(2, "TIME"): "-1.5"})))
    assert err.value.value == -1.5
    with pytest.raises(DataValidationError) as err:
        read_nonmem(_write(tmp_path, _csv(edits={(2, "TIME"): "abc"})))
    assert err.value.value == "abc"
    with pytest.raises(DataValidationError) as err:
        read_nonmem(_write(tmp_path, _csv(edits={(5, "DV"): ""})))
    assert err.value.value is None


def test_frame_input_errors_use_frame_rows():
    df = pl.read_csv(_csv().encode(), infer_schema=False).with_columns(
        pl.col("TIME").cast(pl.Float64))
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(-2.0)
                         .otherwise(pl.col("TIME")).alias("TIME"))
    with pytest.raises(DataValidationError, match=r"row 5, column TIME: value -2 is negative"):
        read_nonmem(df)
    with pytest.raises(DataValidationError, match=r"two columns named 'ID' and 'id'"):
        read_nonmem(pl.DataFrame({"ID": [1], "id": [2]}))
    with pytest.raises(DataValidationError, match=r"column AMT: has type List"):
        read_nonmem(pl.DataFrame({"ID": [1], "TIME": [0.0], "AMT": [[1.0]], "DV": [0.0],
                                  "EVID": [1]}))


def test_missing_file_and_bad_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_nonmem(tmp_path / "nope.csv")
    with pytest.raises(TypeError, match="expects a path or a polars.DataFrame"):
        read_nonmem(42)


# ----------------------------------------------------------------------------- reading
def test_read_clean_frame(tmp_path):
    df = read_nonmem(_write(tmp_path, _csv()))
    assert df.columns == HEADER + ["_SUBJ", "_ROW"]
    assert df["ID"].dtype == pl.String
    assert all(df[c].dtype == pl.Float64 for c in HEADER[1:])
    assert df["_SUBJ"].to_list() == [0, 0, 0, 1, 1, 1]
    assert df["_ROW"].to_list() == [1, 2, 3, 4, 5, 6]
    assert df["DV"].to_list() == [None, 2.5, 1.8, None, 4.1, 3.3]
    assert df["DVID"].to_list() == [None, 1.0, 2.0, None, 1.0, 1.0]


def test_read_defaults_case_and_nonmem_quirks(tmp_path):
    text = (
        "#id,Time,amt,dv,evid,Sex\n"  # commented header, mixed case
        "A7,0,10,.,1,1\n"
        "\n"  # blank line: skipped but counted in row numbers
        "A7, 0.5 ,0,0.3,0,1\n"
        "b2,0,20,0,1,0\n"
        "b2,1,.,0.9,0,0\n"
    )
    df = read_nonmem(_write(tmp_path, text))
    assert df.columns == [*HEADER[:8], "SEX", "_SUBJ", "_ROW"]
    assert df["ID"].to_list() == ["A7", "A7", "b2", "b2"]
    assert df["_ROW"].to_list() == [1, 3, 4, 5]
    assert df["MDV"].to_list() == [1.0, 0.0, 1.0, 0.0]
    assert df["CMT"].to_list() == [0.0] * 4
    assert df["DVID"].to_list() == [None, 1.0, None, 1.0]
    assert df["AMT"].to_list() == [10.0, 0.0, 20.0, 0.0]
    assert df["DV"].to_list() == [None, 0.3, None, 0.9]  # DV ignored on dose rows
    assert df["TIME"].to_list() == [0.0, 0.5, 0.0, 1.0]
    # trailing delimiter on every line is tolerated
    df2 = read_nonmem(_write(tmp_path, _csv().replace("\n", ",\n"), "trail.csv"))
    assert df2.columns == HEADER + ["_SUBJ", "_ROW"]


def test_ignored_observation_is_kept_without_error(tmp_path):
    df = read_nonmem(_write(tmp_path, _csv(edits={(5, "MDV"): "1", (5, "DV"): "."})))
    assert df["MDV"].to_list()[4] == 1.0
    assert df["DV"].to_list()[4] is None
    assert validate(df).n_ignored == 1
    assert validate(df).n_obs_by_dvid == {1: 2, 2: 1}


def test_rate_becomes_duration(tmp_path):
    rows = [r + x for r, x in zip(BASE, [["50", "2"], [".", "."], [".", "."], ["0", "4"],
                                         [".", "."], [".", "."]])]
    df = read_nonmem(_write(tmp_path, _csv(rows, HEADER + ["RATE", "DUR"])))
    assert "RATE" not in df.columns
    assert df["DUR"].to_list() == [2.0, 0.0, 0.0, 4.0, 0.0, 0.0]
    df = read_nonmem(_write(tmp_path, _with_column("RATE", ["0", ".", ".", "40", ".", "."])))
    assert df["DUR"].to_list() == [0.0, 0.0, 0.0, 5.0, 0.0, 0.0]


def test_blq_flag_from_column_or_lloq(tmp_path):
    rows = [r + x for r, x in zip(BASE, [[".", "."], ["0", "3"], ["1", "."], [".", "."],
                                         ["0", "0.1"], ["0", "."]])]
    df = read_nonmem(_write(tmp_path, _csv(rows, HEADER + ["BLQ", "LLOQ"])))
    # row 2: DV 2.5 < LLOQ 3 -> flagged; row 3: BLQ given; kept, never dropped
    assert df["BLQ"].to_list() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert df["LLOQ"].to_list() == [None, 3.0, None, None, 0.1, None]
    assert df.height == 6
    s = validate(df)
    assert s.n_blq == 2 and s.n_obs == 4


def test_summary_string(tmp_path):
    path = _write(tmp_path, _csv())
    s = validate(path)
    assert isinstance(s, DataSummary)
    assert (s.n_subjects, s.n_doses, s.n_obs_by_dvid, s.n_blq) == (2, 2, {1: 3, 2: 1}, 0)
    assert s.covariates == ["BW", "COMED"]
    assert s.time_range == (0.0, 3.0)
    assert str(s) == ("2 subjects, 2 doses, 4 observations (DVID 1: 3, DVID 2: 1), 0 BLQ, "
                      "covariates: BW, COMED, time 0-3 h")


# ----------------------------------------------------------------------------- writing
def test_write_round_trip(tmp_path):
    rows = [r + x for r, x in zip(BASE, [["2", "."], [".", "0.5"], [".", "."], ["0", "."],
                                         [".", "0.5"], [".", "."]])]
    original = read_nonmem(_write(tmp_path, _csv(rows, ["id", *HEADER[1:], "rate", "lloq"])))
    out = write_nonmem(original, tmp_path / "out.csv")
    text = out.read_text().splitlines()
    assert text[0] == "ID,TIME,AMT,DV,EVID,MDV,CMT,DVID,DUR,BLQ,LLOQ,BW,COMED"
    assert text[1] == "1,0,100,.,1,1,1,.,50,0,.,70.0,0"
    again = read_nonmem(out)
    assert again.equals(original)
    # and once more: a fixed point
    assert read_nonmem(write_nonmem(again, tmp_path / "out2.csv")).equals(original)


def test_write_rejects_invalid_frame(tmp_path):
    df = pl.DataFrame({"ID": [1], "TIME": [-1.0], "AMT": [1.0], "DV": [None], "EVID": [1]})
    with pytest.raises(DataValidationError, match="row 1, column TIME"):
        write_nonmem(df, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


# ----------------------------------------------------------------------------- Dataset
TABLE = """ID,TIME,AMT,DV,EVID,MDV,CMT,DVID,DUR,BLQ,LLOQ,BW,COMED
101,0,0,5.0,0,0,0,2,0,0,.,70,0
101,0,100,.,1,1,1,.,0,0,.,70,0
101,1,0,2.5,0,0,0,1,0,0,0.1,70,0
101,12,50,.,1,1,2,.,2,0,.,70,0
101,24,0,0.05,0,0,0,1,0,1,0.1,72,0
202,0,200,.,1,1,0,.,0,0,.,90,1
202,2,0,4.0,0,1,0,1,0,0,.,90,1
"""


@pytest.fixture
def table_path(tmp_path):
    return _write(tmp_path, TABLE, "table.csv")


def test_dataset_arrays(table_path):
    ds = Dataset.load(table_path)
    assert ds.ids == ("101", "202")
    assert ds.n_subjects == 2
    assert ds.covariate_names == ("BW", "COMED")
    r = ds.regimen
    assert r.time.shape == (2, 2)
    np.testing.assert_array_equal(r.time, [[0.0, 12.0], [0.0, 0.0]])
    np.testing.assert_array_equal(r.amount, [[100.0, 50.0], [200.0, 0.0]])
    np.testing.assert_array_equal(r.duration, [[0.0, 2.0], [0.0, 0.0]])
    np.testing.assert_array_equal(r.cmt, [[0, 1], [-1, -1]])
    np.testing.assert_array_equal(ds.obs_time, [[0.0, 1.0, 24.0], [2.0, 2.0, 2.0]])
    np.testing.assert_array_equal(ds.obs_dv, [[5.0, 2.5, 0.05], [4.0, 0.0, 0.0]])
    np.testing.assert_array_equal(ds.obs_dvid, [[2, 1, 1], [1, 1, 1]])
    np.testing.assert_array_equal(ds.obs_mask, [[True, True, True], [False, False, False]])
    np.testing.assert_array_equal(ds.obs_present, [[True, True, True], [True, False, False]])
    np.testing.assert_array_equal(ds.obs_blq, [[False, False, True], [False, False, False]])
    np.testing.assert_array_equal(ds.obs_lloq, [[np.nan, 0.1, 0.1], [np.nan, 0.0, 0.0]])
    # baseline covariates (first row), even though BW changes later for subject 101
    np.testing.assert_array_equal(ds.covariates, [[70.0, 0.0], [90.0, 1.0]])
    np.testing.assert_array_equal(ds.covariate("bw"), [70.0, 90.0])
    assert ds.obs_time.dtype == jnp.float64
    assert ds.obs_dvid.dtype.kind == "i"
    assert ds.obs_mask.dtype == jnp.bool_


def test_dataset_regimen_matches_make_and_stack(table_path):
    ds = Dataset.load(table_path)
    expected = stack_regimens([
        Regimen.make([0.0, 12.0], [100.0, 50.0], [0.0, 2.0], [0, 1], size=2),
        Regimen.make([0.0], [200.0], [0.0], [-1], size=2),
    ])
    for field in ("time", "amount", "duration", "cmt"):
        np.testing.assert_array_equal(getattr(ds.regimen, field), getattr(expected, field))
        assert getattr(ds.regimen, field).dtype == getattr(expected, field).dtype


def test_dataset_covariate_keyerror(table_path):
    ds = Dataset.load(table_path)
    with pytest.raises(KeyError, match="no covariate 'AGE'.*available: BW, COMED"):
        ds.covariate("AGE")


def test_dataset_subset(table_path):
    ds = Dataset.load(table_path)
    sub = ds.subset([1])
    assert sub.ids == ("202",)
    np.testing.assert_array_equal(sub.regimen.amount, [[200.0, 0.0]])
    np.testing.assert_array_equal(sub.covariate("COMED"), [1.0])
    assert sub.obs_time.shape == (1, 3)
    assert ds.subset(np.array([False, True])).ids == ("202",)
    with pytest.raises(IndexError, match="out of range"):
        ds.subset([2])


def test_dataset_summary_matches_validate(table_path):
    ds = Dataset.load(table_path)
    assert ds.summary() == validate(table_path)
    assert str(ds.summary()) == (
        "2 subjects, 3 doses, 3 observations (DVID 1: 2, DVID 2: 1), 1 BLQ, 1 ignored (MDV 1), "
        "covariates: BW, COMED, time 0-24 h"
    )


def test_dataset_frame_round_trip(table_path):
    # time-constant covariates: table -> Dataset -> table is exact
    df = read_nonmem(table_path).with_columns(pl.col("BW").first().over("ID"))
    ds = Dataset.from_frame(df)
    back = ds.to_frame()
    assert back.drop("_ROW").equals(df.drop("_ROW"))
    ds2 = Dataset.from_frame(back)
    for a, b in zip(jax.tree.leaves(ds), jax.tree.leaves(ds2)):
        np.testing.assert_array_equal(a, b)
    assert ds2.ids == ds.ids


def test_dataset_write_and_reload(tmp_path, table_path):
    ds = Dataset.load(table_path)
    path = write_nonmem(ds, tmp_path / "ds.csv")
    ds2 = Dataset.load(path)
    for a, b in zip(jax.tree.leaves(ds), jax.tree.leaves(ds2)):
        np.testing.assert_array_equal(a, b)


def test_dataset_works_under_jit_and_vmap(table_path):
    ds = Dataset.load(table_path)

    @eqx.filter_jit
    def total(d):
        per_subject = jax.vmap(lambda dv, m: jnp.sum(jnp.where(m, dv, 0.0)))(d.obs_dv,
                                                                               d.obs_mask)
        return per_subject, jnp.sum(d.regimen.amount, axis=-1)

    obs, amt = total(ds)
    np.testing.assert_allclose(obs, [7.55, 0.0])
    np.testing.assert_allclose(amt, [150.0, 200.0])


def test_dataset_without_covariates(tmp_path):
    ds = Dataset.load(_write(tmp_path, _csv([r[:8] for r in BASE], HEADER[:8])))
    assert ds.covariate_names == ()
    assert ds.covariates.shape == (2, 0)
    with pytest.raises(KeyError, match="available: none"):
        ds.covariate("BW")


def test_placebo_subject_without_doses_is_accepted(tmp_path):
    """Placebo subjects (no dose rows) are valid: they inform the biomarker baseline."""
    path = _write(tmp_path, _csv(rows=BASE[:3] + BASE[4:]))
    ds = Dataset.load(path)
    i = ds.ids.index("2")
    assert float(np.asarray(ds.regimen.amount[i]).sum()) == 0.0
    assert validate(path).n_subjects == 2
