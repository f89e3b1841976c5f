"""Ctrl-C during a manifest query (a derived build reading its parent) ends like any interrupt."""

import os
import signal
import threading

import duckdb
import pytest

from vlmforge import cli


def _raising(exc):
    def app():
        raise exc
    return app


def test_a_query_interrupted_by_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    # What DuckDB raises when SIGINT arrives while it runs a query (not KeyboardInterrupt). On one thread the
    # count takes seconds on any machine, and stops at the signal (a much larger range ran on for 18 s).
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(RuntimeError) as e:
        duckdb.connect(config={"threads": 1}).execute("SELECT count(*) FROM range(30000000000) a").fetchall()
    monkeypatch.setattr(cli, "app", _raising(e.value))
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 130
    assert capsys.readouterr().err == "interrupted; run the same command again to resume\n"
    monkeypatch.setattr(cli, "app", _raising(RuntimeError("something else")))
    with pytest.raises(RuntimeError, match="something else"):  # other errors keep their traceback
        cli.main()
