"""The Streamlit pages: build.py, train.py and export.py, one file per page, each started by
app.py's navigation. What they share lives in pages/parts/."""

from streamlit.runtime.pages_manager import PagesManager

# pages/ is NetBuilder's package, not Streamlit's older multipage folder: app.py's st.navigation
# names the pages. Streamlit picks its older mode once per process from this folder's name, and
# in it a first link to /train on a fresh server would run the page without app.py (no wide
# layout, no language, a menu of file names). Turned off at the first import of this package;
# the run that imported it, if app.py did not, is run again (state.through_the_app).
OPENED_WITHOUT_APP = bool(PagesManager.uses_pages_directory)
PagesManager.uses_pages_directory = False
