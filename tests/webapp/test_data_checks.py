"""The New run page shows the data checks (finetune/data/quality.py) on an upload: a warning per finding with its
examples in an expander, and a validation file's examples that are also in the training data."""

import csv
import io

from tests.webapp.apptest import assert_ok, open_app, warnings


def _csv(rows: list[tuple[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["review", "sentiment"])
    writer.writerows(rows)
    return out.getvalue().encode()


def test_an_upload_shows_each_check_as_a_warning_and_a_held_out_leak_too(no_runner):
    rows = [(f"review number {i} of a film i watched", "positive") for i in range(60)]
    rows += [("a dull and boring film", "negative")] * 2 + [("ok", "negative"), ("meh", "negative")]
    at = open_app()
    at.radio(key="family").set_value("bert").run()
    at.radio(key="data_source").set_value("Upload a file").run()
    at.file_uploader(key="upload").set_value(("reviews.csv", _csv(rows), "text/csv")).run()
    assert_ok(at)
    shown = warnings(at)
    assert any(w.startswith("train_file: 1 of 64 rows repeat an earlier row") for w in shown), shown
    assert any("class 'positive' holds 60 of 64 training rows (94%)" in w for w in shown), shown
    assert any(w.startswith("train_file: 0 of 64 texts in column 'review' are empty") for w in shown), shown
    assert "Short texts in train_file: the 1 listed" in [e.label for e in at.expander]

    at.radio(key="validation_file_source").set_value("Upload a file").run()
    held = _csv([("Review number 3 of a film I watched!", "positive"), ("a new one", "negative")])
    at.file_uploader(key="validation_file_upload").set_value(("held.csv", held, "text/csv")).run()
    assert_ok(at)
    leak = [w for w in warnings(at) if w.startswith("validation_file: 1 of 2 examples also appear in train_file")]
    assert leak, warnings(at)
    assert "Duplicates between train_file and validation_file: the 1 listed" in [e.label for e in at.expander]
