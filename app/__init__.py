"""The Streamlit dashboard: `streamlit run app/main.py -- --workspace W`. Pages live in `pages/`."""
