"""The demo starts from a clean slate every time, and never touches other state."""

import os

from attnops.flows.demo import use_demo_home


def test_demo_home_is_cleared_except_prefect_and_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")
    demo = tmp_path / "home" / "demo"
    for name in ("artifacts/x", "retrain/1/spec.yaml", "prefect/prefect.db", "serving-abc/f"):
        (demo / name).parent.mkdir(parents=True, exist_ok=True)
        (demo / name).write_text("old")
    for name in ("mlflow.db", "inference.db", "inference.db-wal"):
        (demo / name).write_text("old")
    (tmp_path / "home" / "mlflow.db").write_text("the user's own")

    assert use_demo_home() == demo
    assert os.environ["ATTNOPS_HOME"] == str(demo)
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the demo never writes to a team server
    assert sorted(p.name for p in demo.iterdir()) == ["prefect"]
    assert (tmp_path / "home" / "mlflow.db").read_text() == "the user's own"
