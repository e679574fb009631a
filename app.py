"""NetBuilder: build a neural network on a canvas, train it live, take the PyTorch code home.

`streamlit run app.py` (or `make run`). Three pages share one per-session workspace
(pages/state.py); a page whose file is not there yet is left out of the menu.
"""

import logging
from pathlib import Path

import streamlit as st

from pages import state

PAGES_DIR = Path(__file__).resolve().parent / "pages"
PAGES = (
    ("build.py", "Build", ":material/account_tree:"),
    ("train.py", "Train", ":material/monitoring:"),
    ("export.py", "Export", ":material/download:"),
)

STYLE = """
<style>
[data-testid="stMainBlockContainer"] { padding-top: 2.2rem; }
[data-testid="stToastContainer"] { top: auto; bottom: 1rem; }
</style>
"""

st.set_page_config(page_title="NetBuilder", page_icon=":material/hub:", layout="wide")
st.html(STYLE)  # every page: a small top gap; toasts at the bottom, off the toolbars
state.workspace_id()
navigation = st.navigation(
    [
        st.Page(PAGES_DIR / file, title=title, icon=icon, default=file == "build.py")
        for file, title, icon in PAGES
        if (PAGES_DIR / file).is_file()
    ]
)
try:
    navigation.run()
except Exception:  # the last line of defence: a readable message here, the traceback in the log
    logging.getLogger("netbuilder").exception("page %s failed", navigation.title)
    st.error(
        "This page hit an unexpected problem and stopped. Your graph is autosaved: reload the"
        " page to carry on. The details are in the server log.",
        icon=":material/error:",
    )
