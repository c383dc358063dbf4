"""The run's records (records.py): what a run writes is what compare_runs.py reads, folders written before
records.py still load, and compare_runs' tables on the test sweeps are byte for byte those of the commit before it."""

from pathlib import Path

from tests.table_sweeps import SWEEPS, TABLE_FILES, write_tables

EXPECTED = Path(__file__).resolve().parent / "data" / "compare_tables"


def test_compare_runs_tables_are_byte_identical_to_the_commit_before_records(tmp_path):
    """Each sweep of tests/table_sweeps.py (the tests' run writers, and real run folders of that commit) gives the
    tables stored from commit a15be9c, byte for byte."""
    written = write_tables(tmp_path)
    assert set(written) == set(SWEEPS)
    for name, folder in written.items():
        for file in TABLE_FILES:
            assert (folder / file).read_bytes() == (EXPECTED / name / file).read_bytes(), f"{name}/{file}"
