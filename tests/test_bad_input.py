"""Bad input: one line naming the problem, a non-zero exit, and nothing written."""
import pandas as pd
import pytest

from core.cli import main


def _init(tmp_path, labeled, heldout=None, unlabeled=None, *extra):
    args = ["init", "--workspace", str(tmp_path / "ws"), "--labeled", str(labeled)]
    if heldout:
        args += ["--heldout", str(heldout)]
    if unlabeled:
        args += ["--unlabeled", str(unlabeled)]
    return main(args + list(extra))


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


GOOD = "text,label\nmy card was charged twice,payment\nwhat is this fee,billing\nwhere is my parcel,shipping\n" \
       "card payment failed,payment\ninvoice amount is wrong,billing\nparcel is late,shipping\n"


CASES = [
    ("missing_column", "body,label\nhello,a\nbye,b\n", "missing column 'text'"),
    ("empty", "", "file is empty"),
    ("header_only", "text,label\n", "no rows"),
    ("blank_text", "text,label\nhello,a\n   ,b\n", "blank text on line 3"),
    ("no_label", "text,label\nhello,a\nbye,\n", "empty label on line 3"),
    ("non_utf8", "text,label\nhello,a\ncaf\xe9 au lait,b\n".encode("latin-1"), "not UTF-8"),
    ("huge_text", "text,label\nhello,a\n" + "x" * 1_000_000 + ",b\n", "above the limit"),
    ("malformed", 'text,label\n"unclosed quote,a\nbye,b\n', "malformed CSV"),
    ("one_label", "text,label\nhello,a\nbye,a\n", "at least two labels"),
]


@pytest.mark.parametrize("name,content,message", CASES, ids=[c[0] for c in CASES])
def test_bad_labeled_file(tmp_path, capsys, name, content, message):
    path = _write(tmp_path / f"{name}.csv", content)
    assert _init(tmp_path, path) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ws").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ws")]  # no half-built staging folder


def test_heldout_label_never_seen_in_training(tmp_path, capsys):
    labeled = _write(tmp_path / "l.csv", GOOD)
    held = _write(tmp_path / "h.csv", "text,label\nmy card was stolen,lost_card\n")
    assert _init(tmp_path, labeled, held) == 1
    assert "'lost_card'" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_misnamed_column_option(tmp_path, capsys):
    labeled = _write(tmp_path / "l.csv", GOOD)
    assert _init(tmp_path, labeled, None, None, "--label-col", "intent") == 1
    assert "missing column 'intent'" in capsys.readouterr().err


def test_missing_file_and_unknown_base_model(tmp_path, capsys):
    assert _init(tmp_path, tmp_path / "nope.csv") == 1
    assert "no such file" in capsys.readouterr().err
    labeled = _write(tmp_path / "l.csv", GOOD)
    assert _init(tmp_path, labeled, None, None, "--base-model", str(tmp_path / "no-model")) == 1
    assert "cannot be loaded" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_init_refuses_an_existing_workspace_and_leaves_it_alone(workspace, tiny_csvs, capsys):
    before = workspace.store.datasets()
    code = main(["init", "--workspace", str(workspace.root), "--labeled", str(tiny_csvs["labeled"])])
    assert code == 1 and "already exists" in capsys.readouterr().err
    pd.testing.assert_frame_equal(before, workspace.store.datasets())


def test_init_without_heldout_splits_stratified(tmp_path, tiny_csvs):
    assert main(["init", "--workspace", str(tmp_path / "ws"), "--labeled", str(tiny_csvs["labeled"])]) == 0
    from core.workspace import open_workspace

    store = open_workspace(tmp_path / "ws").store
    held, seed = store.examples("heldout"), store.examples("seed")
    assert set(held["label"]) == set(seed["label"])  # every class is represented on both sides
    assert not set(held["text"]) & set(seed["text"])


def test_predict_refuses_bad_input_and_writes_nothing(baseline_ws, tmp_path, capsys):
    bad = _write(tmp_path / "in.csv", "body\nhello\n")
    out = tmp_path / "out.csv"
    assert main(["predict", "--workspace", str(baseline_ws.root), "--input", str(bad), "--output", str(out)]) == 1
    assert "missing column 'text'" in capsys.readouterr().err
    assert not out.exists()
