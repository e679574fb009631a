"""The Streamlit pages: build.py, train.py and export.py, one file per page, each started by
app.py's navigation. What they share lives in pages/parts/."""
