"""NetBuilder: build a neural network on a canvas, train it live, take the PyTorch code home.

`streamlit run app.py` (or `make run`). Three pages share one per-session workspace
(pages/parts/state.py); a page whose file is not there yet is left out of the menu.
"""

import logging
from pathlib import Path

import streamlit as st

import i18n
from i18n import N_, _
import pages
from pages.parts import state, widgets
from runtime.launcher import warm_up

PAGES_DIR = Path(__file__).resolve().parent / "pages"
PAGES = (
    ("build.py", N_("Build"), ":material/account_tree:"),
    ("train.py", N_("Train"), ":material/monitoring:"),
    ("export.py", N_("Export"), ":material/download:"),
)

STYLE = """
<style>
[data-testid="stMainBlockContainer"] { padding: 2.2rem 1.5rem 2rem; }
[data-testid="stSidebar"][aria-expanded="true"] { min-width: 236px; max-width: 236px; }
[data-testid="stSidebarUserContent"] { padding-left: 1rem; padding-right: 1rem; }
[data-testid="stToastContainer"] { top: auto; bottom: 1rem; }
</style>
"""

pages.OPENED_WITHOUT_APP = False  # app.py runs: the pages are opened through its navigation
st.set_page_config(page_title="NetBuilder", page_icon=":material/hub:", layout="wide")
st.html(STYLE)  # every page: a small top gap; toasts at the bottom, off the toolbars
state.workspace_id()
i18n.use_resolver(state.session_language)  # every page, fragment and callback of this session
i18n.set_language(state.language())  # this run's words: one session read, not one per sentence
st.html(widgets.global_style())  # Streamlit's own widget words in the reader's language
warm_up()  # the trainers' forkserver loads torch and the data now: Start is quick later


def _switch_language() -> None:
    state.set_language(st.session_state["nb_language_choice"])


with st.sidebar:
    st.segmented_control(
        "Language / 语言",
        options=list(i18n.LANGUAGES),
        format_func=i18n.LANGUAGES.get,
        default=i18n.language(),
        key="nb_language_choice",
        on_change=_switch_language,
        label_visibility="collapsed",
        required=True,
    )
navigation = st.navigation(
    [
        st.Page(PAGES_DIR / file, title=_(title), icon=icon, default=file == "build.py")
        for file, title, icon in PAGES
        if (PAGES_DIR / file).is_file()
    ]
)
try:
    navigation.run()
except Exception:  # the last line of defence: a readable message here, the traceback in the log
    logging.getLogger("netbuilder").exception("page %s failed", navigation.title)
    st.error(
        _(
            "This page hit an unexpected problem and stopped. Your graph is autosaved: reload"
            " the page to carry on. The details are in the server log."
        ),
        icon=":material/error:",
    )
