"""CLI plugins: each module defines `register(app, build_app)` and is found automatically."""
