"""Evolab's engine: everything but the dashboard's layout (it never imports streamlit)."""

__version__ = "0.6.0"  # shown in the dashboard's About box; raised with each round of issues that lands
