"""The eval journal: what was recorded survives a kill, including one in the middle of writing a line."""

from phiexport.evaluate.journal import Journal, item_key


def test_records_are_read_back_by_key(tmp_path):
    journal = Journal(tmp_path / "raw" / "row.jsonl")
    journal.record("a", tokens=[1, 2], seconds=0.5)
    reopened = Journal(tmp_path / "raw" / "row.jsonl")
    assert "a" in reopened and reopened["a"] == {"key": "a", "tokens": [1, 2], "seconds": 0.5}


def test_a_line_torn_by_a_kill_is_dropped_and_the_next_record_is_clean(tmp_path):
    path = tmp_path / "row.jsonl"
    Journal(path).record("a", tokens=[1])
    with path.open("a") as handle:
        handle.write('{"key":"b","tok')  # the process died here
    journal = Journal(path)
    assert list(journal.records) == ["a"]
    journal.record("c", tokens=[3])
    assert list(Journal(path).records) == ["a", "c"]


def test_item_keys_name_the_exact_tokens_and_budget():
    assert item_key("answer", [1, 2, 3], 256) == item_key("answer", (1, 2, 3), 256)
    assert item_key("answer", [1, 2, 3], 256) != item_key("answer", [1, 2, 3], 128)
    assert item_key("answer", [1, 2, 3], 256) != item_key("answer", [1, 2, 4], 256)
    assert item_key("answer", [1], 1).startswith("answer-")
