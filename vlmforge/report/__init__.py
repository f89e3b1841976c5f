"""Seeing a build: contact sheets (`show.py`), a self-contained HTML report (`html.py`), plots (`plots.py`)."""
