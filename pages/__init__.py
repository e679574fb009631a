"""The Streamlit pages (build, train, export) and the per-session state they share."""
